"""The OTA model registry: a FastAPI app split by feature.

Shared infrastructure (``config``, ``db``, ``orm``, ``blobs``, ``errors``,
``security``, ``deps``) imports no feature code.  Features (``registry``,
``rollouts``, ``devices``, ``accounting``, ``artifacts``, ``audit``,
``dashboard``; import-linter keeps them layered, see pyproject.toml) each have ``routes.py`` (HTTP only),
``service.py`` (decisions), ``store.py`` (SQL) and ``schemas.py`` (Pydantic).
``app.create_app(settings)`` wires them together; nothing connects to a
database at import time.
"""
