"""Create the ledger: operations, events, ledger_head and mac_reservations.

Revision ID: 0001
Revises:
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

GENESIS_HASH = "0" * 64

# Events are append-only. The triggers reject UPDATE and DELETE (and TRUNCATE on PostgreSQL)
# so that a mistake cannot rewrite history; the hash chain is what detects a deliberate edit
# by someone who disables them.
POSTGRESQL_APPEND_ONLY = [
    """
    CREATE FUNCTION ledger_reject_event_change() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'events are append-only: % on events rejected', TG_OP;
    END
    $$
    """,
    """
    CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION ledger_reject_event_change()
    """,
    """
    CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_reject_event_change()
    """,
]
SQLITE_APPEND_ONLY = [
    """
    CREATE TRIGGER events_no_update BEFORE UPDATE ON events
    BEGIN SELECT RAISE(ABORT, 'events are append-only: UPDATE on events rejected'); END
    """,
    """
    CREATE TRIGGER events_no_delete BEFORE DELETE ON events
    BEGIN SELECT RAISE(ABORT, 'events are append-only: DELETE on events rejected'); END
    """,
]
APPEND_ONLY_TRIGGERS = {"postgresql": POSTGRESQL_APPEND_ONLY, "sqlite": SQLITE_APPEND_ONLY}


def upgrade() -> None:
    timestamp = sa.DateTime(timezone=True)
    details = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

    op.create_table(
        "operations",
        sa.Column("operation_id", sa.Text(), primary_key=True),
        sa.Column("request_id", sa.Text(), nullable=False, unique=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("vm_namespace", sa.Text(), nullable=False),
        sa.Column("vm_name", sa.Text(), nullable=False),
        sa.Column("network", sa.Text(), nullable=True),
        sa.Column("interface", sa.Text(), nullable=False),
        sa.Column("mac", sa.String(17), nullable=True),
        sa.Column("cluster_network", sa.Text(), nullable=True),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("workflow_id", sa.Text(), nullable=True),
        sa.Column("run_id", sa.Text(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason_code", sa.Text(), nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("created_at", timestamp, nullable=False),
        sa.Column("updated_at", timestamp, nullable=False),
        sa.Column("finished_at", timestamp, nullable=True),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_operations_vm", "operations", ["vm_namespace", "vm_name"])
    op.create_index("ix_operations_status", "operations", ["status"])
    op.create_index("ix_operations_created_at", "operations", ["created_at"])

    op.create_table(
        "events",
        sa.Column("seq", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("operation_id", sa.Text(), sa.ForeignKey("operations.operation_id"), nullable=False),
        sa.Column("step", sa.String(64), nullable=False),
        sa.Column("outcome", sa.String(64), nullable=False),
        sa.Column("details", details, nullable=False),
        sa.Column("idempotency_key", sa.Text(), nullable=False, unique=True),
        sa.Column("recorded_at", timestamp, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_index("ix_events_operation_id", "events", ["operation_id"])

    head = op.create_table(
        "ledger_head",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.Column("last_hash", sa.String(64), nullable=False),
    )
    op.bulk_insert(head, [{"id": 1, "last_seq": 0, "last_hash": GENESIS_HASH}])

    op.create_table(
        "mac_reservations",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("cluster_network", sa.Text(), nullable=False),
        sa.Column("mac", sa.String(17), nullable=False),
        sa.Column("operation_id", sa.Text(), sa.ForeignKey("operations.operation_id"), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", timestamp, nullable=False),
        sa.Column("released_at", timestamp, nullable=True),
    )
    op.create_index(
        "uq_mac_reservations_active",
        "mac_reservations",
        ["cluster_network", "mac"],
        unique=True,
        postgresql_where=sa.text("active"),
        sqlite_where=sa.text("active"),
    )
    op.create_index("ix_mac_reservations_operation_id", "mac_reservations", ["operation_id"])

    dialect = op.get_bind().dialect.name
    for statement in APPEND_ONLY_TRIGGERS.get(dialect, []):
        op.execute(statement)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS events_no_truncate ON events")
        op.execute("DROP TRIGGER IF EXISTS events_append_only ON events")
        op.execute("DROP FUNCTION IF EXISTS ledger_reject_event_change()")
    elif dialect == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS events_no_update")
        op.execute("DROP TRIGGER IF EXISTS events_no_delete")

    op.drop_table("mac_reservations")
    op.drop_table("ledger_head")
    op.drop_table("events")
    op.drop_table("operations")
