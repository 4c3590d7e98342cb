"""MAC reservations: unique per cluster network over active rows, released by operation or MAC."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from nicflow.ledger import Ledger, OperationNotFoundError, OperationRow, upgrade

MAC = "02:00:00:12:34:56"
RACERS = 25


def open_operations(ledger: Ledger, count: int) -> list[OperationRow]:
    operations = []
    for index in range(count):
        fields = {
            "request_id": f"req-{index}",
            "kind": "hotplug",
            "actor": "alice",
            "vm_namespace": "default",
            "vm_name": f"vm-{index}",
            "network": "default/vlan30",
            "interface": "nic-2",
            "mode": "live",
        }
        operation, _ = ledger.open_operation(fields, f"k-open-{index}")
        operations.append(operation)
    return operations


@pytest.fixture
def ledger(pg_url: str) -> Iterator[Ledger]:
    upgrade(pg_url)
    opened = Ledger(pg_url)
    yield opened
    opened.close()


def race(ledger: Ledger, operations: list[OperationRow], mac: str) -> list[bool]:
    """Let every operation reserve `mac` at the same moment and return each result."""
    barrier = threading.Barrier(len(operations))

    def reserve(operation: OperationRow) -> bool:
        barrier.wait()
        return ledger.reserve_mac("storage", mac, operation.operation_id)

    with ThreadPoolExecutor(max_workers=len(operations)) as pool:
        return list(pool.map(reserve, operations))


def test_reserve_then_conflict(ledger: Ledger) -> None:
    first, second = open_operations(ledger, 2)

    assert ledger.reserve_mac("storage", MAC, first.operation_id)
    assert not ledger.reserve_mac("storage", MAC, second.operation_id)
    assert [row.operation_id for row in ledger.active_reservations("storage")] == [first.operation_id]


def test_reserve_compares_lower_case(ledger: Ledger) -> None:
    first, second = open_operations(ledger, 2)
    ledger.reserve_mac("storage", MAC.upper(), first.operation_id)

    assert not ledger.reserve_mac("storage", MAC, second.operation_id)
    assert ledger.active_reservations()[0].mac == MAC


def test_reserve_other_network(ledger: Ledger) -> None:
    first, second = open_operations(ledger, 2)
    ledger.reserve_mac("storage", MAC, first.operation_id)

    assert ledger.reserve_mac("mgmt", MAC, second.operation_id)
    assert len(ledger.active_reservations()) == 2
    assert [row.operation_id for row in ledger.active_reservations("mgmt")] == [second.operation_id]


def test_reserve_replay_same_operation(ledger: Ledger) -> None:
    (operation,) = open_operations(ledger, 1)
    ledger.reserve_mac("storage", MAC, operation.operation_id)

    assert ledger.reserve_mac("storage", MAC, operation.operation_id)
    assert len(ledger.active_reservations()) == 1


def test_release_macs_frees_mac(ledger: Ledger) -> None:
    first, second = open_operations(ledger, 2)
    ledger.reserve_mac("storage", MAC, first.operation_id)
    ledger.reserve_mac("mgmt", MAC, first.operation_id)

    released = ledger.release_macs(first.operation_id)

    assert released == 2
    assert ledger.active_reservations() == []
    assert ledger.release_macs(first.operation_id) == 0
    assert ledger.reserve_mac("storage", MAC, second.operation_id)


def test_release_mac_by_address(ledger: Ledger) -> None:
    first, second = open_operations(ledger, 2)
    ledger.reserve_mac("storage", MAC, first.operation_id)

    assert ledger.release_mac("storage", MAC.upper())
    assert not ledger.release_mac("storage", MAC)
    assert ledger.reserve_mac("storage", MAC, second.operation_id)


def test_released_rows_kept(ledger: Ledger, pg_url: str) -> None:
    operations = open_operations(ledger, 3)
    for operation in operations:
        ledger.reserve_mac("storage", MAC, operation.operation_id)
        ledger.release_macs(operation.operation_id)

    engine = sa.create_engine(pg_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                sa.text("SELECT active, released_at IS NOT NULL FROM mac_reservations ORDER BY id")
            ).all()
    finally:
        engine.dispose()

    assert rows == [(False, True)] * 3


def test_index_rejects_second_active_row(ledger: Ledger, pg_url: str) -> None:
    first, second = open_operations(ledger, 2)
    ledger.reserve_mac("storage", MAC, first.operation_id)
    insert = sa.text(
        "INSERT INTO mac_reservations (cluster_network, mac, operation_id, active, created_at) "
        "VALUES ('storage', :mac, :operation_id, :active, now())"
    )

    engine = sa.create_engine(pg_url)
    try:
        with engine.begin() as connection:
            connection.execute(insert, {"mac": MAC, "operation_id": second.operation_id, "active": False})
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as connection:
            connection.execute(insert, {"mac": MAC, "operation_id": second.operation_id, "active": True})
    finally:
        engine.dispose()


def test_reserve_unknown_operation(ledger: Ledger) -> None:
    with pytest.raises(OperationNotFoundError):
        ledger.reserve_mac("storage", MAC, "op-000000000000")


@pytest.mark.parametrize("mac", ["02:00:00:12:34", "02-00-00-12-34-56", "02:00:00:12:34:5g", f"{MAC}:78"])
def test_reserve_rejects_invalid_mac(ledger: Ledger, mac: str) -> None:
    (operation,) = open_operations(ledger, 1)

    with pytest.raises(ValueError):
        ledger.reserve_mac("storage", mac, operation.operation_id)


def test_reserve_without_cluster_network(ledger: Ledger) -> None:
    first, second = open_operations(ledger, 2)

    assert ledger.reserve_mac("", MAC, first.operation_id)
    assert not ledger.reserve_mac("", MAC, second.operation_id)
    assert ledger.reserve_mac("storage", MAC, second.operation_id)


def test_concurrent_reserve_one_wins(ledger: Ledger) -> None:
    operations = open_operations(ledger, RACERS)

    results = race(ledger, operations, MAC)

    winners = [operation.operation_id for operation, won in zip(operations, results) if won]
    active = ledger.active_reservations("storage")
    assert results.count(True) == 1
    assert [row.operation_id for row in active] == winners


def test_concurrent_reserve_after_release(ledger: Ledger) -> None:
    operations = open_operations(ledger, RACERS)
    first_results = race(ledger, operations, MAC)
    winner = operations[first_results.index(True)]
    ledger.release_macs(winner.operation_id)

    others = [operation for operation in operations if operation != winner]
    second_results = race(ledger, others, MAC)

    assert second_results.count(True) == 1
    assert len(ledger.active_reservations()) == 1


def test_concurrent_reserve_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    upgrade(url)
    ledger = Ledger(url)
    operations = open_operations(ledger, RACERS)

    results = race(ledger, operations, MAC)

    active: list[Any] = ledger.active_reservations()
    ledger.close()
    assert results.count(True) == 1
    assert len(active) == 1
