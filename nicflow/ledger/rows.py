"""Rows the ledger returns: immutable pydantic models detached from any database session."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

OperationKind = Literal["hotplug", "unplug"]
OperationMode = Literal["live", "cold", "plan"]
OperationStatus = Literal["running", "succeeded", "rejected", "failed", "undone", "cancelled"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"succeeded", "rejected", "failed", "undone", "cancelled"})

MAC_PATTERN = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")


def normalize_mac(mac: str) -> str:
    """Return `mac` in lower case, raising ValueError unless it reads like `02:00:00:aa:bb:cc`.

    Reservations compare MACs as text, so every MAC goes through here before it is stored.
    """
    normalized = mac.strip().lower()
    if not MAC_PATTERN.fullmatch(normalized):
        raise ValueError(f"invalid MAC {mac!r}: expected six colon-separated hex octets such as 02:00:00:aa:bb:cc")
    return normalized


class OperationRow(BaseModel):
    """One operation as stored in (or rebuilt for) the `operations` table."""

    model_config = ConfigDict(frozen=True, from_attributes=True)

    operation_id: str
    request_id: str
    kind: OperationKind
    actor: str
    reason: str
    vm_namespace: str
    vm_name: str
    network: str | None
    interface: str
    mac: str | None
    cluster_network: str | None
    mode: OperationMode
    workflow_id: str | None
    run_id: str | None
    status: OperationStatus
    reason_code: str | None
    message: str
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    last_seq: int


class EventRow(BaseModel):
    """One event of the chain; `hash` covers every field except `prev_hash` and itself."""

    model_config = ConfigDict(frozen=True, from_attributes=True)

    seq: int
    operation_id: str
    step: str
    outcome: str
    details: dict[str, Any]
    idempotency_key: str
    recorded_at: datetime
    prev_hash: str
    hash: str


class MacReservationRow(BaseModel):
    """One MAC reservation; `released_at` is set when `active` turns false."""

    model_config = ConfigDict(frozen=True, from_attributes=True)

    id: int
    cluster_network: str
    mac: str
    operation_id: str
    active: bool
    created_at: datetime
    released_at: datetime | None


class ChainReport(BaseModel):
    """The result of `Ledger.verify_chain()`.

    `first_broken_seq` is the seq where verification first failed (for a deleted event, the
    missing seq) and `problem` states why. Both are None when `ok` is true. Only then are
    `last_seq` and `last_hash` set, which an auditor can keep outside the database as an
    anchor for later checks.
    """

    model_config = ConfigDict(frozen=True)

    ok: bool
    events: int = Field(description="number of events read")
    first_broken_seq: int | None = None
    problem: str | None = None
    last_seq: int | None = None
    last_hash: str | None = None


class OperationRequest(BaseModel):
    """The fields a caller passes to `Ledger.open_operation()`.

    `operation_id` is generated (`op-` and 12 hex digits) when missing.
    """

    model_config = ConfigDict(extra="forbid")

    operation_id: str | None = Field(default=None, min_length=1)
    request_id: str = Field(min_length=1)
    kind: OperationKind
    actor: str = Field(min_length=1)
    reason: str = ""
    vm_namespace: str = Field(min_length=1)
    vm_name: str = Field(min_length=1)
    network: str | None = None
    interface: str = Field(min_length=1)
    mac: str | None = None
    cluster_network: str | None = None
    mode: OperationMode
    workflow_id: str | None = None
    run_id: str | None = None

    @field_validator("network")
    @classmethod
    def check_network(cls, network: str | None) -> str | None:
        if network is None:
            return None
        namespace, _, name = network.partition("/")
        if not namespace or not name or "/" in name:
            raise ValueError(f"invalid network {network!r}: expected the NAD as namespace/name")
        return network

    @field_validator("mac")
    @classmethod
    def check_mac(cls, mac: str | None) -> str | None:
        if mac is None:
            return None
        return normalize_mac(mac)
