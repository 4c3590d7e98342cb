"""Hot-plug and unplug end to end: Temporal dev server, the simulator over HTTP, PostgreSQL."""

from __future__ import annotations

import pytest

from nicflow.kube import KubeVirtClient
from nicflow.ledger import Ledger
from nicflow.models import HotplugRequest, OperationStatus, UnplugRequest
from nicflow.patches import find_interface, find_network, info_sources, status_interface, vmi_has_interface
from tests.e2e.conftest import run_operation

pytestmark = pytest.mark.e2e

MIGRATION_PHASES = ["Pending", "Scheduling", "Scheduled", "PreparingTarget", "TargetReady", "Running", "Succeeded"]


def hotplug_request(**overrides) -> HotplugRequest:
    fields = {"vm": "default/web-01", "network": "default/vlan200", "interface": "nic-2", "actor": "e2e", "reason": "test"}
    return HotplugRequest(**{**fields, **overrides})


def migration_of(ledger: Ledger, kube: KubeVirtClient, operation_id: str) -> dict:
    """Return the VMIM that the operation's migrate event names."""
    events = [e for e in ledger.list_events(operation_id) if e.step == "migrate" and e.outcome == "succeeded"]
    assert len(events) == 1
    name = events[0].details["migration_name"]
    assert name == f"nicflow-{operation_id}-1" or name.startswith("kubevirt-workload-update-")
    migration = kube.get_migration("default", name)
    assert migration is not None
    return migration


def event_steps(ledger: Ledger, operation_id: str) -> list[tuple[str, str]]:
    return [(event.step, event.outcome) for event in ledger.list_events(operation_id)]


async def test_hotplug_attaches_interface(client, settings, worker, kube: KubeVirtClient, ledger: Ledger):
    result = await run_operation(client, settings, hotplug_request())

    assert result.status == OperationStatus.SUCCEEDED, result.message
    mac = result.mac
    assert mac is not None

    # The patch step: the VM spec gained the interface and its fully qualified network.
    vm = kube.get_vm("default", "web-01")
    _, interface = find_interface(vm, "nic-2")
    assert interface == {"name": "nic-2", "model": "virtio", "bridge": {}, "macAddress": mac}
    _, network = find_network(vm, "nic-2")
    assert network == {"name": "nic-2", "multus": {"networkName": "default/vlan200"}}

    # The VM controller propagated it to the VMI spec.
    vmi = kube.get_vmi("default", "web-01")
    assert vmi_has_interface(vmi, "nic-2") is not None

    # The migrate step: the VMIM it ran (its own, or KubeVirt's automatic one it adopted) went
    # through every phase to Succeeded and moved the VM to the only other node with network data.
    migration = migration_of(ledger, kube, result.operation_id)
    assert migration["status"]["phase"] == "Succeeded"
    phases = [entry["phase"] for entry in migration["status"]["phaseTransitionTimestamps"]]
    assert phases == MIGRATION_PHASES
    assert len(kube.list_migrations("default", "web-01")) == 1
    assert vmi["status"]["nodeName"] == "node-2"

    # The guest has the interface: attached in the domain and reported by the guest agent.
    entry = status_interface(vmi, "nic-2")
    assert entry["mac"] == mac
    assert {"domain", "guest-agent", "multus-status"} <= info_sources(entry)
    assert entry["interfaceName"]
    assert result.guest_interface_name == entry["interfaceName"]

    # The ledger: one operation row and one event per step transition, in order.
    row = ledger.get_operation(result.operation_id)
    assert row.status == "succeeded"
    assert row.mac == mac
    assert row.network == "default/vlan200"
    assert event_steps(ledger, result.operation_id) == [
        ("request", "started"),
        ("validate", "succeeded"),
        ("backfill", "skipped"),
        ("patch", "succeeded"),
        ("migrate", "succeeded"),
        ("verify", "succeeded"),
        ("result", "succeeded"),
    ]
    assert ledger.verify_chain().ok


async def test_unplug_removes_interface(client, settings, worker, kube: KubeVirtClient, ledger: Ledger):
    request = UnplugRequest(vm="default/web-01", interface="nic-vlan100", actor="e2e", reason="test")

    result = await run_operation(client, settings, request)

    assert result.status == OperationStatus.SUCCEEDED, result.message
    vm = kube.get_vm("default", "web-01")
    assert find_interface(vm, "nic-vlan100") is None
    assert find_network(vm, "nic-vlan100") is None
    vmi = kube.get_vmi("default", "web-01")
    assert vmi_has_interface(vmi, "nic-vlan100") is None
    assert status_interface(vmi, "nic-vlan100") is None
    assert migration_of(ledger, kube, result.operation_id)["status"]["phase"] == "Succeeded"
    assert event_steps(ledger, result.operation_id) == [
        ("request", "started"),
        ("validate", "succeeded"),
        ("backfill", "skipped"),
        ("patch", "succeeded"),
        ("migrate", "succeeded"),
        ("verify", "succeeded"),
        ("result", "succeeded"),
    ]
    assert ledger.get_operation(result.operation_id).status == "succeeded"


async def test_hotplug_then_unplug_restores_spec(client, settings, worker, kube: KubeVirtClient):
    before = kube.get_vm("default", "web-01")["spec"]["template"]["spec"]

    plugged = await run_operation(client, settings, hotplug_request())
    unplugged = await run_operation(client, settings, UnplugRequest(vm="default/web-01", interface="nic-2", actor="e2e", reason="test"))

    assert plugged.status == OperationStatus.SUCCEEDED
    assert unplugged.status == OperationStatus.SUCCEEDED
    after = kube.get_vm("default", "web-01")["spec"]["template"]["spec"]
    assert after["domain"]["devices"]["interfaces"] == before["domain"]["devices"]["interfaces"]
    assert after["networks"] == before["networks"]


async def test_replayed_request_id_returns_first_result(client, settings, worker, kube: KubeVirtClient, ledger: Ledger):
    first = await run_operation(client, settings, hotplug_request(request_id="ticket-42"))
    vm_after_first = kube.get_vm("default", "web-01")

    again = await run_operation(client, settings, hotplug_request(request_id="ticket-42"))

    assert again.replayed
    assert again.operation_id == first.operation_id
    assert again.mac == first.mac
    vm_after_replay = kube.get_vm("default", "web-01")
    assert vm_after_replay["spec"] == vm_after_first["spec"]
    assert vm_after_replay["metadata"]["generation"] == vm_after_first["metadata"]["generation"]
    assert len(ledger.list_operations(vm="default/web-01")) == 1
