"""Experiment trackers' sessions (server probe, bounded task start), apart from the Ignite
handlers in ``handlers/`` that log to them."""
