"""Runnable examples; each module is a Dramatiq app: ``dramatiq examples.orders``.

* ``orders``: order fulfilment with steps, a durable sleep and a shipment event.
* ``onboarding``: step retries with backoff, and a non-retryable error turned into compensation.
* ``approval``: a human approval sent from the command line with ``zart-dramatiq send-event``.
* ``reports``: a monthly report fanned out with ``zart.parallel`` and ``zart.map``, a child
  execution and a transactional step.
* ``demo``: ``python -m examples.demo`` runs the order workflow end to end on a real worker.

All of them share the broker of ``examples.app``.
"""
