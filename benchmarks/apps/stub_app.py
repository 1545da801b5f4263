"""Worker app for the StubBroker ceiling.

A StubBroker lives inside one process, so the driver cannot fill it from outside. Each
worker process therefore enqueues its share of the backlog itself at import time (before
Dramatiq starts its worker threads), then waits at a barrier so that no process starts
draining while another is still enqueueing.
"""

import os

import dramatiq

from benchmarks import channel
from benchmarks.apps.actors import declare_actors
from benchmarks.apps.factories import make_broker

broker = make_broker("stub")
dramatiq.set_broker(broker)
actors = declare_actors(broker)

_preload = int(os.environ.get("ZBENCH_STUB_PRELOAD", "0"))
if _preload:
    for seq in range(_preload):
        actors.noop.send(seq)
    channel.barrier(channel.connect(), int(os.environ.get("ZBENCH_PROCESSES", "1")))
