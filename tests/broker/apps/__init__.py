"""Modules the ``dramatiq`` CLI imports in worker subprocesses started by the broker tests."""
