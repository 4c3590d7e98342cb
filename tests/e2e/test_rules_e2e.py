"""Rules that need more than the bundled cluster: many VMs, extra networks, MAC backfill, plan."""

from __future__ import annotations

import asyncio
import copy
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from kubevirt_sim import Simulator
from nicflow.devstack import BUNDLED_MANIFESTS
from nicflow.kube import KubeVirtClient
from nicflow.ledger import Ledger
from nicflow.models import HotplugRequest, OperationStatus
from nicflow.patches import template_interfaces
from tests.e2e.conftest import SPEED, run_operation

pytestmark = pytest.mark.e2e

FLEET_SIZE = 25


def fleet_manifests(folder: Path, count: int) -> Path:
    """Write `count` copies of web-01 (VM and VMI), each with its own name, uid and MACs."""
    documents = list(yaml.safe_load_all((BUNDLED_MANIFESTS / "vm-web-01.yaml").read_text()))
    output = []
    for index in range(count):
        name = f"fleet-{index:02d}"
        for original in documents:
            document = copy.deepcopy(original)
            document["metadata"]["name"] = name
            document["metadata"]["uid"] = f"00000000-0000-4000-8000-{index:04d}{'1' if document['kind'] == 'VirtualMachine' else '2'}0000000"
            document["metadata"].get("annotations", {}).pop("harvesterhci.io/mac-address", None)
            if document["kind"] == "VirtualMachine":
                interfaces = template_interfaces(document)
                document["spec"]["template"]["metadata"]["labels"]["harvesterhci.io/vmName"] = name
            else:
                interfaces = document["spec"]["domain"]["devices"]["interfaces"]
                document["metadata"]["ownerReferences"][0]["name"] = name
                document["metadata"]["ownerReferences"][0]["uid"] = f"00000000-0000-4000-8000-{index:04d}10000000"
                for position, entry in enumerate(document["status"]["interfaces"]):
                    entry["mac"] = f"02:fe:00:00:{index:02x}:{position:02x}"
            for position, interface in enumerate(interfaces):
                interface["macAddress"] = f"02:fe:00:00:{index:02x}:{position:02x}"
            output.append(document)
    path = folder / "fleet.yaml"
    path.write_text(yaml.safe_dump_all(output))
    return path


@pytest.fixture
def sim(tmp_path: Path, kubevirt_schema_path: Path) -> Iterator[Simulator]:
    manifests = [BUNDLED_MANIFESTS, fleet_manifests(tmp_path, FLEET_SIZE)]
    simulator = Simulator(manifests, migration_seconds=20.0, speed=SPEED, schema_path=kubevirt_schema_path)
    simulator.start()
    try:
        yield simulator
    finally:
        simulator.stop()


async def test_concurrent_hotplugs_get_distinct_macs(client, settings, worker, kube: KubeVirtClient, ledger: Ledger):
    in_use_before = {
        interface["macAddress"] for vm in kube.list_vms() for interface in template_interfaces(vm) if interface.get("macAddress")
    }
    requests = [
        HotplugRequest(vm=f"default/fleet-{index:02d}", network="default/vlan200", interface="nic-2", actor="e2e", reason="fleet")
        for index in range(FLEET_SIZE)
    ]

    results = await asyncio.gather(*(run_operation(client, settings, request) for request in requests))

    assert [result.status for result in results] == [OperationStatus.SUCCEEDED] * FLEET_SIZE
    macs = [result.mac for result in results]
    assert len(set(macs)) == FLEET_SIZE
    assert set(macs).isdisjoint(in_use_before)
    for result in results:
        namespace, name = result.vm.split("/")
        interface = next(i for i in template_interfaces(kube.get_vm(namespace, name)) if i["name"] == "nic-2")
        assert interface["macAddress"] == result.mac
    assert ledger.active_reservations() == []


async def test_network_on_source_node_only_rejected(client, settings, worker, kube: KubeVirtClient):
    kube.core.patch_node("node-1", {"metadata": {"labels": {"network.harvesterhci.io/edge": "true"}}})
    nad = {
        "apiVersion": "k8s.cni.cncf.io/v1",
        "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": "edge10", "namespace": "default", "labels": {
            "network.harvesterhci.io/type": "L2VlanNetwork", "network.harvesterhci.io/clusternetwork": "edge",
            "network.harvesterhci.io/vlan-id": "10", "network.harvesterhci.io/ready": "true"}},
        "spec": {"config": '{"cniVersion":"0.3.1","name":"edge10","type":"bridge","bridge":"edge-br","vlan":10,"ipam":{}}'},
    }
    kube.custom.create_namespaced_custom_object("k8s.cni.cncf.io", "v1", "default", "network-attachment-definitions", nad)
    before = kube.get_vm("default", "web-01")

    result = await run_operation(client, settings, HotplugRequest(
        vm="default/web-01", network="default/edge10", interface="nic-2", actor="e2e", reason="edge"))

    assert result.status == OperationStatus.REJECTED
    assert result.reason_code == "NO_MIGRATION_TARGET"
    assert "edge" in result.message
    assert kube.get_vm("default", "web-01")["spec"] == before["spec"]


def plan(sim_kubeconfig: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nicflow.cli", "plan", *args, "--kubeconfig", str(sim_kubeconfig), "--context", "kubevirt-sim"],
        capture_output=True, text=True, timeout=60,
    )


def test_plan_explains_missing_macs(sim: Simulator, tmp_path: Path):
    kubeconfig = sim.write_kubeconfig(tmp_path / "kubeconfig")

    output = plan(kubeconfig, "hotplug", "--vm", "default/db-legacy", "--network", "default/vlan200", "--interface", "nic-2")

    assert output.returncode == 1
    assert "MAC_MISSING_IN_SPEC" in output.stdout
    assert "--allow-restart" in output.stdout
    assert "default, nic-vlan100" in output.stdout


def test_plan_prints_patch_and_changes_nothing(sim: Simulator, tmp_path: Path, kube: KubeVirtClient):
    kubeconfig = sim.write_kubeconfig(tmp_path / "kubeconfig")
    before = kube.get_vm("default", "web-01")

    output = plan(kubeconfig, "hotplug", "--vm", "default/web-01", "--network", "default/vlan200", "--interface", "nic-2",
                  "--mac", "02:AA:00:00:00:01", "-o", "json")

    assert output.returncode == 0, output.stdout + output.stderr
    planned = yaml.safe_load(output.stdout)
    assert planned["allowed"] is True
    assert all(verdict["passed"] for verdict in planned["verdicts"])
    assert {"op": "add", "path": "/spec/template/spec/domain/devices/interfaces/-",
            "value": {"name": "nic-2", "model": "virtio", "bridge": {}, "macAddress": "02:aa:00:00:00:01"}} in planned["patch"]
    assert kube.get_vm("default", "web-01")["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]


async def test_allow_restart_backfills_db_legacy(client, settings, worker, kube: KubeVirtClient, ledger: Ledger):
    old_vmi_uid = kube.get_vmi("default", "db-legacy")["metadata"]["uid"]

    result = await run_operation(client, settings, HotplugRequest(
        vm="default/db-legacy", network="default/vlan200", interface="nic-2", actor="e2e", reason="legacy",
        allow_restart=True))

    assert result.status == OperationStatus.SUCCEEDED, result.message
    interfaces = template_interfaces(kube.get_vm("default", "db-legacy"))
    assert [i["name"] for i in interfaces] == ["default", "nic-vlan100", "nic-2"]
    assert all(i.get("macAddress") for i in interfaces)
    assert interfaces[0]["macAddress"] == "02:11:22:33:44:01"
    assert interfaces[1]["macAddress"] == "02:11:22:33:44:02"
    assert kube.get_vmi("default", "db-legacy")["metadata"]["uid"] != old_vmi_uid
    backfill = [e for e in ledger.list_events(result.operation_id) if e.step == "backfill"]
    assert [e.outcome for e in backfill] == ["macs-written", "restart-requested", "running-ready", "succeeded"]
    assert backfill[-1].details["restarted"] is True
