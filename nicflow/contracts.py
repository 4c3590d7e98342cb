"""Inputs and outputs of the activities: one pydantic model in and one out for each."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from nicflow.models import Mode, OperationKind, OperationResult, OperationStatus, Outcome, Step


class OperationRef(BaseModel):
    """The operation's identity and request, as every cluster step receives it."""

    operation_id: str
    kind: OperationKind
    vm_namespace: str
    vm_name: str
    interface: str
    network: str | None = None
    mac: str | None = None
    allow_restart: bool = False


class OpenOperationInput(BaseModel):
    fields: dict[str, Any]


class OpenOperationResult(BaseModel):
    created: bool
    operation_id: str
    status: OperationStatus
    previous_result: OperationResult | None = None


class RecordStepInput(BaseModel):
    operation_id: str
    sequence: int
    step: Step
    outcome: Outcome
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class FinishOperationInput(BaseModel):
    result: OperationResult


class Verdict(BaseModel):
    rule: str
    passed: bool
    reason: str | None = None
    message: str


class ValidateResult(BaseModel):
    rejected: bool
    reason_code: str | None = None
    message: str
    verdicts: list[Verdict] = Field(default_factory=list)
    mode: Mode = Mode.LIVE
    mac: str | None = None
    mac_generated: bool = False
    cluster_network: str | None = None
    missing_macs: list[str] = Field(default_factory=list)
    vmi_uid: str | None = None
    # The interface and network entries as they were before an unplug, so an undo can restore them.
    interface_spec: dict[str, Any] | None = None
    network_spec: dict[str, Any] | None = None


class StepResult(BaseModel):
    """The outcome of a cluster step, as the workflow records it."""

    outcome: Outcome
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class BackfillInput(BaseModel):
    ref: OperationRef
    missing_macs: list[str]


class MigrateInput(BaseModel):
    ref: OperationRef
    attempt: int = 1


class MigrateResult(BaseModel):
    migration_name: str
    phase: str
    adopted: bool = False
    created_by: str = "nicflow"
    source_node: str | None = None
    target_node: str | None = None
    phases: list[dict[str, str]] = Field(default_factory=list)
    failure_reason: str | None = None
    vm_still_on_source: bool = True
    migratable: bool = True


class VerifyInput(BaseModel):
    ref: OperationRef
    timeout_seconds: float


class VerifyResult(BaseModel):
    verified: bool
    message: str
    guest_interface_name: str | None = None
    info_source: str | None = None
    warning: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)


class UndoInput(BaseModel):
    ref: OperationRef
    interface_spec: dict[str, Any] | None = None
    network_spec: dict[str, Any] | None = None
    failure: str
