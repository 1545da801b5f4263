"""Worker app: `dramatiq benchmarks.apps.postgres_app` consumes the benchmark queue on postgres."""

import dramatiq

from benchmarks.apps.actors import declare_actors
from benchmarks.apps.factories import make_broker

broker = make_broker("postgres")
dramatiq.set_broker(broker)
actors = declare_actors(broker)
