"""Artifact downloads: a feature over registry (the bytes), devices (who may fetch) and accounting (counting)."""
