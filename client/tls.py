"""HTTPS for the agent: trust a private CA for the registry's certificate.

A fleet registry often has a certificate from the company's own CA, which the car's system trust store does
not know.  ``AgentConfig.ca_cert_path`` names that CA's PEM file; the agent then verifies the server against
it (and only it).  Without it, httpx verifies against the system's CAs (certifi).  There is no switch to turn
verification off: a car that trusts any certificate trusts any man in the middle.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx

from client.errors import AgentError


def ca_context(ca_cert_path: Path) -> ssl.SSLContext:
    """A client TLS context that trusts exactly the CA certificate(s) in ``ca_cert_path``.

    Raises:
        AgentError: the file is missing, unreadable or holds no PEM certificate.
    """
    try:
        return ssl.create_default_context(cafile=str(ca_cert_path))
    except FileNotFoundError as e:
        raise AgentError(f"CA certificate {ca_cert_path} does not exist: pass the PEM file of the CA that "
                         "signed the registry's certificate") from e
    except (OSError, ssl.SSLError) as e:
        raise AgentError(f"CA certificate {ca_cert_path} cannot be used ({e}): it must be a PEM certificate "
                         "(-----BEGIN CERTIFICATE-----)") from e


def registry_transport(ca_cert_path: Path | None) -> httpx.AsyncHTTPTransport | None:
    """The transport for an agent that trusts ``ca_cert_path``; None keeps httpx's default (system CAs).

    Raises:
        AgentError: the CA file cannot be used.
    """
    if ca_cert_path is None:
        return None
    return httpx.AsyncHTTPTransport(verify=ca_context(ca_cert_path))
