"""nicflow's audit ledger: operations, their hash-chained events and MAC reservations.

The schema comes from the Alembic revisions in `migrations/`. Call `upgrade(url)` (what
`nicflow db upgrade` runs) before constructing a `Ledger`:

    upgrade("postgresql+psycopg://nicflow@db/nicflow")
    with Ledger("postgresql+psycopg://nicflow@db/nicflow") as ledger:
        operation, created = ledger.open_operation(fields, idempotency_key=f"{request_id}:request")
        ledger.append_event(operation.operation_id, "validate", "succeeded",
                            {"operation": {"mac": "02:00:00:aa:bb:cc"}}, idempotency_key="...")
        ledger.finish_operation(operation.operation_id, "succeeded", None, "done", {}, idempotency_key="...")
        assert ledger.verify_chain().ok
"""

from nicflow.ledger.errors import (
    LedgerConflictError,
    LedgerError,
    OperationNotFoundError,
    ProjectionError,
    SchemaNotUpgradedError,
)
from nicflow.ledger.projection import UPDATABLE_FIELDS, apply_event
from nicflow.ledger.rows import (
    TERMINAL_STATUSES,
    ChainReport,
    EventRow,
    MacReservationRow,
    OperationRequest,
    OperationRow,
    normalize_mac,
)
from nicflow.ledger.schema import head_revision, upgrade
from nicflow.ledger.store import Ledger, new_operation_id

__all__ = [
    "TERMINAL_STATUSES",
    "UPDATABLE_FIELDS",
    "ChainReport",
    "EventRow",
    "Ledger",
    "LedgerConflictError",
    "LedgerError",
    "MacReservationRow",
    "OperationNotFoundError",
    "OperationRequest",
    "OperationRow",
    "ProjectionError",
    "SchemaNotUpgradedError",
    "apply_event",
    "head_revision",
    "new_operation_id",
    "normalize_mac",
    "upgrade",
]
