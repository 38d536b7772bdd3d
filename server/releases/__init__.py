"""Releases (issue 20): a named set of versions, one per line, that a car must run together."""
