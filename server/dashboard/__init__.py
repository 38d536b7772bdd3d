"""The operators' dashboards: server-rendered pages mounted under ``/dashboard`` (issue 7)."""
