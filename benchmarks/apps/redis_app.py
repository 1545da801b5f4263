"""Worker app: `dramatiq benchmarks.apps.redis_app` consumes the benchmark queue on redis."""

import dramatiq

from benchmarks.apps.actors import declare_actors
from benchmarks.apps.factories import make_broker

broker = make_broker("redis")
dramatiq.set_broker(broker)
actors = declare_actors(broker)
