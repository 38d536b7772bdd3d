"""Shared test support: a real registry on a free port (``live_server``)."""
