"""`nicflow plan`: the verdict of every rule and the exact patches an operation would send, changing nothing."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from nicflow import patches, rules
from nicflow.clusterview import gather_view
from nicflow.kube import KubeVirtClient
from nicflow.macs import normalize_mac
from nicflow.models import Mode, OperationKind

# Stands in for the MAC that validate allocates when the request names none.
ALLOCATED_MAC = "<allocated at run time>"


class PlannedVerdict(BaseModel):
    rule: str
    passed: bool
    reason: str | None = None
    message: str


class Plan(BaseModel):
    kind: OperationKind
    vm: str
    interface: str
    network: str | None = None
    mac: str | None = None
    allowed: bool
    reason_code: str | None = None
    message: str
    mode: Mode | None = None
    verdicts: list[PlannedVerdict] = Field(default_factory=list)
    steps: list[str] = Field(default_factory=list)
    backfill_patch: list[dict[str, Any]] = Field(default_factory=list)
    patch: list[dict[str, Any]] = Field(default_factory=list)


def plan_operation(
    kube: KubeVirtClient,
    kind: OperationKind,
    vm: str,
    interface: str,
    network: str | None = None,
    mac: str | None = None,
    allow_restart: bool = False,
) -> Plan:
    """Apply the rules to the cluster as it is now and build the patches, without writing anything."""
    namespace, name = vm.split("/", 1)
    view = gather_view(kube, namespace, name, network)
    if kind == OperationKind.HOTPLUG:
        verdicts = rules.check_hotplug(view, interface=interface, network=network or "", mac=mac, allow_restart=allow_restart)
    else:
        verdicts = rules.check_unplug(view, interface=interface, allow_restart=allow_restart)

    plan = Plan(
        kind=kind,
        vm=vm,
        interface=interface,
        network=network,
        allowed=True,
        message="",
        verdicts=[
            PlannedVerdict(rule=v.rule, passed=v.passed, reason=str(v.reason) if v.reason else None, message=v.message)
            for v in verdicts
        ],
    )
    failure = rules.first_failure(verdicts)
    if failure is not None:
        plan.allowed = False
        plan.reason_code = str(failure.reason)
        plan.message = failure.message
        return plan

    assert view.vm is not None
    plan.mode = Mode.COLD if rules.is_cold(view) else Mode.LIVE
    missing = rules.missing_macs(view.vm)
    if missing:
        observed = rules.observed_macs(view.vmi, view.vm)
        plan.backfill_patch = patches.backfill_patch(view.vm, {n: observed[n] for n in missing if n in observed})
        restart = " and restart the VM" if view.vmi is not None else ""
        plan.steps.append(f"backfill: write the MACs of {', '.join(missing)} into the VM spec{restart}")
    else:
        plan.steps.append("backfill: skipped, every interface has a MAC")

    if kind == OperationKind.HOTPLUG:
        plan.mac = normalize_mac(mac) if mac else ALLOCATED_MAC
        plan.patch = patches.hotplug_patch(view.vm, interface, network or "", plan.mac)
        plan.steps.append(f"patch: add interface {interface} on {network} with MAC {plan.mac}")
    else:
        plan.mac = (patches.find_interface(view.vm, interface) or (0, {}))[1].get("macAddress")
        plan.patch = patches.mark_absent_patch(view.vm, interface)
        plan.steps.append(f"patch: set state absent on interface {interface}")

    if plan.mode == Mode.LIVE:
        plan.steps.append("migrate: wait for the VMI spec to show the change, then live-migrate the VM")
        plan.steps.append("verify: check the interface in vmi.status.interfaces")
    else:
        plan.steps.append("no migration: the VM is stopped, so the change takes effect at its next start")
    plan.message = f"{kind} would be carried out ({plan.mode} change)"
    return plan
