"""The HTTP API of zart_dramatiq: an ASGI application to mount or to serve alone.

``create_app(broker)`` returns a FastAPI application: executions (start, list,
show, wait for a result, send an event, cancel, retry), health and readiness
probes and Prometheus metrics, each route behind an API key with the scope it
needs (``zart-dramatiq keys create``). ``zart-dramatiq serve`` runs it with uvicorn.
"""

from .app import create_app

__all__ = ["create_app"]
