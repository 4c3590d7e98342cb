"""Ledger API on PostgreSQL (and one SQLite run): schema, operations, events, replays, projection."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from pydantic import ValidationError

from nicflow.ledger import (
    Ledger,
    LedgerConflictError,
    OperationNotFoundError,
    ProjectionError,
    SchemaNotUpgradedError,
    head_revision,
    upgrade,
)
from nicflow.ledger.models import Base
from nicflow.ledger.schema import alembic_config


def request_fields(request_id: str = "req-1", **overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "request_id": request_id,
        "kind": "hotplug",
        "actor": "alice",
        "reason": "CHG-1042 add storage network",
        "vm_namespace": "default",
        "vm_name": "web-01",
        "network": "default/vlan20",
        "interface": "nic-2",
        "mode": "live",
        "workflow_id": "nic/default/web-01",
        "run_id": "run-1",
    }
    fields.update(overrides)
    return fields


@pytest.fixture
def ledger(pg_url: str) -> Iterator[Ledger]:
    upgrade(pg_url)
    opened = Ledger(pg_url)
    yield opened
    opened.close()


def row_count(url: str, table: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()
    finally:
        engine.dispose()


def run_basic_path(ledger: Ledger) -> None:
    """Open, append and finish one operation, asserting what each call returns and stores."""
    operation, created = ledger.open_operation(request_fields(), "req-1:request")
    assert created
    assert operation.operation_id.startswith("op-")
    assert operation.status == "running"
    assert operation.last_seq == 1
    assert operation.created_at.tzinfo == UTC

    validated = ledger.append_event(
        operation.operation_id,
        "validate",
        "succeeded",
        {"operation": {"mac": "02:00:00:0A:0B:0C", "cluster_network": "storage"}, "verdicts": ["ok"]},
        f"{operation.operation_id}:validate",
    )
    assert validated.seq == 2
    assert validated.prev_hash == ledger.list_events(operation.operation_id)[0].hash

    finished = ledger.finish_operation(
        operation.operation_id, "succeeded", None, "nic-2 is up in the guest", {"guest": "eth1"}, f"{operation.operation_id}:result"
    )
    assert finished.status == "succeeded"
    assert finished.message == "nic-2 is up in the guest"
    assert finished.mac == "02:00:00:0a:0b:0c"
    assert finished.cluster_network == "storage"
    assert finished.finished_at is not None
    assert finished.last_seq == 3

    events = ledger.list_events(operation.operation_id)
    assert [(event.step, event.outcome) for event in events] == [
        ("request", "started"),
        ("validate", "succeeded"),
        ("result", "succeeded"),
    ]
    assert events[0].details["actor"] == "alice"
    assert events[2].details["reason_code"] is None
    assert ledger.get_operation(operation.operation_id) == finished
    assert ledger.find_by_request_id("req-1") == finished
    assert ledger.verify_chain().ok


def test_upgrade_creates_schema(pg_url: str) -> None:
    upgrade(pg_url)

    engine = sa.create_engine(pg_url)
    try:
        tables = set(sa.inspect(engine).get_table_names())
        with engine.connect() as connection:
            revision = MigrationContext.configure(connection).get_current_revision()
            head = connection.execute(sa.text("SELECT id, last_seq, last_hash FROM ledger_head")).all()
    finally:
        engine.dispose()

    assert {"operations", "events", "ledger_head", "mac_reservations", "alembic_version"} <= tables
    assert revision == head_revision()
    assert head == [(1, 0, "0" * 64)]


def test_migration_matches_models(pg_url: str) -> None:
    upgrade(pg_url)

    engine = sa.create_engine(pg_url)
    try:
        with engine.connect() as connection:
            differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    finally:
        engine.dispose()

    assert differences == []


def test_upgrade_from_other_directory(pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)

    upgrade(pg_url)

    assert Ledger(pg_url).verify_chain().ok


def test_upgrade_outside_project(pg_url: str, tmp_path: Path) -> None:
    """Run upgrade() in a fresh interpreter whose sys.path has no project root, as `nicflow db upgrade` does."""
    environment = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    script = "import sys; from nicflow.ledger import upgrade; upgrade(sys.argv[1])"

    finished = subprocess.run(
        [sys.executable, "-c", script, pg_url], cwd=tmp_path, env=environment, capture_output=True, text=True
    )

    assert finished.returncode == 0, finished.stderr
    assert Ledger(pg_url).verify_chain().ok


def test_ledger_rejects_empty_database(pg_url: str) -> None:
    with pytest.raises(SchemaNotUpgradedError) as raised:
        Ledger(pg_url)

    assert "nicflow db upgrade" in str(raised.value)


def test_ledger_rejects_old_revision(pg_url: str) -> None:
    upgrade(pg_url)
    engine = sa.create_engine(pg_url)
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE alembic_version SET version_num = 'unknown0'"))
    engine.dispose()

    with pytest.raises(SchemaNotUpgradedError) as raised:
        Ledger(pg_url)

    assert "unknown0" in str(raised.value)


def test_downgrade_then_upgrade(pg_url: str) -> None:
    upgrade(pg_url)

    command.downgrade(alembic_config(pg_url), "base")
    engine = sa.create_engine(pg_url)
    try:
        remaining = set(sa.inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()
    assert remaining == set()

    upgrade(pg_url)
    assert Ledger(pg_url).verify_chain().ok


def test_basic_path_postgresql(ledger: Ledger) -> None:
    run_basic_path(ledger)


def test_basic_path_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    upgrade(url)

    with Ledger(url) as ledger:
        run_basic_path(ledger)


def test_open_replays_idempotency_key(ledger: Ledger, pg_url: str) -> None:
    first, created = ledger.open_operation(request_fields(), "open-key")

    again, created_again = ledger.open_operation(request_fields(), "open-key")

    assert created
    assert not created_again
    assert again == first
    assert row_count(pg_url, "events") == 1
    assert row_count(pg_url, "operations") == 1


def test_open_replays_request_id(ledger: Ledger, pg_url: str) -> None:
    first, _ = ledger.open_operation(request_fields(), "open-key-1")

    again, created = ledger.open_operation(request_fields(actor="bob"), "open-key-2")

    assert not created
    assert again == first
    assert again.actor == "alice"
    assert row_count(pg_url, "events") == 1


def test_open_rejects_key_of_other_request(ledger: Ledger, pg_url: str) -> None:
    ledger.open_operation(request_fields("req-1"), "open-key")

    with pytest.raises(LedgerConflictError) as raised:
        ledger.open_operation(request_fields("req-2"), "open-key")

    assert "req-2" in str(raised.value)
    assert row_count(pg_url, "operations") == 1


def test_open_keeps_given_operation_id(ledger: Ledger) -> None:
    operation, _ = ledger.open_operation(request_fields(operation_id="op-0123456789ab"), "k")

    assert operation.operation_id == "op-0123456789ab"


def test_open_rejects_taken_operation_id(ledger: Ledger) -> None:
    ledger.open_operation(request_fields("req-1", operation_id="op-0123456789ab"), "k1")

    with pytest.raises(LedgerConflictError):
        ledger.open_operation(request_fields("req-2", operation_id="op-0123456789ab"), "k2")


@pytest.mark.parametrize(
    "override",
    [
        {"kind": "replug"},
        {"mode": "fast"},
        {"network": "vlan20"},
        {"mac": "02:00:00:0a:0b"},
        {"vm_name": ""},
        {"colour": "blue"},
    ],
)
def test_open_rejects_invalid_fields(ledger: Ledger, pg_url: str, override: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ledger.open_operation(request_fields(**override), "k")

    assert row_count(pg_url, "events") == 0


def test_append_replays_idempotency_key(ledger: Ledger, pg_url: str) -> None:
    operation, _ = ledger.open_operation(request_fields(), "k-open")
    first = ledger.append_event(operation.operation_id, "patch", "succeeded", {"attempt": 1}, "k-patch")

    again = ledger.append_event(operation.operation_id, "patch", "succeeded", {"attempt": 2}, "k-patch")

    assert again == first
    assert again.details == {"attempt": 1}
    assert row_count(pg_url, "events") == 2
    assert ledger.get_operation(operation.operation_id).last_seq == 2


def test_append_logs_operation_id(ledger: Ledger, caplog: pytest.LogCaptureFixture) -> None:
    operation, _ = ledger.open_operation(request_fields(), "k-open")
    caplog.set_level(logging.DEBUG, logger="nicflow.ledger")

    ledger.append_event(operation.operation_id, "patch", "succeeded", {}, "k-patch")
    ledger.append_event(operation.operation_id, "patch", "succeeded", {}, "k-patch")

    appended = [record for record in caplog.records if record.levelno == logging.DEBUG]
    replayed = [record for record in caplog.records if record.levelno == logging.INFO]
    assert len(appended) == 1
    assert operation.operation_id in appended[0].getMessage()
    assert len(replayed) == 1
    assert operation.operation_id in replayed[0].getMessage()


def test_append_rejects_reused_key(ledger: Ledger) -> None:
    operation, _ = ledger.open_operation(request_fields(), "k-open")
    ledger.append_event(operation.operation_id, "patch", "failed", {}, "k-patch")

    with pytest.raises(LedgerConflictError) as raised:
        ledger.append_event(operation.operation_id, "patch", "succeeded", {}, "k-patch")

    assert "k-patch" in str(raised.value)


def test_append_unknown_operation(ledger: Ledger) -> None:
    with pytest.raises(OperationNotFoundError):
        ledger.append_event("op-000000000000", "patch", "started", {}, "k")


@pytest.mark.parametrize("step", ["request", "result", ""])
def test_append_rejects_reserved_steps(ledger: Ledger, step: str) -> None:
    operation, _ = ledger.open_operation(request_fields(), "k-open")

    with pytest.raises(ValueError):
        ledger.append_event(operation.operation_id, step, "started", {}, "k")


@pytest.mark.parametrize("details", [{"value": float("nan")}, {"value": object()}, {"text": "a\x00b"}])
def test_append_rejects_non_json_details(ledger: Ledger, details: dict[str, Any]) -> None:
    operation, _ = ledger.open_operation(request_fields(), "k-open")

    with pytest.raises(ValueError):
        ledger.append_event(operation.operation_id, "patch", "started", details, "k")


def test_append_rejects_unknown_field_update(ledger: Ledger, pg_url: str) -> None:
    operation, _ = ledger.open_operation(request_fields(), "k-open")

    with pytest.raises(ProjectionError):
        ledger.append_event(operation.operation_id, "validate", "succeeded", {"operation": {"actor": "eve"}}, "k")

    assert row_count(pg_url, "events") == 1


def test_finish_replays_idempotency_key(ledger: Ledger, pg_url: str) -> None:
    operation, _ = ledger.open_operation(request_fields(), "k-open")
    first = ledger.finish_operation(operation.operation_id, "rejected", "VMIsMigrating", "VM is migrating", {}, "k-end")

    again = ledger.finish_operation(operation.operation_id, "rejected", "VMIsMigrating", "VM is migrating", {}, "k-end")

    assert again == first
    assert again.reason_code == "VMIsMigrating"
    assert row_count(pg_url, "events") == 2


def test_finish_twice_rejected(ledger: Ledger, pg_url: str) -> None:
    operation, _ = ledger.open_operation(request_fields(), "k-open")
    ledger.finish_operation(operation.operation_id, "failed", "MigrationFailed", "migration failed", {}, "k-end-1")

    with pytest.raises(ProjectionError):
        ledger.finish_operation(operation.operation_id, "succeeded", None, "done", {}, "k-end-2")

    assert ledger.get_operation(operation.operation_id).status == "failed"
    assert row_count(pg_url, "events") == 2


@pytest.mark.parametrize("status", ["running", "done"])
def test_finish_rejects_status(ledger: Ledger, status: str) -> None:
    operation, _ = ledger.open_operation(request_fields(), "k-open")

    with pytest.raises(ValueError):
        ledger.finish_operation(operation.operation_id, status, None, "", {}, "k-end")


def test_events_after_finish_keep_status(ledger: Ledger) -> None:
    operation, _ = ledger.open_operation(request_fields(), "k-open")
    ledger.finish_operation(operation.operation_id, "undone", "GuestInterfaceMissing", "undone", {}, "k-end")

    event = ledger.append_event(operation.operation_id, "cleanup", "succeeded", {}, "k-cleanup")

    stored = ledger.get_operation(operation.operation_id)
    assert stored.status == "undone"
    assert stored.last_seq == event.seq


def test_list_operations_filters(ledger: Ledger) -> None:
    web, _ = ledger.open_operation(request_fields("r1"), "k1")
    db, _ = ledger.open_operation(request_fields("r2", vm_name="db-01"), "k2")
    other, _ = ledger.open_operation(request_fields("r3", vm_namespace="prod"), "k3")
    ledger.finish_operation(db.operation_id, "succeeded", None, "done", {}, "k4")

    newest_first = [row.operation_id for row in ledger.list_operations()]
    by_name = {row.operation_id for row in ledger.list_operations(vm="web-01")}
    by_namespace = [row.operation_id for row in ledger.list_operations(vm="prod/web-01")]
    succeeded = [row.operation_id for row in ledger.list_operations(status="succeeded")]

    assert newest_first == [other.operation_id, db.operation_id, web.operation_id]
    assert [row.operation_id for row in ledger.list_operations(limit=1)] == [other.operation_id]
    assert by_name == {web.operation_id, other.operation_id}
    assert by_namespace == [other.operation_id]
    assert succeeded == [db.operation_id]


@pytest.mark.parametrize("arguments", [{"limit": 0}, {"status": "done"}])
def test_list_operations_rejects(ledger: Ledger, arguments: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ledger.list_operations(**arguments)


def test_list_events_all(ledger: Ledger) -> None:
    first, _ = ledger.open_operation(request_fields("r1"), "k1")
    second, _ = ledger.open_operation(request_fields("r2"), "k2")
    ledger.append_event(first.operation_id, "validate", "started", {}, "k3")

    events = ledger.list_events()

    assert [event.seq for event in events] == [1, 2, 3]
    assert [event.operation_id for event in events] == [first.operation_id, second.operation_id, first.operation_id]


def check_details_round_trip(ledger: Ledger) -> None:
    """Store details that JSONB or SQLite could alter and check that they read back hashing the same."""
    operation, _ = ledger.open_operation(request_fields(), "k-open")
    details = {
        "whole": 1.0,
        "big": 1e20,
        "huge": 1.5e300,
        "small": 1.25e-7,
        "negative_zero": -0.0,
        "tuple": (1, 2),
        "text": "café 😀 \u2028",
        "nested": {"b": [None, True, {"a": []}]},
    }

    event = ledger.append_event(operation.operation_id, "migrate", "succeeded", details, "k")

    stored = ledger.list_events(operation.operation_id)[-1]
    assert stored.details == event.details
    assert stored.details["whole"] == 1
    assert stored.details["tuple"] == [1, 2]
    assert stored.details["text"] == "café 😀 \u2028"
    assert ledger.verify_chain().ok


def test_details_round_trip_postgresql(ledger: Ledger) -> None:
    check_details_round_trip(ledger)


def test_details_round_trip_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    upgrade(url)

    with Ledger(url) as ledger:
        check_details_round_trip(ledger)


def test_projection_rebuild_equals_stored(ledger: Ledger) -> None:
    for index in range(4):
        operation, _ = ledger.open_operation(request_fields(f"r{index}", vm_name=f"vm-{index}"), f"k{index}")
        ledger.append_event(
            operation.operation_id,
            "validate",
            "succeeded",
            {"operation": {"mac": f"02:00:00:00:00:0{index}", "cluster_network": "storage", "mode": "cold"}},
            f"k{index}:validate",
        )
        if index % 2 == 0:
            ledger.finish_operation(operation.operation_id, "succeeded", None, "done", {}, f"k{index}:result")

    rebuilt = sorted(ledger.rebuild_projection(), key=lambda row: row.operation_id)
    stored = sorted(ledger.list_operations(), key=lambda row: row.operation_id)

    assert len(rebuilt) == 4
    assert rebuilt == stored
    assert {row.mode for row in stored} == {"cold"}


def test_projection_rebuild_detects_drift(ledger: Ledger, pg_url: str) -> None:
    operation, _ = ledger.open_operation(request_fields(), "k-open")
    engine = sa.create_engine(pg_url)
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE operations SET status = 'succeeded'"))
    engine.dispose()

    rebuilt = ledger.rebuild_projection()

    assert rebuilt[0].status == "running"
    assert rebuilt != ledger.list_operations()
