"""Where the ``ota`` command reads its environment and its secrets.

Library code (``server``, ``client``, ``models``) never reads ``os.environ``;
the CLI does, here and in ``server_cmds`` (which hands flags to the server's
``Settings`` through ``OTA_*`` variables).  ``CLI_ENV_VARS`` lists the
variables the CLI itself reads, so a test can check that every ``OTA_*``
name in the Dockerfile and the READMEs is one that something reads.

Tokens: a flag's value shows in the process list (``ps``, ``/proc/PID/cmdline``)
to every user of the machine, so each token flag has a ``--...-file`` twin and
an environment variable, and the README shows those forms.
"""

from __future__ import annotations

import os
from pathlib import Path

SERVER = "OTA_SERVER"
ADMIN_TOKEN = "OTA_ADMIN_TOKEN"
ENROLL_TOKEN = "OTA_ENROLL_TOKEN"
DATA_DIR = "OTA_DATA_DIR"
CA_CERT = "OTA_CA_CERT"

CLI_ENV_VARS: tuple[str, ...] = (SERVER, ADMIN_TOKEN, ENROLL_TOKEN, DATA_DIR, CA_CERT)


class SecretError(Exception):
    """A token file named on the command line cannot be used; the message says which and why."""


def env(name: str, default: str | None = None) -> str | None:
    """The variable ``name`` if set and not empty, else ``default``."""
    return os.environ.get(name) or default


def read_secret_file(path: Path, what: str) -> str:
    """The first line of ``path``, stripped.

    Raises:
        SecretError: the file is missing, unreadable or empty.
    """
    try:
        value = path.read_text().strip()
    except OSError as e:
        raise SecretError(f"cannot read the {what} file {path}: {e.strerror or e}") from e
    if not value:
        raise SecretError(f"the {what} file {path} is empty")
    return value.splitlines()[0].strip()


def resolve_secret(value: str | None, file: Path | None, env_var: str, what: str) -> str | None:
    """The token from the flag, else the file, else ``env_var``; None when none is given.

    Raises:
        SecretError: both a value and a file were given, or the file is unusable.
    """
    if value and file:
        raise SecretError(f"give the {what} either on the command line or in a file, not both")
    if file:
        return read_secret_file(file, what)
    return value or env(env_var)
