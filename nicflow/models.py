"""Pydantic models that cross process boundaries: requests, step reports and results.

Workflows, activities and the CLI exchange only these, through Temporal's pydantic data
converter, so every field must stay JSON-serialisable and backwards compatible: add fields with
defaults, never rename one.
"""

from __future__ import annotations

import re
import uuid
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field, field_validator

# A Kubernetes object name (RFC 1123 subdomain) and an interface name as KubeVirt accepts it.
_OBJECT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
INTERFACE_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


class OperationKind(StrEnum):
    HOTPLUG = "hotplug"
    UNPLUG = "unplug"


class OperationStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    REJECTED = "rejected"
    FAILED = "failed"
    UNDONE = "undone"
    CANCELLED = "cancelled"


class Mode(StrEnum):
    LIVE = "live"
    COLD = "cold"


class Step(StrEnum):
    REQUEST = "request"
    VALIDATE = "validate"
    BACKFILL = "backfill"
    PATCH = "patch"
    MIGRATE = "migrate"
    VERIFY = "verify"
    UNDO = "undo"
    RESULT = "result"


class Outcome(StrEnum):
    STARTED = "started"
    SUCCEEDED = "succeeded"
    SKIPPED = "skipped"
    REJECTED = "rejected"
    FAILED = "failed"
    RETRIED = "retried"
    UNDONE = "undone"


def parse_namespaced_name(value: str, what: str) -> tuple[str, str]:
    """Split `ns/name`, raising ValueError with a message that names the value and the fix."""
    parts = value.split("/")
    if len(parts) != 2 or not all(_OBJECT_NAME.match(part) for part in parts):
        raise ValueError(
            f"invalid {what} {value!r}: expected NAMESPACE/NAME in lower-case letters, digits, "
            f"'-' and '.', for example default/web-01"
        )
    return parts[0], parts[1]


def new_operation_id() -> str:
    return f"op-{uuid.uuid4().hex[:12]}"


def workflow_id_for(vm: str) -> str:
    """Return the workflow id of a VM, so that one operation at a time runs per VM."""
    namespace, name = parse_namespaced_name(vm, "VM")
    return f"nic/{namespace}/{name}"


class NicRequest(BaseModel):
    """Fields shared by hot-plug and unplug requests."""

    vm: str = Field(description="VM as NAMESPACE/NAME")
    interface: str
    reason: str = Field(min_length=1, description="Why the change is made, or a ticket id")
    actor: str = Field(min_length=1, description="Who asked for the change")
    request_id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    operation_id: str = Field(default_factory=new_operation_id)
    allow_restart: bool = False
    # How long verification waits for the interface to show in the guest once migrated.
    verify_timeout_seconds: float = Field(default=300.0, gt=0)

    @field_validator("vm")
    @classmethod
    def _check_vm(cls, value: str) -> str:
        parse_namespaced_name(value, "VM")
        return value

    @field_validator("interface")
    @classmethod
    def _check_interface(cls, value: str) -> str:
        if not INTERFACE_NAME.match(value):
            raise ValueError(
                f"invalid interface name {value!r}: use letters, digits, '-' or '_', "
                f"for example nic-2"
            )
        return value

    @property
    def vm_namespace(self) -> str:
        return parse_namespaced_name(self.vm, "VM")[0]

    @property
    def vm_name(self) -> str:
        return parse_namespaced_name(self.vm, "VM")[1]


class HotplugRequest(NicRequest):
    network: str = Field(description="NetworkAttachmentDefinition as NAMESPACE/NAME")
    mac: str | None = None

    @field_validator("network")
    @classmethod
    def _check_network(cls, value: str) -> str:
        parse_namespaced_name(value, "network")
        return value


class UnplugRequest(NicRequest):
    pass


class StepReport(BaseModel):
    """One finished step of an operation, as the CLI prints it and the ledger records it."""

    step: Step
    outcome: Outcome
    message: str
    duration_seconds: float = 0.0
    details: dict[str, Any] = Field(default_factory=dict)


class OperationResult(BaseModel):
    operation_id: str
    request_id: str
    kind: OperationKind
    vm: str
    interface: str
    network: str | None = None
    mac: str | None = None
    mode: Mode = Mode.LIVE
    status: OperationStatus
    reason_code: str | None = None
    message: str
    guest_interface_name: str | None = None
    warnings: list[str] = Field(default_factory=list)
    steps: list[StepReport] = Field(default_factory=list)
    replayed: bool = False


class Progress(BaseModel):
    """Progress of a running operation, as its workflow query returns it."""

    operation_id: str
    request_id: str
    kind: OperationKind
    vm: str
    interface: str
    status: OperationStatus
    current_step: Step | None = None
    steps: list[StepReport] = Field(default_factory=list)
    result: OperationResult | None = None


class QueuedRequest(BaseModel):
    """A request waiting in a VM's queue: exactly one of the two fields is set."""

    hotplug: HotplugRequest | None = None
    unplug: UnplugRequest | None = None

    @classmethod
    def of(cls, request: NicRequest) -> "QueuedRequest":
        if isinstance(request, HotplugRequest):
            return cls(hotplug=request)
        return cls(unplug=request)

    def request(self) -> NicRequest:
        found = self.hotplug or self.unplug
        if found is None:
            raise ValueError("a queued request carries neither a hot-plug nor an unplug")
        return found

    def workflow_name(self) -> str:
        return "HotplugNic" if self.hotplug is not None else "UnplugNic"


class QueueState(BaseModel):
    """Operations of a VM's queue: waiting, running and finished."""

    pending: list[str] = Field(default_factory=list)
    current: str | None = None
    # False while the current request waits for an operation started outside the queue.
    current_started: bool = False
    results: dict[str, OperationResult] = Field(default_factory=dict)


def queue_workflow_id_for(vm: str) -> str:
    namespace, name = parse_namespaced_name(vm, "VM")
    return f"nic-queue/{namespace}/{name}"
