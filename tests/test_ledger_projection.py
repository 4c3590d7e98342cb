"""apply_event, the pure function that projects events onto operation rows, without a database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from nicflow.ledger import ProjectionError, apply_event
from nicflow.ledger.chain import ChainLink

OPERATION_ID = "op-7f3a9c2e41d0"
START = datetime(2026, 12, 4, 20, 0, tzinfo=UTC)
REQUEST = {
    "operation_id": OPERATION_ID,
    "request_id": "req-1",
    "kind": "hotplug",
    "actor": "alice",
    "reason": "CHG-1042",
    "vm_namespace": "default",
    "vm_name": "web-01",
    "network": "default/vlan20",
    "interface": "nic-2",
    "mac": None,
    "cluster_network": None,
    "mode": "live",
    "workflow_id": "nic/default/web-01",
    "run_id": "run-1",
}


def make_event(seq: int, step: str, outcome: str, details: dict[str, Any]) -> ChainLink:
    return ChainLink(
        seq=seq,
        operation_id=OPERATION_ID,
        step=step,
        outcome=outcome,
        details=details,
        idempotency_key=f"k-{seq}",
        recorded_at=START + timedelta(seconds=seq),
        prev_hash="0" * 64,
    )


@pytest.fixture
def opened() -> dict[str, Any]:
    return apply_event(None, make_event(1, "request", "started", REQUEST))


def test_request_creates_row(opened: dict[str, Any]) -> None:
    assert opened["status"] == "running"
    assert opened["actor"] == "alice"
    assert opened["created_at"] == START + timedelta(seconds=1)
    assert opened["finished_at"] is None
    assert opened["last_seq"] == 1


def test_request_twice_rejected(opened: dict[str, Any]) -> None:
    with pytest.raises(ProjectionError):
        apply_event(opened, make_event(2, "request", "started", REQUEST))


def test_request_other_operation_id() -> None:
    with pytest.raises(ProjectionError):
        apply_event(None, make_event(1, "request", "started", {**REQUEST, "operation_id": "op-000000000000"}))


def test_step_before_request() -> None:
    with pytest.raises(ProjectionError):
        apply_event(None, make_event(1, "validate", "started", {}))


def test_step_moves_seq_only(opened: dict[str, Any]) -> None:
    before = dict(opened)

    updated = apply_event(opened, make_event(2, "patch", "succeeded", {"patch": [{"op": "add"}]}))

    assert opened == before
    assert updated["last_seq"] == 2
    assert updated["updated_at"] == START + timedelta(seconds=2)
    assert updated["status"] == "running"
    assert {key: value for key, value in updated.items() if key not in ("last_seq", "updated_at")} == {
        key: value for key, value in opened.items() if key not in ("last_seq", "updated_at")
    }


def test_step_sets_allowed_fields(opened: dict[str, Any]) -> None:
    changes = {"mac": "02:00:00:AB:CD:EF", "cluster_network": "storage", "mode": "cold"}

    updated = apply_event(opened, make_event(2, "validate", "succeeded", {"operation": changes}))

    assert updated["mac"] == "02:00:00:ab:cd:ef"
    assert updated["cluster_network"] == "storage"
    assert updated["mode"] == "cold"


@pytest.mark.parametrize(
    "changes",
    [{"actor": "eve"}, {"status": "succeeded"}, {"mode": "fast"}, {"mac": "not-a-mac"}, "mac=02:00:00:ab:cd:ef"],
)
def test_step_rejects_field_update(opened: dict[str, Any], changes: Any) -> None:
    with pytest.raises(ValueError):
        apply_event(opened, make_event(2, "validate", "succeeded", {"operation": changes}))


def test_result_finishes_row(opened: dict[str, Any]) -> None:
    details = {"status": "rejected", "reason_code": "VMIsMigrating", "message": "the VM is migrating"}

    finished = apply_event(opened, make_event(2, "result", "rejected", details))

    assert finished["status"] == "rejected"
    assert finished["reason_code"] == "VMIsMigrating"
    assert finished["message"] == "the VM is migrating"
    assert finished["finished_at"] == START + timedelta(seconds=2)


def test_result_twice_rejected(opened: dict[str, Any]) -> None:
    finished = apply_event(opened, make_event(2, "result", "failed", {"status": "failed", "message": ""}))

    with pytest.raises(ProjectionError):
        apply_event(finished, make_event(3, "result", "succeeded", {"status": "succeeded", "message": ""}))


@pytest.mark.parametrize("status", ["running", "done", None])
def test_result_rejects_status(opened: dict[str, Any], status: str | None) -> None:
    with pytest.raises(ProjectionError):
        apply_event(opened, make_event(2, "result", "failed", {"status": status}))
