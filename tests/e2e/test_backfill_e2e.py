"""MAC backfill of a VM without MACs in its spec: stopped, and refused when another VM owns a MAC."""

from __future__ import annotations

import pytest

from nicflow.kube import KubeVirtClient
from nicflow.ledger import Ledger
from nicflow.models import HotplugRequest, Mode, OperationStatus
from nicflow.patches import template_interfaces
from tests.e2e.conftest import run_operation, vm_action, wait_until

pytestmark = pytest.mark.e2e


def legacy_hotplug(**overrides) -> HotplugRequest:
    fields = {"vm": "default/db-legacy", "network": "default/vlan200", "interface": "nic-2", "actor": "e2e", "reason": "backfill"}
    return HotplugRequest(**{**fields, **overrides})


async def test_stop_lets_harvester_backfill(client, settings, worker, kube: KubeVirtClient, ledger: Ledger):
    # Harvester writes the observed MACs into the spec while the VMI is deleted, so after a stop
    # nicflow finds nothing to backfill.
    await vm_action(kube, "db-legacy", "stop")
    await wait_until(lambda: kube.get_vmi("default", "db-legacy") is None, "db-legacy has no VMI")

    result = await run_operation(client, settings, legacy_hotplug())

    assert result.status == OperationStatus.SUCCEEDED, result.message
    assert result.mode == Mode.COLD
    interfaces = template_interfaces(kube.get_vm("default", "db-legacy"))
    assert [i.get("macAddress") for i in interfaces] == ["02:11:22:33:44:01", "02:11:22:33:44:02", result.mac]
    backfill = [e.outcome for e in ledger.list_events(result.operation_id) if e.step == "backfill"]
    assert backfill == ["skipped"]


async def test_stopped_vm_backfill_without_restart(client, settings, worker, kube: KubeVirtClient, ledger: Ledger):
    # A stopped VM whose MACs are known only from Harvester's annotation, as after an upgrade.
    vm = kube.get_vm("default", "db-legacy")
    stopped = {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {
            "name": "db-stopped",
            "namespace": "default",
            "labels": dict(vm["metadata"]["labels"]),
            "annotations": {"harvesterhci.io/mac-address": '{"default":"02:11:22:33:55:01","nic-vlan100":"02:11:22:33:55:02"}'},
        },
        "spec": {**vm["spec"], "runStrategy": "Halted"},
    }
    kube.custom.create_namespaced_custom_object("kubevirt.io", "v1", "default", "virtualmachines", stopped)
    assert [i.get("macAddress") for i in template_interfaces(kube.get_vm("default", "db-stopped"))] == [None, None]

    result = await run_operation(client, settings, legacy_hotplug(vm="default/db-stopped"))

    assert result.status == OperationStatus.SUCCEEDED, result.message
    assert result.mode == Mode.COLD
    interfaces = template_interfaces(kube.get_vm("default", "db-stopped"))
    assert [i.get("macAddress") for i in interfaces] == ["02:11:22:33:55:01", "02:11:22:33:55:02", result.mac]
    backfill = [e.outcome for e in ledger.list_events(result.operation_id) if e.step == "backfill"]
    assert backfill == ["macs-written", "succeeded"]
    assert kube.get_vmi("default", "db-stopped") is None
    assert kube.list_migrations("default", "db-stopped") == []


async def test_backfill_refuses_mac_of_other_vm(client, settings, worker, kube: KubeVirtClient, ledger: Ledger):
    # web-01's VLAN interface takes the MAC db-legacy's nic-vlan100 runs with, as a VM created
    # from a template of another VM can.
    web01 = kube.get_vm("default", "web-01")
    interfaces = template_interfaces(web01)
    index = next(i for i, interface in enumerate(interfaces) if interface["name"] == "nic-vlan100")
    kube.patch_vm("default", "web-01", [
        {"op": "replace", "path": "/metadata/resourceVersion", "value": web01["metadata"]["resourceVersion"]},
        {"op": "replace", "path": f"/spec/template/spec/domain/devices/interfaces/{index}/macAddress", "value": "02:11:22:33:44:02"},
    ])
    before = kube.get_vm("default", "db-legacy")

    result = await run_operation(client, settings, legacy_hotplug(allow_restart=True))

    assert result.status == OperationStatus.REJECTED
    assert result.reason_code == "MAC_IN_USE"
    assert "02:11:22:33:44:02" in result.message
    assert "default/web-01" in result.message
    after = kube.get_vm("default", "db-legacy")
    assert after["spec"] == before["spec"]
    assert ledger.get_operation(result.operation_id).reason_code == "MAC_IN_USE"
