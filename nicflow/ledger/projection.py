"""The `operations` projection: how each event changes its operation's row.

`apply_event` is the only code that writes operation fields, both when an event is appended
and when `Ledger.rebuild_projection()` replays the chain, so the two cannot drift apart.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

from nicflow.ledger.errors import ProjectionError
from nicflow.ledger.rows import TERMINAL_STATUSES, OperationRequest, normalize_mac

REQUEST_STEP = "request"
RESULT_STEP = "result"

UPDATE_KEY = "operation"
"""Key of an event's details that may carry new values for UPDATABLE_FIELDS."""

UPDATABLE_FIELDS: frozenset[str] = frozenset({"mac", "cluster_network", "network", "mode", "workflow_id", "run_id"})
"""Operation fields that an event after `request` may set, such as the MAC allocated by validate."""

MODES: frozenset[str] = frozenset({"live", "cold", "plan"})


class EventLike(Protocol):
    @property
    def seq(self) -> int: ...

    @property
    def operation_id(self) -> str: ...

    @property
    def step(self) -> str: ...

    @property
    def outcome(self) -> str: ...

    @property
    def details(self) -> dict[str, Any]: ...

    @property
    def recorded_at(self) -> datetime: ...


def apply_event(row: dict[str, Any] | None, event: EventLike) -> dict[str, Any]:
    """Return the operation row after `event`; `row` is None before the first event.

    The `request` event carries every field of the operation in its details and creates the
    row. The `result` event sets status, reason_code, message and finished_at. Any later event may
    set the fields in UPDATABLE_FIELDS through `details["operation"]`. Every event moves
    updated_at and last_seq. The input row is not modified.

    Raises ProjectionError when the event does not fit the row: a first event that is not a
    `request`, a second `request`, a second `result`, or an invalid status or field.
    """
    if event.step == REQUEST_STEP:
        return _open_row(row, event)

    if row is None:
        raise ProjectionError(
            f"event seq {event.seq} ({event.step}/{event.outcome}) precedes the request event of {event.operation_id}"
        )

    updated = dict(row)
    updated.update(_field_updates(event))
    updated["updated_at"] = event.recorded_at
    updated["last_seq"] = event.seq

    if event.step == RESULT_STEP:
        _check_result(row, event)
        updated["status"] = event.details["status"]
        updated["reason_code"] = event.details.get("reason_code")
        updated["message"] = event.details.get("message", "")
        updated["finished_at"] = event.recorded_at

    return updated


def _open_row(row: dict[str, Any] | None, event: EventLike) -> dict[str, Any]:
    if row is not None:
        raise ProjectionError(f"event seq {event.seq} opens {event.operation_id} a second time")

    fields = OperationRequest.model_validate(event.details).model_dump()
    if fields["operation_id"] != event.operation_id:
        raise ProjectionError(
            f"event seq {event.seq} of {event.operation_id} carries operation_id {fields['operation_id']!r}"
        )

    fields.update(
        status="running",
        reason_code=None,
        message="",
        created_at=event.recorded_at,
        updated_at=event.recorded_at,
        finished_at=None,
        last_seq=event.seq,
    )
    return fields


def _field_updates(event: EventLike) -> dict[str, Any]:
    updates = event.details.get(UPDATE_KEY)
    if updates is None:
        return {}
    if not isinstance(updates, dict):
        raise ProjectionError(f"event seq {event.seq}: details[{UPDATE_KEY!r}] must be an object of field values")

    unknown = sorted(set(updates) - UPDATABLE_FIELDS)
    if unknown:
        raise ProjectionError(
            f"event seq {event.seq} sets {', '.join(unknown)}; only {', '.join(sorted(UPDATABLE_FIELDS))} may change"
        )

    result = dict(updates)
    if result.get("mac") is not None:
        result["mac"] = normalize_mac(result["mac"])
    if "mode" in result and result["mode"] not in MODES:
        raise ProjectionError(f"event seq {event.seq}: invalid mode {result['mode']!r}, expected one of cold, live, plan")
    return result


def _check_result(row: dict[str, Any], event: EventLike) -> None:
    if row["finished_at"] is not None:
        raise ProjectionError(
            f"event seq {event.seq}: {event.operation_id} already finished with status {row['status']}"
        )
    status = event.details.get("status")
    if status not in TERMINAL_STATUSES:
        raise ProjectionError(
            f"event seq {event.seq}: invalid result status {status!r}, expected one of {', '.join(sorted(TERMINAL_STATUSES))}"
        )
