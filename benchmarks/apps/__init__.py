"""Modules the ``dramatiq`` CLI imports: one per broker, all declaring the same actors."""
