"""SQLAlchemy models of the ledger tables.

The Alembic revisions in `migrations/versions` create these tables; the models only describe
them for queries and for `alembic revision --autogenerate`. Nothing calls `create_all`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

GENESIS_HASH = "0" * 64
"""The prev_hash of the first event: the chain starts from 64 zero hex digits."""

HEAD_ROW_ID = 1
"""The id of the single `ledger_head` row that appends lock."""


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back as a timezone-aware UTC datetime.

    SQLite keeps no time zone, so naive values read from it are UTC by construction.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the ledger stores timezone-aware UTC timestamps")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


JSONDocument = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    pass


class Operation(Base):
    """One NIC hot-plug or unplug request; a projection of its events."""

    __tablename__ = "operations"

    operation_id: Mapped[str] = mapped_column(Text, primary_key=True)
    request_id: Mapped[str] = mapped_column(Text, unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    vm_namespace: Mapped[str] = mapped_column(Text)
    vm_name: Mapped[str] = mapped_column(Text)
    network: Mapped[str | None] = mapped_column(Text)
    interface: Mapped[str] = mapped_column(Text)
    mac: Mapped[str | None] = mapped_column(String(17))
    cluster_network: Mapped[str | None] = mapped_column(Text)
    mode: Mapped[str] = mapped_column(String(16))
    workflow_id: Mapped[str | None] = mapped_column(Text)
    run_id: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    reason_code: Mapped[str | None] = mapped_column(Text)
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_seq: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        Index("ix_operations_vm", "vm_namespace", "vm_name"),
        Index("ix_operations_status", "status"),
        Index("ix_operations_created_at", "created_at"),
    )


class Event(Base):
    """One step transition of an operation, a link of the global hash chain."""

    __tablename__ = "events"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    operation_id: Mapped[str] = mapped_column(Text, ForeignKey("operations.operation_id"))
    step: Mapped[str] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(64))
    details: Mapped[dict[str, Any]] = mapped_column(JSONDocument)
    idempotency_key: Mapped[str] = mapped_column(Text, unique=True)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))

    __table_args__ = (Index("ix_events_operation_id", "operation_id"),)


class LedgerHead(Base):
    """The single row that records the end of the chain. Appends lock it, so they run one at a time."""

    __tablename__ = "ledger_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    last_seq: Mapped[int] = mapped_column(BigInteger)
    last_hash: Mapped[str] = mapped_column(String(64))


class MacReservation(Base):
    """A MAC held by an operation on one cluster network; unique per network while active."""

    __tablename__ = "mac_reservations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    cluster_network: Mapped[str] = mapped_column(Text)
    mac: Mapped[str] = mapped_column(String(17))
    operation_id: Mapped[str] = mapped_column(Text, ForeignKey("operations.operation_id"))
    active: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    released_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index(
            "uq_mac_reservations_active",
            "cluster_network",
            "mac",
            unique=True,
            postgresql_where=text("active"),
            sqlite_where=text("active"),
        ),
        Index("ix_mac_reservations_operation_id", "operation_id"),
    )
