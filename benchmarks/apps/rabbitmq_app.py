"""Worker app: `dramatiq benchmarks.apps.rabbitmq_app` consumes the benchmark queue on rabbitmq."""

import dramatiq

from benchmarks.apps.actors import declare_actors
from benchmarks.apps.factories import make_broker

broker = make_broker("rabbitmq")
dramatiq.set_broker(broker)
actors = declare_actors(broker)
