"""``ota``: entry point that gathers the command groups.

Every module in ``COMMAND_MODULES`` exposes ``register(subparsers)``, adding
its commands with ``set_defaults(func=handler)``; a handler takes the parsed
``argparse.Namespace`` and returns an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = (
    "cli.server_cmds",  # serve
    "cli.keys_cmds",  # keys init|rotate|show
    "cli.admin_cmds",  # publish, rollout, devices (HTTP clients of the registry)
    "cli.webhook_cmds",  # webhook add|list|rm|deliveries
    "cli.audit_cmd",  # audit
    "cli.agent_cmds",  # agent, classify, simulate
    "cli.model_cmds",  # model pack|diff|patch|unpack|inspect
    "cli.demo_cmd",  # demo
    "cli.simulate_cmd",  # simulate
)

# Third parties that come with an extra, not with the car's base install (`pip install ota-models`): which extra.
EXTRA_OF = {name: "server" for name in ("fastapi", "starlette", "uvicorn", "httptools", "sqlalchemy", "alembic",
                                        "psycopg", "prometheus_client", "jinja2", "pydantic", "pydantic_settings",
                                        "multipart")} | {"rich": "simulator"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ota",
        description="Over-the-air model updates: publish, roll out, and run SqueezeNet versions on a fleet.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue  # command group not built yet
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except ModuleNotFoundError as e:
        extra = EXTRA_OF.get((e.name or "").split(".")[0])
        if extra is None:
            raise
        print(f"ota {args.command}: needs the [{extra}] extra, which this install lacks ({e.name} is missing): "
              f"pip install 'ota-models[{extra}]'", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
