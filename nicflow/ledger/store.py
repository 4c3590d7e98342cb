"""The ledger store: operations, their hash-chained events and MAC reservations.

Every method runs in its own transaction and returns detached pydantic rows, so a Temporal
activity can call it from a worker thread and retry it.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from nicflow.ledger.chain import ChainLink, compute_hash, normalize_details, verify_links
from nicflow.ledger.errors import LedgerConflictError, OperationNotFoundError, SchemaNotUpgradedError
from nicflow.ledger.models import HEAD_ROW_ID, Event, LedgerHead, MacReservation, Operation
from nicflow.ledger.projection import REQUEST_STEP, RESULT_STEP, apply_event
from nicflow.ledger.rows import (
    TERMINAL_STATUSES,
    ChainReport,
    EventRow,
    MacReservationRow,
    OperationRequest,
    OperationRow,
    normalize_mac,
)
from nicflow.ledger.schema import check_schema, display_url, normalize_url

logger = logging.getLogger(__name__)

OPERATION_COLUMNS = tuple(column.key for column in Operation.__table__.columns)
ALL_STATUSES = frozenset({"running"}) | TERMINAL_STATUSES
MAX_NAME_LENGTH = 64
"""Maximum length of a step or outcome name, the width of their columns."""

POOL_SIZE = 10
POOL_MAX_OVERFLOW = 20
# NOTE: a temporalio 1.x worker runs up to 100 activities at a time by default, more than
# these 30 PostgreSQL connections. Extra calls wait up to 30 s (SQLAlchemy's pool_timeout)
# and then fail with a retryable TimeoutError. Each transaction is short, so the wait stays short.

SQLITE_BUSY_TIMEOUT_SECONDS = 30.0
"""How long an SQLite connection waits for another writer before failing with 'database is locked'."""


def new_operation_id() -> str:
    """Return a fresh operation id such as `op-7f3a9c2e41d0` (48 random bits)."""
    return f"op-{secrets.token_hex(6)}"


def create_ledger_engine(url: str) -> Engine:
    """Create the engine for a ledger URL, with SQLite set up for concurrent writers.

    SQLite transactions start with BEGIN IMMEDIATE, so two writers queue on the database lock
    instead of both reading the chain head and one failing at its first write.
    """
    parsed = normalize_url(url)

    if parsed.get_backend_name() != "sqlite":
        return create_engine(parsed, pool_pre_ping=True, pool_size=POOL_SIZE, max_overflow=POOL_MAX_OVERFLOW)

    if parsed.database in (None, "", ":memory:"):
        raise ValueError(
            f"invalid ledger URL {display_url(parsed)}: SQLite needs a file, such as sqlite:///nicflow.db, "
            "because an in-memory database is private to one connection"
        )
    engine = create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS})

    @event.listens_for(engine, "connect")
    def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event issue BEGIN instead of the sqlite3 module.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _now() -> datetime:
    return datetime.now(UTC)


def _check_name(kind: str, value: str) -> None:
    if not value or len(value) > MAX_NAME_LENGTH:
        raise ValueError(f"invalid {kind} {value!r}: expected 1 to {MAX_NAME_LENGTH} characters")


def _check_key(idempotency_key: str) -> None:
    if not idempotency_key:
        raise ValueError("invalid idempotency key: it must not be empty")


def _operation_dict(operation: Operation) -> dict[str, Any]:
    return {name: getattr(operation, name) for name in OPERATION_COLUMNS}


class Ledger:
    """The audit ledger of NIC operations, on PostgreSQL or (for the embedded demo) SQLite.

    Raises SchemaNotUpgradedError at construction when the database is not at the newest
    Alembic revision; `upgrade(url)` or `nicflow db upgrade` fixes that.
    """

    def __init__(self, url: str):
        self.url = display_url(url)
        self._engine = create_ledger_engine(url)
        self._sessions = sessionmaker(self._engine, expire_on_commit=False)
        check_schema(self._engine)

    def close(self) -> None:
        """Close the pooled connections; the ledger opens new ones if used again."""
        self._engine.dispose()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # Operations and events

    def open_operation(self, fields: dict[str, Any], idempotency_key: str) -> tuple[OperationRow, bool]:
        """Create an operation with its `request` event and return it with `created=True`.

        `fields` contains the columns of OperationRequest; `operation_id` is generated when absent.
        When the request_id or the idempotency key is already stored, returns the stored
        operation with `created=False` and writes nothing. Raises pydantic's ValidationError
        for invalid fields and LedgerConflictError when the key belongs to another event or
        the given operation_id is taken by another request.
        """
        request = OperationRequest.model_validate(fields)
        operation_id = request.operation_id or new_operation_id()
        request = request.model_copy(update={"operation_id": operation_id})
        _check_key(idempotency_key)

        with self._sessions.begin() as session:
            head = self._lock_head(session)

            stored_event = self._event_by_key(session, idempotency_key)
            if stored_event is not None:
                self._check_replay(stored_event, stored_event.operation_id, REQUEST_STEP, "started")
                operation = session.get_one(Operation, stored_event.operation_id)
                if operation.request_id != request.request_id:
                    raise LedgerConflictError(
                        f"idempotency key {idempotency_key} opened operation {operation.operation_id} "
                        f"for request {operation.request_id}, not {request.request_id}: use one key per request"
                    )
                logger.info(
                    "replayed opening of operation %s: idempotency key %s is already stored",
                    operation.operation_id,
                    idempotency_key,
                )
                return OperationRow.model_validate(operation), False

            existing = self._operation_by_request_id(session, request.request_id)
            if existing is not None:
                logger.info(
                    "replayed request %s: it already opened operation %s", request.request_id, existing.operation_id
                )
                return OperationRow.model_validate(existing), False

            if session.get(Operation, operation_id) is not None:
                raise LedgerConflictError(
                    f"operation id {operation_id} already belongs to another request; "
                    "omit operation_id to get a generated one"
                )

            details = request.model_dump(mode="json")
            operation, _event = self._append(
                session, head, None, operation_id, REQUEST_STEP, "started", details, idempotency_key
            )
            return OperationRow.model_validate(operation), True

    def append_event(
        self, operation_id: str, step: str, outcome: str, details: dict[str, Any], idempotency_key: str
    ) -> EventRow:
        """Append one event to an operation and apply it to the operation's row.

        `details` must be a JSON object; its `operation` key may set mac, cluster_network, network,
        mode, workflow_id or run_id on the row (see projection.UPDATABLE_FIELDS). Steps
        `request` and `result` belong to open_operation and finish_operation. When the
        idempotency key is stored, returns the stored event and writes nothing; raises
        LedgerConflictError if that event has another operation, step or outcome.
        """
        _check_name("step", step)
        _check_name("outcome", outcome)
        _check_key(idempotency_key)
        if step in (REQUEST_STEP, RESULT_STEP):
            raise ValueError(
                f"invalid step {step!r}: use open_operation for {REQUEST_STEP!r} and finish_operation for {RESULT_STEP!r}"
            )
        details = normalize_details(details)

        with self._sessions.begin() as session:
            head = self._lock_head(session)

            stored_event = self._event_by_key(session, idempotency_key)
            if stored_event is not None:
                self._check_replay(stored_event, operation_id, step, outcome)
                logger.info(
                    "replayed %s/%s of operation %s: idempotency key %s is already stored as seq %s",
                    step,
                    outcome,
                    operation_id,
                    idempotency_key,
                    stored_event.seq,
                )
                return EventRow.model_validate(stored_event)

            operation = self._operation_for_update(session, operation_id)
            _operation, appended = self._append(
                session, head, operation, operation_id, step, outcome, details, idempotency_key
            )
            return EventRow.model_validate(appended)

    def finish_operation(
        self,
        operation_id: str,
        status: str,
        reason_code: str | None,
        message: str,
        details: dict[str, Any],
        idempotency_key: str,
    ) -> OperationRow:
        """Append the `result` event (outcome = status) and return the finished operation.

        The event's details are `details` plus status, reason_code and message. When the
        idempotency key is stored, returns the operation as stored and writes nothing. Raises
        ValueError for a status that is not terminal and ProjectionError (a
        LedgerConflictError) when the operation already has a result.
        """
        if status not in TERMINAL_STATUSES:
            raise ValueError(f"invalid status {status!r}: expected one of {', '.join(sorted(TERMINAL_STATUSES))}")
        _check_key(idempotency_key)
        result_details = normalize_details(
            {**details, "status": status, "reason_code": reason_code, "message": message}
        )

        with self._sessions.begin() as session:
            head = self._lock_head(session)

            stored_event = self._event_by_key(session, idempotency_key)
            if stored_event is not None:
                self._check_replay(stored_event, operation_id, RESULT_STEP, status)
                logger.info(
                    "replayed result %s of operation %s: idempotency key %s is already stored",
                    status,
                    operation_id,
                    idempotency_key,
                )
                return OperationRow.model_validate(session.get_one(Operation, operation_id))

            operation = self._operation_for_update(session, operation_id)
            finished, _event = self._append(
                session, head, operation, operation_id, RESULT_STEP, status, result_details, idempotency_key
            )
            return OperationRow.model_validate(finished)

    def get_operation(self, operation_id: str) -> OperationRow | None:
        """Return the operation, or None when no operation has that id."""
        with self._sessions() as session:
            operation = session.get(Operation, operation_id)
            return None if operation is None else OperationRow.model_validate(operation)

    def find_by_request_id(self, request_id: str) -> OperationRow | None:
        """Return the operation opened for `request_id`, or None."""
        with self._sessions() as session:
            operation = self._operation_by_request_id(session, request_id)
            return None if operation is None else OperationRow.model_validate(operation)

    def list_operations(self, *, limit: int = 50, vm: str | None = None, status: str | None = None) -> list[OperationRow]:
        """Return the newest operations first, at most `limit` of them.

        `vm` is `namespace/name`, or a bare name that matches VMs of that name in any
        namespace; `status` is one of running, succeeded, rejected, failed, undone, cancelled.
        """
        if limit < 1:
            raise ValueError(f"invalid limit {limit}: expected a positive number of operations")
        if status is not None and status not in ALL_STATUSES:
            raise ValueError(f"invalid status {status!r}: expected one of {', '.join(sorted(ALL_STATUSES))}")

        query = select(Operation)
        if vm is not None:
            namespace, slash, name = vm.rpartition("/")
            query = query.where(Operation.vm_name == name)
            if slash:
                query = query.where(Operation.vm_namespace == namespace)
        if status is not None:
            query = query.where(Operation.status == status)
        query = query.order_by(Operation.created_at.desc(), Operation.last_seq.desc()).limit(limit)

        with self._sessions() as session:
            return [OperationRow.model_validate(operation) for operation in session.scalars(query)]

    def list_events(self, operation_id: str | None = None) -> list[EventRow]:
        """Return the events of one operation, or of all operations, in seq order."""
        query = select(Event).order_by(Event.seq)
        if operation_id is not None:
            query = query.where(Event.operation_id == operation_id)
        with self._sessions() as session:
            return [EventRow.model_validate(stored) for stored in session.scalars(query)]

    # Chain and projection

    def verify_chain(self, *, anchors: Mapping[int, str] | None = None) -> ChainReport:
        """Recompute the whole hash chain and report the first event where it breaks.

        `anchors` maps seqs to hashes recorded outside the database, such as `last_seq` and
        `last_hash` of an earlier report; without them a rewrite of an event and of every
        hash after it goes unnoticed. Reads one consistent snapshot, so appends running
        meanwhile do not break the check.
        """
        with self._snapshot() as session:
            head = session.get_one(LedgerHead, HEAD_ROW_ID)
            report = verify_links(self._links(session), head.last_seq, head.last_hash, anchors)

        if report.ok:
            logger.info("ledger chain verified: %s events", report.events)
        else:
            logger.warning("ledger chain broken at seq %s: %s", report.first_broken_seq, report.problem)
        return report

    def rebuild_projection(self) -> list[OperationRow]:
        """Replay every event through apply_event and return the operation rows it gives.

        The rows come in the order the operations were opened. The stored rows are not
        changed, so comparing the two shows whether the `operations` table is still a
        faithful projection of the events. Raises ProjectionError for an event that cannot
        apply.
        """
        rows: dict[str, dict[str, Any]] = {}
        with self._snapshot() as session:
            for stored in session.scalars(select(Event).order_by(Event.seq).execution_options(yield_per=1000)):
                rows[stored.operation_id] = apply_event(rows.get(stored.operation_id), stored)
        return [OperationRow.model_validate(row) for row in rows.values()]

    # MAC reservations

    def reserve_mac(self, cluster_network: str, mac: str, operation_id: str) -> bool:
        """Reserve `mac` on `cluster_network` for an operation and return whether it owns the reservation.

        Returns False when another operation has an active reservation of that MAC on that
        cluster network, and True (writing nothing) when this operation already has it.
        The partial unique index decides races between concurrent callers. An empty
        `cluster_network` is one more network, shared by NADs without a cluster network
        label. Raises OperationNotFoundError for an unknown operation and ValueError for an
        invalid MAC.
        """
        mac = normalize_mac(mac)

        try:
            with self._sessions.begin() as session:
                if session.get(Operation, operation_id) is None:
                    raise OperationNotFoundError(f"operation {operation_id} not found")
                holder = self._active_holder(session, cluster_network, mac)
                if holder is None:
                    session.add(
                        MacReservation(
                            cluster_network=cluster_network,
                            mac=mac,
                            operation_id=operation_id,
                            active=True,
                            created_at=_now(),
                        )
                    )
                    session.flush()
        except IntegrityError as error:
            # Another transaction reserved the MAC between our check and our insert.
            logger.debug(
                "MAC %s on %s was reserved concurrently with operation %s: %s",
                mac,
                cluster_network,
                operation_id,
                error.orig,
            )
            with self._sessions() as session:
                holder = self._active_holder(session, cluster_network, mac)
            return self._report_reservation(cluster_network, mac, operation_id, holder)

        if holder is None:
            logger.debug("reserved MAC %s on %s for operation %s", mac, cluster_network, operation_id)
            return True
        return self._report_reservation(cluster_network, mac, operation_id, holder)

    def release_macs(self, operation_id: str) -> int:
        """Release every active reservation of an operation and return how many it released."""
        statement = (
            update(MacReservation)
            .where(MacReservation.operation_id == operation_id, MacReservation.active)
            .values(active=False, released_at=_now())
        )
        with self._sessions.begin() as session:
            released = session.execute(statement).rowcount
        logger.info("released %s MAC reservations of operation %s", released, operation_id)
        return released

    def release_mac(self, cluster_network: str, mac: str) -> bool:
        """Release the active reservation of `mac` on `cluster_network`, whichever operation holds it.

        Use it when an unplug frees the MAC that an earlier hot-plug reserved. Returns False
        when no active reservation exists.
        """
        mac = normalize_mac(mac)
        statement = (
            update(MacReservation)
            .where(
                MacReservation.cluster_network == cluster_network,
                MacReservation.mac == mac,
                MacReservation.active,
            )
            .values(active=False, released_at=_now())
        )
        with self._sessions.begin() as session:
            released = session.execute(statement).rowcount
        logger.info("released MAC %s on %s: %s reservation(s)", mac, cluster_network, released)
        return released > 0

    def active_reservations(self, cluster_network: str | None = None) -> list[MacReservationRow]:
        """Return the active reservations, of one cluster network or of all, oldest first."""
        query = select(MacReservation).where(MacReservation.active).order_by(MacReservation.id)
        if cluster_network is not None:
            query = query.where(MacReservation.cluster_network == cluster_network)
        with self._sessions() as session:
            return [MacReservationRow.model_validate(row) for row in session.scalars(query)]

    # Helpers

    def _lock_head(self, session: Session) -> LedgerHead:
        """Lock the chain head; every append holds it until commit, so seqs and hashes follow commit order."""
        head = session.scalars(
            select(LedgerHead).where(LedgerHead.id == HEAD_ROW_ID).with_for_update()
        ).one_or_none()
        if head is None:
            raise SchemaNotUpgradedError(
                f"ledger database {self.url} has no ledger_head row: run `nicflow db upgrade` on an empty database"
            )
        return head

    def _append(
        self,
        session: Session,
        head: LedgerHead,
        operation: Operation | None,
        operation_id: str,
        step: str,
        outcome: str,
        details: dict[str, Any],
        idempotency_key: str,
    ) -> tuple[Operation, Event]:
        """Write one event after the locked head and apply it to the operation's row."""
        link = ChainLink(
            seq=head.last_seq + 1,
            operation_id=operation_id,
            step=step,
            outcome=outcome,
            details=details,
            idempotency_key=idempotency_key,
            recorded_at=_now(),
            prev_hash=head.last_hash,
        )
        link_hash = compute_hash(head.last_hash, link)

        # Apply before writing, so an event that does not fit the row writes nothing.
        row = apply_event(None if operation is None else _operation_dict(operation), link)
        if operation is None:
            operation = Operation(**row)
            session.add(operation)
            session.flush()
        else:
            for name, value in row.items():
                setattr(operation, name, value)

        stored = Event(
            seq=link.seq,
            operation_id=operation_id,
            step=step,
            outcome=outcome,
            details=details,
            idempotency_key=idempotency_key,
            recorded_at=link.recorded_at,
            prev_hash=link.prev_hash,
            hash=link_hash,
        )
        session.add(stored)
        head.last_seq = link.seq
        head.last_hash = link_hash
        session.flush()

        logger.debug("appended seq %s %s/%s to operation %s", link.seq, step, outcome, operation_id)
        return operation, stored

    @staticmethod
    def _event_by_key(session: Session, idempotency_key: str) -> Event | None:
        return session.scalars(select(Event).where(Event.idempotency_key == idempotency_key)).one_or_none()

    @staticmethod
    def _operation_by_request_id(session: Session, request_id: str) -> Operation | None:
        return session.scalars(select(Operation).where(Operation.request_id == request_id)).one_or_none()

    @staticmethod
    def _operation_for_update(session: Session, operation_id: str) -> Operation:
        operation = session.get(Operation, operation_id)
        if operation is None:
            raise OperationNotFoundError(f"operation {operation_id} not found")
        return operation

    @staticmethod
    def _check_replay(stored: Event, operation_id: str, step: str, outcome: str) -> None:
        if (stored.operation_id, stored.step, stored.outcome) != (operation_id, step, outcome):
            raise LedgerConflictError(
                f"idempotency key {stored.idempotency_key} is stored as seq {stored.seq} "
                f"({stored.operation_id} {stored.step}/{stored.outcome}), "
                f"not {operation_id} {step}/{outcome}: derive keys from the operation, step and outcome"
            )

    @staticmethod
    def _active_holder(session: Session, cluster_network: str, mac: str) -> str | None:
        query = select(MacReservation.operation_id).where(
            MacReservation.cluster_network == cluster_network,
            MacReservation.mac == mac,
            MacReservation.active,
        )
        return session.scalars(query).one_or_none()

    @staticmethod
    def _report_reservation(cluster_network: str, mac: str, operation_id: str, holder: str | None) -> bool:
        if holder == operation_id:
            logger.info("replayed reservation of MAC %s on %s for operation %s", mac, cluster_network, operation_id)
            return True
        logger.info(
            "MAC %s on %s not reserved for operation %s: operation %s has reserved it",
            mac,
            cluster_network,
            operation_id,
            holder,
        )
        return False

    @contextmanager
    def _snapshot(self) -> Iterator[Session]:
        """Open a read-only session that reads one consistent state of all tables."""
        if self._engine.dialect.name != "postgresql":
            # SQLite transactions hold the database lock from BEGIN IMMEDIATE to the end.
            with self._sessions() as session:
                yield session
            return

        options = {"isolation_level": "REPEATABLE READ", "postgresql_readonly": True}
        with self._engine.connect().execution_options(**options) as connection:
            with Session(bind=connection) as session:
                yield session

    def _links(self, session: Session) -> Iterator[ChainLink]:
        query = select(Event).order_by(Event.seq).execution_options(yield_per=1000)
        for stored in session.scalars(query):
            yield ChainLink(
                seq=stored.seq,
                operation_id=stored.operation_id,
                step=stored.step,
                outcome=stored.outcome,
                details=stored.details,
                idempotency_key=stored.idempotency_key,
                recorded_at=stored.recorded_at,
                prev_hash=stored.prev_hash,
                hash=stored.hash,
            )
