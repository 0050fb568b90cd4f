"""Benchmarks of the real bot against the Slack and Microsoft test doubles (`python -m bench.run`)."""
