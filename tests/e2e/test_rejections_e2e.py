"""Every rejection the rules know, end to end: the VM stays as it was and the ledger has the code."""

from __future__ import annotations

import pytest

from nicflow.kube import KubeVirtClient
from nicflow.ledger import Ledger
from nicflow.models import HotplugRequest, OperationStatus, UnplugRequest
from tests.e2e.conftest import run_operation

pytestmark = pytest.mark.e2e


def hotplug(vm="default/web-01", network="default/vlan200", interface="nic-2", mac=None) -> HotplugRequest:
    return HotplugRequest(vm=vm, network=network, interface=interface, mac=mac, actor="e2e", reason="rejection test")


def unplug(vm="default/web-01", interface="nic-vlan100") -> UnplugRequest:
    return UnplugRequest(vm=vm, interface=interface, actor="e2e", reason="rejection test")


REJECTIONS = [
    pytest.param(hotplug(vm="default/rke2-pool1-abcde"), "GUEST_CLUSTER_NODE", id="guest-cluster-node-hotplug"),
    pytest.param(unplug(vm="default/rke2-pool1-abcde"), "GUEST_CLUSTER_NODE", id="guest-cluster-node-unplug"),
    pytest.param(hotplug(vm="default/db-legacy"), "MAC_MISSING_IN_SPEC", id="mac-missing"),
    pytest.param(hotplug(network="default/overlay1"), "NAD_NOT_BRIDGE", id="overlay-network"),
    pytest.param(hotplug(network="harvester-system/storagenetwork-x7k2p"), "NAD_SYSTEM_NAMESPACE", id="storage-network"),
    pytest.param(hotplug(network="default/missing"), "NAD_NOT_FOUND", id="nad-missing"),
    pytest.param(hotplug(vm="default/nobody"), "VM_NOT_FOUND", id="vm-missing"),
    pytest.param(hotplug(interface="nic-vlan100"), "INTERFACE_NAME_TAKEN", id="interface-taken"),
    pytest.param(hotplug(mac="03:00:00:00:00:01"), "MAC_NOT_UNICAST", id="mac-multicast"),
    pytest.param(hotplug(mac="06:b2:19:c4:55:e1"), "MAC_IN_USE", id="mac-in-use"),
    pytest.param(hotplug(mac="not-a-mac"), "MAC_INVALID", id="mac-invalid"),
    pytest.param(unplug(interface="nic-9"), "INTERFACE_NOT_FOUND", id="unplug-missing-interface"),
    pytest.param(unplug(interface="default"), "INTERFACE_NOT_BRIDGE", id="unplug-masquerade"),
]


@pytest.mark.parametrize(("request_", "reason_code"), REJECTIONS)
async def test_rejection_changes_nothing(request_, reason_code, client, settings, worker, kube: KubeVirtClient, ledger: Ledger):
    namespace, name = request_.vm.split("/")
    before = kube.get_vm(namespace, name)

    result = await run_operation(client, settings, request_)

    assert result.status == OperationStatus.REJECTED
    assert result.reason_code == reason_code, result.message
    after = kube.get_vm(namespace, name)
    if before is not None:
        assert after["spec"] == before["spec"]
        assert after["metadata"]["generation"] == before["metadata"]["generation"]
    assert kube.list_migrations(namespace, name) == []
    row = ledger.get_operation(result.operation_id)
    assert row.status == "rejected"
    assert row.reason_code == reason_code
    assert ledger.active_reservations() == []
