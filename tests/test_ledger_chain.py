"""The event hash chain: its format, tamper detection and concurrent appends on PostgreSQL."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from nicflow.ledger import EventRow, Ledger, OperationRow, upgrade
from nicflow.ledger.chain import ChainLink, canonical_json, compute_hash, normalize_details

THREADS = 20


def request_fields(request_id: str, **overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "request_id": request_id,
        "kind": "unplug",
        "actor": "bob",
        "reason": "CHG-2001 retire the old VLAN",
        "vm_namespace": "default",
        "vm_name": "db-01",
        "interface": "nic-3",
        "mode": "live",
    }
    fields.update(overrides)
    return fields


@pytest.fixture
def ledger(pg_url: str) -> Iterator[Ledger]:
    upgrade(pg_url)
    opened = Ledger(pg_url)
    yield opened
    opened.close()


@pytest.fixture
def chain_of_five(ledger: Ledger) -> OperationRow:
    """One operation with five events: request, three steps and the result."""
    operation, _ = ledger.open_operation(request_fields("req-chain"), "k-open")
    for step in ("validate", "patch", "migrate"):
        ledger.append_event(operation.operation_id, step, "succeeded", {"step": step}, f"k-{step}")
    return ledger.finish_operation(operation.operation_id, "succeeded", None, "done", {}, "k-result")


def tamper(url: str, *statements: str) -> None:
    """Run SQL on the events table with its append-only trigger disabled, as a superuser could."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql("ALTER TABLE events DISABLE TRIGGER events_append_only")
            for statement in statements:
                connection.exec_driver_sql(statement)
            connection.exec_driver_sql("ALTER TABLE events ENABLE TRIGGER events_append_only")
    finally:
        engine.dispose()


def run_threads(count: int, work: Callable[[int], Any]) -> list[Any]:
    """Run `work(index)` in `count` threads that start together and return their results."""
    barrier = threading.Barrier(count)

    def start(index: int) -> Any:
        barrier.wait()
        return work(index)

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(start, range(count)))


def test_hash_format() -> None:
    recorded_at = datetime(2026, 12, 4, 20, 7, 57, 123456, tzinfo=UTC)
    link = ChainLink(
        seq=1,
        operation_id="op-7f3a9c2e41d0",
        step="request",
        outcome="started",
        details={"vm_name": "web-01", "actor": "alice"},
        idempotency_key="op-7f3a9c2e41d0:request",
        recorded_at=recorded_at,
        prev_hash="0" * 64,
    )
    expected_text = (
        '{"details":{"actor":"alice","vm_name":"web-01"},"idempotency_key":"op-7f3a9c2e41d0:request",'
        '"operation_id":"op-7f3a9c2e41d0","outcome":"started","recorded_at":"2026-12-04T20:07:57.123456+00:00",'
        '"seq":1,"step":"request"}'
    )

    assert compute_hash("0" * 64, link) == hashlib.sha256(("0" * 64 + expected_text).encode()).hexdigest()


def test_canonical_json_keeps_unicode() -> None:
    assert canonical_json({"b": "é", "a": [1, 2]}) == '{"a":[1,2],"b":"é"}'


def test_normalize_details_numbers() -> None:
    normalized = normalize_details({"one": 1.0, "big": 1.5e300, "half": 0.5, "zero": -0.0, "keys": {1: "x"}})

    assert normalized["one"] == 1
    assert isinstance(normalized["one"], int)
    assert normalized["big"] == 15 * 10**299
    assert normalized["half"] == 0.5
    assert normalized["zero"] == 0
    assert normalized["keys"] == {"1": "x"}


def test_verify_empty_chain(ledger: Ledger) -> None:
    report = ledger.verify_chain()

    assert report.ok
    assert report.events == 0
    assert report.last_seq == 0


def test_verify_intact_chain(ledger: Ledger, chain_of_five: OperationRow) -> None:
    report = ledger.verify_chain()

    assert report.ok
    assert report.events == 5
    assert report.first_broken_seq is None
    assert report.last_seq == 5
    assert report.last_hash == ledger.list_events()[-1].hash


def test_events_reject_update(ledger: Ledger, chain_of_five: OperationRow, pg_url: str) -> None:
    engine = sa.create_engine(pg_url)
    try:
        with pytest.raises(sa.exc.DBAPIError) as raised, engine.begin() as connection:
            connection.execute(sa.text("UPDATE events SET outcome = 'failed' WHERE seq = 2"))
    finally:
        engine.dispose()

    assert "append-only" in str(raised.value)


@pytest.mark.parametrize("statement", ["DELETE FROM events WHERE seq = 5", "TRUNCATE events"])
def test_events_reject_delete(ledger: Ledger, chain_of_five: OperationRow, pg_url: str, statement: str) -> None:
    engine = sa.create_engine(pg_url)
    try:
        with pytest.raises(sa.exc.DBAPIError) as raised, engine.begin() as connection:
            connection.execute(sa.text(statement))
    finally:
        engine.dispose()

    assert "append-only" in str(raised.value)
    assert ledger.verify_chain().ok


def test_tamper_edited_details(ledger: Ledger, chain_of_five: OperationRow, pg_url: str) -> None:
    tamper(pg_url, """UPDATE events SET details = '{"step": "forged"}' WHERE seq = 3""")

    report = ledger.verify_chain()

    assert not report.ok
    assert report.first_broken_seq == 3
    assert "recomputed" in report.problem


def test_tamper_edited_timestamp(ledger: Ledger, chain_of_five: OperationRow, pg_url: str) -> None:
    tamper(pg_url, "UPDATE events SET recorded_at = recorded_at - interval '1 hour' WHERE seq = 2")

    report = ledger.verify_chain()

    assert not report.ok
    assert report.first_broken_seq == 2


def test_tamper_rehashed_event(ledger: Ledger, chain_of_five: OperationRow, pg_url: str) -> None:
    original = ledger.list_events()[2]
    forged = ChainLink(**{**original.model_dump(), "details": {"step": "forged"}})
    tamper(
        pg_url,
        f"""UPDATE events SET details = '{{"step": "forged"}}', hash = '{compute_hash(original.prev_hash, forged)}'
        WHERE seq = 3""",
    )

    report = ledger.verify_chain()

    assert not report.ok
    assert report.first_broken_seq == 4
    assert "prev_hash" in report.problem


def test_tamper_deleted_event(ledger: Ledger, chain_of_five: OperationRow, pg_url: str) -> None:
    tamper(pg_url, "DELETE FROM events WHERE seq = 2")

    report = ledger.verify_chain()

    assert not report.ok
    assert report.first_broken_seq == 2
    assert "missing" in report.problem


def test_tamper_deleted_last_event(ledger: Ledger, chain_of_five: OperationRow, pg_url: str) -> None:
    tamper(pg_url, "DELETE FROM events WHERE seq = 5")

    report = ledger.verify_chain()

    assert not report.ok
    assert report.first_broken_seq == 5
    assert "ledger_head" in report.problem


def test_tamper_reordered_events(ledger: Ledger, chain_of_five: OperationRow, pg_url: str) -> None:
    tamper(
        pg_url,
        "UPDATE events SET seq = -1 WHERE seq = 2",
        "UPDATE events SET seq = 2 WHERE seq = 3",
        "UPDATE events SET seq = 3 WHERE seq = -1",
    )

    report = ledger.verify_chain()

    assert not report.ok
    assert report.first_broken_seq == 2


def test_tamper_swapped_contents(ledger: Ledger, chain_of_five: OperationRow, pg_url: str) -> None:
    tamper(
        pg_url,
        """UPDATE events SET step = CASE seq WHEN 2 THEN 'patch' ELSE 'validate' END,
                            details = CASE seq WHEN 2 THEN '{"step": "patch"}'::jsonb
                                               ELSE '{"step": "validate"}'::jsonb END
           WHERE seq IN (2, 3)""",
    )

    report = ledger.verify_chain()

    assert not report.ok
    assert report.first_broken_seq == 2


def test_anchor_catches_rewritten_chain(ledger: Ledger, chain_of_five: OperationRow, pg_url: str) -> None:
    anchor = ledger.verify_chain()
    events = ledger.list_events()

    # Rewrite seq 4 and every hash after it, and the head, as someone with full write access could.
    prev_hash = events[2].hash
    statements = []
    for original in events[3:]:
        details = {"step": "forged"} if original.seq == 4 else original.details
        forged = ChainLink(**{**original.model_dump(), "details": details, "prev_hash": prev_hash})
        forged_hash = compute_hash(prev_hash, forged)
        statements.append(
            f"UPDATE events SET details = '{canonical_json(details)}', prev_hash = '{prev_hash}', "
            f"hash = '{forged_hash}' WHERE seq = {original.seq}"
        )
        prev_hash = forged_hash
    statements.append(f"UPDATE ledger_head SET last_hash = '{prev_hash}'")
    tamper(pg_url, *statements)

    unanchored = ledger.verify_chain()
    anchored = ledger.verify_chain(anchors={anchor.last_seq: anchor.last_hash})

    assert unanchored.ok
    assert not anchored.ok
    assert anchored.first_broken_seq == 5


def test_anchor_beyond_chain(ledger: Ledger, chain_of_five: OperationRow) -> None:
    report = ledger.verify_chain(anchors={9: "f" * 64})

    assert not report.ok
    assert report.first_broken_seq == 6


def test_tamper_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    upgrade(url)
    ledger = Ledger(url)
    operation, _ = ledger.open_operation(request_fields("req-sqlite"), "k-open")
    ledger.append_event(operation.operation_id, "validate", "succeeded", {"verdicts": []}, "k-validate")
    engine = sa.create_engine(url)

    with pytest.raises(sa.exc.DBAPIError), engine.begin() as connection:
        connection.execute(sa.text("UPDATE events SET outcome = 'failed' WHERE seq = 2"))
    with engine.begin() as connection:
        connection.execute(sa.text("DROP TRIGGER events_no_update"))
        connection.execute(sa.text("UPDATE events SET outcome = 'failed' WHERE seq = 2"))
    engine.dispose()

    report = ledger.verify_chain()
    ledger.close()
    assert not report.ok
    assert report.first_broken_seq == 2


def test_concurrent_appends(ledger: Ledger) -> None:
    operation, _ = ledger.open_operation(request_fields("req-busy"), "k-open")

    def append(index: int) -> EventRow:
        return ledger.append_event(operation.operation_id, "migrate", "retried", {"attempt": index}, f"k-{index}")

    appended = run_threads(THREADS, append)

    report = ledger.verify_chain()
    events = ledger.list_events()
    assert report.ok
    assert report.events == THREADS + 1
    assert sorted(event.seq for event in appended) == list(range(2, THREADS + 2))
    assert [event.seq for event in events] == list(range(1, THREADS + 2))
    assert ledger.get_operation(operation.operation_id).last_seq == THREADS + 1


def test_concurrent_appends_many_operations(ledger: Ledger) -> None:
    operations = [ledger.open_operation(request_fields(f"req-{index}"), f"k-open-{index}")[0] for index in range(4)]

    def append(index: int) -> EventRow:
        operation = operations[index % len(operations)]
        return ledger.append_event(operation.operation_id, "patch", "started", {"thread": index}, f"k-{index}")

    run_threads(THREADS, append)

    rebuilt = sorted(ledger.rebuild_projection(), key=lambda row: row.operation_id)
    stored = sorted(ledger.list_operations(), key=lambda row: row.operation_id)
    assert ledger.verify_chain().ok
    assert rebuilt == stored


def test_concurrent_replays_write_once(ledger: Ledger, pg_url: str) -> None:
    operation, _ = ledger.open_operation(request_fields("req-retry"), "k-open")

    def append(index: int) -> EventRow:
        return ledger.append_event(operation.operation_id, "verify", "succeeded", {"thread": index}, "k-verify")

    appended = run_threads(THREADS, append)

    assert len({event.seq for event in appended}) == 1
    assert len(ledger.list_events()) == 2


def test_concurrent_opens_create_once(ledger: Ledger) -> None:
    def open_request(index: int) -> tuple[OperationRow, bool]:
        return ledger.open_operation(request_fields("req-same"), f"k-open-{index}")

    opened = run_threads(THREADS, open_request)

    assert sum(created for _, created in opened) == 1
    assert len({operation.operation_id for operation, _ in opened}) == 1
    assert len(ledger.list_events()) == 1


def test_concurrent_appends_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    upgrade(url)
    ledger = Ledger(url)
    operation, _ = ledger.open_operation(request_fields("req-sqlite"), "k-open")

    def append(index: int) -> EventRow:
        return ledger.append_event(operation.operation_id, "migrate", "retried", {"attempt": index}, f"k-{index}")

    run_threads(THREADS, append)

    report = ledger.verify_chain()
    ledger.close()
    assert report.ok
    assert report.events == THREADS + 1
