"""Every ``OTA_*`` variable the Dockerfile and the READMEs name must be one something reads.

A misspelt variable is silently ignored by pydantic-settings: the Dockerfile once documented
``OTA_ENV`` while the setting is ``OTA_ENVIRONMENT``, so a production image ran with the
development defaults (generated secrets, no production checks) without a word.
"""

from __future__ import annotations

import re
from pathlib import Path

from cli.env import CLI_ENV_VARS
from server.config import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "Dockerfile", ROOT / "README.md", ROOT / "server" / "README.md"]
VARIABLE = re.compile(r"\bOTA_[A-Z0-9_]*[A-Z0-9]\b")


def settings_variables() -> set[str]:
    """The environment names pydantic-settings reads: prefix + field name, plus explicit aliases."""
    prefix = Settings.model_config.get("env_prefix", "")
    names = set()
    for name, info in Settings.model_fields.items():
        names.add(f"{prefix}{name}".upper())
        alias = info.validation_alias
        for choice in getattr(alias, "choices", [alias] if isinstance(alias, str) else []):
            if isinstance(choice, str):
                names.add(choice.upper())
    return names


def test_every_documented_ota_variable_is_a_settings_field_or_read_by_the_cli() -> None:
    known = settings_variables() | set(CLI_ENV_VARS)
    unknown = {f"{doc.relative_to(ROOT)}: {var}" for doc in DOCUMENTS for var in VARIABLE.findall(doc.read_text())
               if var not in known}
    assert not unknown, f"documented variables nothing reads (typo? renamed setting?): {sorted(unknown)}"


def test_the_documents_name_the_production_switch_by_its_real_name() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "OTA_ENVIRONMENT" in dockerfile
    assert "OTA_ENVIRONMENT" in settings_variables()
