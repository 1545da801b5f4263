"""Benchmarks for broker_pg against Dramatiq's other brokers (not part of the package)."""
