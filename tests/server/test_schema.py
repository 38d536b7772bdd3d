"""Migrations are the schema; the server refuses an unmigrated database and insecure production settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from server.app import build_context
from server.config import InsecureConfiguration, Settings
from server.db import SchemaNotAtHead, make_engine, upgrade_to_head
from server.orm import Base
from tests.support.live_server import temporary_database


def _url(tmp_path: Path, pg: str | None) -> str:
    return pg or f"sqlite:///{tmp_path / 'registry.db'}"


def test_migrations_build_exactly_the_schema_the_code_maps(tmp_path: Path) -> None:
    with temporary_database() as pg:
        url = _url(tmp_path, pg)
        upgrade_to_head(url)
        engine = make_engine(url)
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        engine.dispose()
    assert diff == []


def test_server_refuses_to_start_on_an_unmigrated_database(tmp_path: Path) -> None:
    with temporary_database() as pg:
        settings = Settings(data_dir=tmp_path, database_url=_url(tmp_path, pg))
        with pytest.raises(SchemaNotAtHead, match="alembic upgrade head"):
            build_context(settings)


def test_production_refuses_missing_or_weak_secrets(tmp_path: Path) -> None:
    with pytest.raises(InsecureConfiguration, match="OTA_ADMIN_TOKEN"):
        build_context(Settings(environment="production", data_dir=tmp_path))
    with pytest.raises(InsecureConfiguration, match="OTA_ENROLLMENT_TOKEN"):
        build_context(Settings(environment="production", data_dir=tmp_path, admin_token="x" * 40,
                               enrollment_token="short"))


def test_development_generates_tokens_and_signing_key_once(tmp_path: Path) -> None:
    from server.config import resolve_secrets
    from server.keys import load_keyring

    first = resolve_secrets(Settings(data_dir=tmp_path))
    again = resolve_secrets(Settings(data_dir=tmp_path))
    assert first.admin_token == again.admin_token and first.enrollment_token == again.enrollment_token
    assert first.admin_token != first.enrollment_token
    assert (tmp_path / "admin-token").stat().st_mode & 0o777 == 0o600
    assert load_keyring(first).signer.key_id == load_keyring(again).signer.key_id


def test_migration_0005_keeps_existing_rollouts_live_without_gates_and_downgrades(tmp_path: Path) -> None:
    """Issue 18: rollouts from before 0005 get live stages, no gates and no shadow stage; 0005 downgrades."""
    from alembic import command
    from sqlalchemy import text

    from server.db import alembic_config, create_private_sqlite_file

    with temporary_database() as pg:
        url = _url(tmp_path, pg)
        create_private_sqlite_file(url)
        command.upgrade(alembic_config(url), "0004")
        engine = make_engine(url)
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO lines (id, name, created_at) VALUES (1, 'l', CURRENT_TIMESTAMP)"))
            conn.execute(text("INSERT INTO versions (id, line_id, number, source_sha256, source_bytes, labels, "
                              "input_name, input_shape, contract, created_at) VALUES (1, 1, 1, 'x', 1, '[]', 'x', "
                              "'[]', '{}', CURRENT_TIMESTAMP)"))
            conn.execute(text("INSERT INTO rollouts (id, line_id, version_id, target_version, codec, selector, state, "
                              "current_stage, stage_started_at, rollback, created_at, updated_at) VALUES (1, 1, 1, 1, "
                              "'lossless', '{}', 'running', 0, CURRENT_TIMESTAMP, false, CURRENT_TIMESTAMP, "
                              "CURRENT_TIMESTAMP)"))
            conn.execute(text("INSERT INTO rollout_stages (rollout_id, position, percent, min_soak_s) "
                              "VALUES (1, 0, 100, 0)"))
        upgrade_to_head(url)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT mode FROM rollout_stages")).scalar_one() == "live"
            assert conn.execute(text("SELECT gates, shadow FROM rollouts")).one() == (None, None)
            assert conn.execute(text("SELECT count(*) FROM quality_summaries")).scalar_one() == 0
        command.downgrade(alembic_config(url), "0004")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM rollout_stages")).scalar_one() == 1
        engine.dispose()


def test_migration_0006_leaves_old_versions_needing_nothing_and_old_cars_unknown_and_downgrades(
        tmp_path: Path) -> None:
    """Issue 20: versions published before 0006 need nothing, devices enrolled before it have no platform."""
    from alembic import command
    from sqlalchemy import text

    from server.db import alembic_config, create_private_sqlite_file

    with temporary_database() as pg:
        url = _url(tmp_path, pg)
        create_private_sqlite_file(url)
        command.upgrade(alembic_config(url), "0005")
        engine = make_engine(url)
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO lines (id, name, created_at) VALUES (1, 'l', CURRENT_TIMESTAMP)"))
            conn.execute(text("INSERT INTO versions (id, line_id, number, source_sha256, source_bytes, labels, "
                              "input_name, input_shape, contract, created_at) VALUES (1, 1, 1, 'x', 1, '[]', 'x', "
                              "'[]', '{}', CURRENT_TIMESTAMP)"))
            conn.execute(text("INSERT INTO devices (id, device_id, token_sha256, tags, created_at, drift, "
                              "manifest_version, last_seq, proof_ms) VALUES (1, 'car', 't', '{}', "
                              "CURRENT_TIMESTAMP, false, 0, 0, 0)"))
        command.upgrade(alembic_config(url), "0006")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT requirements FROM versions")).scalar_one() is None
            assert conn.execute(text("SELECT platform, platform_sha256 FROM devices")).one() == (None, None)
        command.downgrade(alembic_config(url), "0005")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM devices")).scalar_one() == 1
            assert conn.execute(text("SELECT count(*) FROM versions")).scalar_one() == 1
        engine.dispose()


def test_migration_0009_adds_an_empty_webhook_outbox_keeps_devices_and_downgrades(tmp_path: Path) -> None:
    """Issue 21: 0009 adds the webhook tables (empty: no event is invented for the past) and the fleet-gauge
    index on device_lines; its downgrade (to 0008) drops them and keeps the devices and their lines."""
    from alembic import command
    from sqlalchemy import inspect, text

    from server.db import alembic_config, create_private_sqlite_file

    with temporary_database() as pg:
        url = _url(tmp_path, pg)
        create_private_sqlite_file(url)
        command.upgrade(alembic_config(url), "0006")
        engine = make_engine(url)
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO devices (id, device_id, token_sha256, tags, created_at, drift, "
                              "manifest_version, last_seq, proof_ms, line, running_version) VALUES (1, 'car', 't', "
                              "'{}', CURRENT_TIMESTAMP, false, 0, 0, 0, 'l', 3)"))
        command.upgrade(alembic_config(url), "0009")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM webhook_subscriptions")).scalar_one() == 0
            assert conn.execute(text("SELECT count(*) FROM webhook_deliveries")).scalar_one() == 0
            assert "ix_webhook_deliveries_state_next_attempt" in {
                i["name"] for i in inspect(conn).get_indexes("webhook_deliveries")}
            assert "ix_device_lines_line_running_version" in {
                i["name"] for i in inspect(conn).get_indexes("device_lines")}
            assert conn.execute(text("SELECT line, running_version FROM device_lines")).one() == ("l", 3)
        command.downgrade(alembic_config(url), "0008")
        with engine.connect() as conn:
            assert not {"webhook_subscriptions", "webhook_deliveries"} & set(inspect(conn).get_table_names())
            assert "ix_device_lines_line_running_version" not in {
                i["name"] for i in inspect(conn).get_indexes("device_lines")}
            assert conn.execute(text("SELECT count(*) FROM devices")).scalar_one() == 1
            assert conn.execute(text("SELECT count(*) FROM device_lines")).scalar_one() == 1
        engine.dispose()


def test_migration_0008_keeps_old_stages_and_rollouts_as_they_were_fills_audit_targets_and_downgrades(
        tmp_path: Path) -> None:
    """Issue 21: stages from before 0008 need no install (min_installed 0), rollouts never time out (null), and
    old audit rows get their target from their detail and their outcome from detail.outcome (a success: ok)."""
    from alembic import command
    from sqlalchemy import text

    from server.db import alembic_config, create_private_sqlite_file

    with temporary_database() as pg:
        url = _url(tmp_path, pg)
        create_private_sqlite_file(url)
        command.upgrade(alembic_config(url), "0006")
        engine = make_engine(url)
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO lines (id, name, created_at) VALUES (1, 'l', CURRENT_TIMESTAMP)"))
            conn.execute(text("INSERT INTO versions (id, line_id, number, source_sha256, source_bytes, labels, "
                              "input_name, input_shape, contract, created_at) VALUES (1, 1, 1, 'x', 1, '[]', 'x', "
                              "'[]', '{}', CURRENT_TIMESTAMP)"))
            conn.execute(text("INSERT INTO rollouts (id, line_id, version_id, target_version, codec, selector, state, "
                              "current_stage, stage_started_at, rollback, created_at, updated_at) VALUES (1, 1, 1, 1, "
                              "'lossless', '{}', 'running', 0, CURRENT_TIMESTAMP, false, CURRENT_TIMESTAMP, "
                              "CURRENT_TIMESTAMP)"))
            conn.execute(text("INSERT INTO rollout_stages (rollout_id, position, percent, min_soak_s) "
                              "VALUES (1, 0, 100, 0)"))
            for i, detail in enumerate(('{"rollout_id": 1, "state": "running"}',
                                        '{"device_id": "car-1", "outcome": "refused"}',
                                        '{"device_id": "car-2", "outcome": "created"}', '{"line": "l"}'), start=1):
                conn.execute(text("INSERT INTO audit_log (id, at, actor, action, detail) VALUES "
                                  f"({i}, CURRENT_TIMESTAMP, 'admin', 'x', '{detail}')"))
        upgrade_to_head(url)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT min_installed FROM rollout_stages")).scalar_one() == 0
            assert conn.execute(text("SELECT in_progress_timeout_s FROM rollouts")).scalar_one() is None
            assert conn.execute(text("SELECT target, outcome FROM audit_log ORDER BY id")).all() == [
                ("rollout:1", "ok"), ("device:car-1", "refused"), ("device:car-2", "ok"), ("line:l", "ok")]
        command.downgrade(alembic_config(url), "0006")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM audit_log")).scalar_one() == 4
            assert conn.execute(text("SELECT count(*) FROM rollout_stages")).scalar_one() == 1
        engine.dispose()


def test_migration_0010_makes_existing_packages_their_versions_own_export_and_downgrades(tmp_path: Path) -> None:
    """Issue 20, variants: packages stored before 0010 are variant 0 (the version's own export); a second package
    of the same codec is allowed only for another variant; a downgrade drops the variants and keeps the rest."""
    from alembic import command
    from sqlalchemy import text
    from sqlalchemy.exc import IntegrityError

    from server.db import alembic_config, create_private_sqlite_file

    package = ("INSERT INTO packages (id, version_id, {col}codec, sha256, bytes, model_sha256, fidelity, smoke, "
               "storage_kind, storage_blob, storage_bytes) VALUES ({id}, 1, {val}'lossless', 's{id}', 1, 'm', '{{}}', "
               "'{{}}', 'full', 'b', 1)")
    with temporary_database() as pg:
        url = _url(tmp_path, pg)
        create_private_sqlite_file(url)
        command.upgrade(alembic_config(url), "0006")
        engine = make_engine(url)
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO lines (id, name, created_at) VALUES (1, 'l', CURRENT_TIMESTAMP)"))
            conn.execute(text("INSERT INTO versions (id, line_id, number, source_sha256, source_bytes, labels, "
                              "input_name, input_shape, contract, created_at) VALUES (1, 1, 1, 'x', 1, '[]', 'x', "
                              "'[]', '{}', CURRENT_TIMESTAMP)"))
            conn.execute(text(package.format(col="", id=1, val="")))
        command.upgrade(alembic_config(url), "0010")
        with engine.begin() as conn:
            assert conn.execute(text("SELECT variant FROM packages")).scalar_one() == 0
            conn.execute(text("INSERT INTO version_variants (id, version_id, variant, source_sha256, source_bytes, "
                              "requirements, created_at) VALUES (1, 1, 1, 'y', 1, '{}', CURRENT_TIMESTAMP)"))
            conn.execute(text(package.format(col="variant, ", id=2, val="1, ")))
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(text(package.format(col="variant, ", id=3, val="1, ")))  # one package per variant and codec
        command.downgrade(alembic_config(url), "0006")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT id FROM packages")).scalars().all() == [1]
        engine.dispose()


def test_migration_0012_leaves_existing_rollouts_unscheduled_and_always_open_and_downgrades(tmp_path: Path) -> None:
    """Issue 21 item 2: a rollout from before 0012 has no start and no windows (it offers and advances as it
    did); a window stored after it survives a round trip; a downgrade keeps the rollout and drops both."""
    from alembic import command
    from sqlalchemy import text

    from server.db import alembic_config, create_private_sqlite_file

    with temporary_database() as pg:
        url = _url(tmp_path, pg)
        create_private_sqlite_file(url)
        command.upgrade(alembic_config(url), "0010")
        engine = make_engine(url)
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO lines (id, name, created_at) VALUES (1, 'l', CURRENT_TIMESTAMP)"))
            conn.execute(text("INSERT INTO versions (id, line_id, number, source_sha256, source_bytes, labels, "
                              "input_name, input_shape, contract, created_at) VALUES (1, 1, 1, 'x', 1, '[]', 'x', "
                              "'[]', '{}', CURRENT_TIMESTAMP)"))
            conn.execute(text("INSERT INTO rollouts (id, line_id, version_id, target_version, codec, selector, state, "
                              "current_stage, stage_started_at, rollback, created_at, updated_at) VALUES (1, 1, 1, 1, "
                              "'lossless', '{}', 'running', 0, CURRENT_TIMESTAMP, false, CURRENT_TIMESTAMP, "
                              "CURRENT_TIMESTAMP)"))
        command.upgrade(alembic_config(url), "0012")
        with engine.begin() as conn:
            assert conn.execute(text("SELECT starts_at, windows FROM rollouts")).one() == (None, None)
            conn.execute(text("UPDATE rollouts SET windows = :w, starts_at = CURRENT_TIMESTAMP"),
                         {"w": '[{"days": "mon-fri", "start": "01:00", "end": "05:00", "tz": "Europe/Berlin"}]'})
        with engine.connect() as conn:
            stored = conn.execute(text("SELECT windows FROM rollouts")).scalar_one()
            assert "Europe/Berlin" in str(stored)
        command.downgrade(alembic_config(url), "0010")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT state FROM rollouts")).scalar_one() == "running"
        engine.dispose()


def test_migration_0011_adds_the_inventory_indexes_keeps_devices_and_downgrades(tmp_path: Path) -> None:
    """Issue 21: 0011 only adds indexes (the inventory's keyset pages and the Fleet page's aggregates); rows stay."""
    from alembic import command
    from sqlalchemy import inspect, text

    from server.db import alembic_config, create_private_sqlite_file

    added = {("devices", "ix_devices_last_seen_at"), ("device_lines", "ix_device_lines_drift_device_pk"),
             ("device_updates", "ix_device_updates_device_pk_id"),
             ("device_updates", "ix_device_updates_state_updated_at")}

    def indexes(engine: object) -> set[tuple[str, str]]:
        insp = inspect(engine)
        return {(t, ix["name"]) for t in ("devices", "device_lines", "device_updates") for ix in insp.get_indexes(t)}

    with temporary_database() as pg:
        url = _url(tmp_path, pg)
        create_private_sqlite_file(url)
        command.upgrade(alembic_config(url), "0010")
        engine = make_engine(url)
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO devices (id, device_id, token_sha256, tags, created_at, manifest_version, "
                              "last_seq, proof_ms) VALUES (1, 'car-1', 't', '{}', CURRENT_TIMESTAMP, 0, 0, 0)"))
        assert not added & indexes(engine)
        command.upgrade(alembic_config(url), "0011")
        assert added <= indexes(engine)
        command.downgrade(alembic_config(url), "0010")
        assert not added & indexes(engine)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT device_id FROM devices")).scalars().all() == ["car-1"]
        engine.dispose()
