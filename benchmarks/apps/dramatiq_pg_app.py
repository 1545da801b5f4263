"""Worker app: `dramatiq benchmarks.apps.dramatiq_pg_app` consumes the benchmark queue."""

import dramatiq

from benchmarks.apps.actors import declare_actors
from benchmarks.apps.factories import make_broker

broker = make_broker("dramatiq-pg")
dramatiq.set_broker(broker)
actors = declare_actors(broker)
