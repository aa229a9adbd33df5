"""Fixtures every test module may ask for by name."""

from daemon_harness import daemons  # noqa: F401 - a real daemon per call, cleaned up after the test
