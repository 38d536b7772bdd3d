"""``ota serve``: migrate the database to head, then run the registry under uvicorn."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="run the model registry (migrates the database first)",
                              description="Run `alembic upgrade head` once, then the registry under uvicorn. "
                                          "Settings come from OTA_* environment variables (and DATABASE_URL); "
                                          "the flags below override them.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--data-dir", help="SQLite file, blobs, signing key, dev tokens (OTA_DATA_DIR)")
    p.add_argument("--database-url", help="e.g. postgresql+psycopg://user@host/db (DATABASE_URL)")
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    p.add_argument("--codecs", help="default codecs for publish, e.g. lossless,deep (OTA_DEFAULT_CODECS)")
    p.add_argument("--no-migrate", action="store_true", help="do not run migrations (the server refuses to start "
                                                              "if the schema is not at head)")
    p.add_argument("--limit-concurrency", type=int, help="connections plus requests per worker before new ones get "
                   "503 (OTA_LIMIT_CONCURRENCY, default 1000)")
    p.add_argument("--backlog", type=int, help="connections the kernel queues before accept (OTA_BACKLOG, default 2048)")
    p.add_argument("--keep-alive-timeout", type=int, help="seconds an idle kept-alive connection stays open "
                   "(OTA_KEEP_ALIVE_TIMEOUT_S, default 5)")
    p.add_argument("--head-timeout", type=float, help="seconds a client has to send a request's line and headers "
                   "(OTA_HEAD_TIMEOUT_S, default 10)")
    p.add_argument("--body-timeout", type=float, help="seconds a client has to send a request's body once its "
                   "headers arrived (OTA_BODY_TIMEOUT_S, default 120)")
    p.add_argument("--metrics-port", type=int, help="also serve /metrics on this port, without a token, for "
                                                     "Prometheus (OTA_METRICS_PORT); the API port's /metrics then "
                                                     "needs the admin token.  Needs --workers 1")
    p.add_argument("--metrics-host", help="address of the --metrics-port listener (OTA_METRICS_HOST, default "
                                          "127.0.0.1)")
    p.add_argument("--tls-cert", type=Path, metavar="FILE", help="serve https with this PEM certificate (chain); "
                                                                  "needs --tls-key")
    p.add_argument("--tls-key", type=Path, metavar="FILE", help="the certificate's PEM private key (keep it 0600)")
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=serve)


def serve(args: argparse.Namespace) -> int:
    if args.metrics_port and args.workers != 1:
        print("ota serve: --metrics-port needs --workers 1 (each worker process has its own counters); "
              "with several workers scrape the API port's /metrics with the admin token", file=sys.stderr)
        return 2
    if (args.tls_cert is None) != (args.tls_key is None):
        print("ota serve: --tls-cert and --tls-key go together (the certificate and its private key)", file=sys.stderr)
        return 2
    for what, path in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key)):
        if path is not None and not path.is_file():
            print(f"ota serve: {what} {path} is not a readable file", file=sys.stderr)
            return 2
    # The CLI is the one place that turns flags into the environment the Settings read,
    # so that every uvicorn worker process builds the same Settings.
    if args.data_dir:
        os.environ["OTA_DATA_DIR"] = args.data_dir
    if args.database_url:
        os.environ["OTA_DATABASE_URL"] = args.database_url
    if args.codecs:
        os.environ["OTA_DEFAULT_CODECS"] = args.codecs
    if args.metrics_port:
        os.environ["OTA_METRICS_PORT"] = str(args.metrics_port)
    if args.metrics_host:
        os.environ["OTA_METRICS_HOST"] = args.metrics_host
    for flag, var in (("limit_concurrency", "OTA_LIMIT_CONCURRENCY"), ("backlog", "OTA_BACKLOG"),
                      ("keep_alive_timeout", "OTA_KEEP_ALIVE_TIMEOUT_S"), ("head_timeout", "OTA_HEAD_TIMEOUT_S"),
                      ("body_timeout", "OTA_BODY_TIMEOUT_S")):
        if getattr(args, flag) is not None:
            os.environ[var] = str(getattr(args, flag))
    import uvicorn

    from server.config import InsecureConfiguration, Settings, resolve_secrets
    from server.db import upgrade_to_head
    from server.httpproto import http_protocol
    from server.keys import load_keyring

    settings = Settings()
    try:
        settings = resolve_secrets(settings)
        load_keyring(settings)  # a development server makes its keys here, once, before the workers start
    except InsecureConfiguration as e:
        print(f"ota serve: {e}", file=sys.stderr)
        return 2
    if not args.no_migrate:
        upgrade_to_head(settings.sqlalchemy_url)
    scheme = "https" if args.tls_cert else "http"
    print(f"registry on {scheme}://{args.host}:{args.port}  data dir {settings.data_dir.resolve()}", file=sys.stderr)
    if settings.environment == "development":
        print(f"admin token in {settings.data_dir / 'admin-token'}, enrollment token in "
              f"{settings.data_dir / 'enrollment-token'}; cars trust {settings.data_dir / 'root.pub'} "
              "(ota agent --root-key)", file=sys.stderr)
    # Connection limits (issue 15): a flood of connections gets 503s, not the worker's memory; slow heads and
    # bodies are cut off by the protocol (server/httpproto.py); request bodies by server/limits.py.
    uvicorn.run("server.app:create_app", factory=True, host=args.host, port=args.port, workers=args.workers,
                log_level=args.log_level, http=http_protocol(settings),  # type: ignore[arg-type]
                limit_concurrency=settings.limit_concurrency, backlog=settings.backlog,
                timeout_keep_alive=settings.keep_alive_timeout_s,
                ssl_certfile=str(args.tls_cert) if args.tls_cert else None,
                ssl_keyfile=str(args.tls_key) if args.tls_key else None)
    return 0
