"""Cold changes end to end: on a stopped VM nicflow writes the VM spec and runs no migration."""

from __future__ import annotations


import pytest

from nicflow.kube import KubeVirtClient
from nicflow.ledger import Ledger
from nicflow.models import HotplugRequest, Mode, OperationStatus, UnplugRequest
from nicflow.patches import find_interface, find_network, status_interface, template_interfaces
from tests.e2e.conftest import run_operation, vm_action, wait_until

pytestmark = pytest.mark.e2e




async def stop_web_01(kube: KubeVirtClient) -> None:
    await vm_action(kube, "web-01", "stop")
    await wait_until(lambda: kube.get_vmi("default", "web-01") is None, "the VMI of web-01 is gone")
    await wait_until(
        lambda: kube.get_vm("default", "web-01").get("status", {}).get("printableStatus") == "Stopped",
        "web-01 is Stopped",
    )


def event_steps(ledger: Ledger, operation_id: str) -> list[tuple[str, str]]:
    return [(event.step, event.outcome) for event in ledger.list_events(operation_id)]


COLD_STEPS = [
    ("request", "started"),
    ("validate", "succeeded"),
    ("backfill", "skipped"),
    ("patch", "succeeded"),
    ("result", "succeeded"),
]


async def test_cold_hotplug_writes_spec(client, settings, worker, kube: KubeVirtClient, ledger: Ledger):
    await stop_web_01(kube)
    request = HotplugRequest(vm="default/web-01", network="default/vlan200", interface="nic-2", actor="e2e", reason="cold")

    result = await run_operation(client, settings, request)

    assert result.status == OperationStatus.SUCCEEDED, result.message
    assert result.mode == Mode.COLD
    assert "appears at the next start" in result.message
    assert result.mac is not None
    assert kube.list_migrations("default", "web-01") == []
    assert kube.get_vmi("default", "web-01") is None

    vm = kube.get_vm("default", "web-01")
    _, interface = find_interface(vm, "nic-2")
    assert interface == {"name": "nic-2", "model": "virtio", "bridge": {}, "macAddress": result.mac}
    _, network = find_network(vm, "nic-2")
    assert network == {"name": "nic-2", "multus": {"networkName": "default/vlan200"}}

    row = ledger.get_operation(result.operation_id)
    assert row.status == "succeeded"
    assert row.mode == "cold"
    assert row.mac == result.mac
    assert event_steps(ledger, result.operation_id) == COLD_STEPS
    assert ledger.active_reservations() == []


async def test_cold_hotplug_appears_at_start(client, settings, worker, kube: KubeVirtClient):
    await stop_web_01(kube)
    request = HotplugRequest(vm="default/web-01", network="default/vlan200", interface="nic-2", actor="e2e", reason="cold")
    result = await run_operation(client, settings, request)
    assert result.status == OperationStatus.SUCCEEDED, result.message

    await vm_action(kube, "web-01", "start")

    def booted_entry() -> dict | None:
        vmi = kube.get_vmi("default", "web-01")
        if vmi is None or vmi.get("status", {}).get("phase") != "Running":
            return None
        return status_interface(vmi, "nic-2")

    entry = await wait_until(booted_entry, "web-01 runs again and reports nic-2")
    assert entry["mac"] == result.mac
    assert kube.list_migrations("default", "web-01") == []


async def test_cold_unplug_removes_interface(client, settings, worker, kube: KubeVirtClient, ledger: Ledger):
    await stop_web_01(kube)
    request = UnplugRequest(vm="default/web-01", interface="nic-vlan100", actor="e2e", reason="cold")

    result = await run_operation(client, settings, request)

    assert result.status == OperationStatus.SUCCEEDED, result.message
    assert result.mode == Mode.COLD
    assert "is removed by KubeVirt at once" in result.message
    assert kube.list_migrations("default", "web-01") == []

    # nicflow marks the interface absent, and KubeVirt's VM controller drops absent interfaces
    # of a stopped VM from its spec.
    await wait_until(
        lambda: find_interface(kube.get_vm("default", "web-01"), "nic-vlan100") is None,
        "KubeVirt removes nic-vlan100 from the spec of web-01",
    )
    vm = kube.get_vm("default", "web-01")
    assert [interface["name"] for interface in template_interfaces(vm)] == ["default"]
    assert find_network(vm, "nic-vlan100") is None

    row = ledger.get_operation(result.operation_id)
    assert row.status == "succeeded"
    assert row.mode == "cold"
    assert event_steps(ledger, result.operation_id) == COLD_STEPS
