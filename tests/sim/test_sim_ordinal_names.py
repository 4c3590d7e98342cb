"""A VMI whose launcher pod names secondary interfaces net1, net2, ... ignores `state: absent`.

KubeVirt 0.59 and older named the pod interfaces of secondary networks by ordinal; KubeVirt 1.6
skips the unplug of such an interface, so the unplug never progresses until a restart.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import kubernetes
import pytest
import yaml

from kubevirt_sim import Simulator
from tests.conftest import HARVESTER_FIXTURES
from tests.sim.test_ctrl_faults import wait_sim_seconds
from tests.sim.test_ctrl_hotplug import GROUP, NAMESPACE, VERSION, Cluster, wait_for


def legacy_manifest(folder: Path) -> Path:
    """Write a copy of web-01, named legacy-01, whose VMI reports nic-vlan100 on pod interface net1."""
    documents = list(yaml.safe_load_all((HARVESTER_FIXTURES / "vm-web-01.yaml").read_text()))
    output = []
    for original in documents:
        document = copy.deepcopy(original)
        document["metadata"]["name"] = "legacy-01"
        document["metadata"]["uid"] = document["metadata"]["uid"][:-4] + "0e10"
        document["metadata"]["annotations"].pop("harvesterhci.io/mac-address", None)
        if document["kind"] == "VirtualMachineInstance":
            document["metadata"]["ownerReferences"][0]["name"] = "legacy-01"
            document["metadata"]["ownerReferences"][0]["uid"] = output[0]["metadata"]["uid"]
            entry = next(item for item in document["status"]["interfaces"] if item["name"] == "nic-vlan100")
            entry["podInterfaceName"] = "net1"
        interfaces = (document["spec"]["template"]["spec"] if document["kind"] == "VirtualMachine" else document["spec"])["domain"]["devices"]["interfaces"]
        for position, interface in enumerate(interfaces):
            interface["macAddress"] = f"02:0e:10:00:00:{position:02x}"
        if document["kind"] == "VirtualMachineInstance":
            for position, entry in enumerate(document["status"]["interfaces"]):
                entry["mac"] = f"02:0e:10:00:00:{position:02x}"
        output.append(document)
    path = folder / "legacy-01.yaml"
    path.write_text(yaml.safe_dump_all(output))
    return path


@pytest.fixture
def legacy(tmp_path: Path) -> Iterator[Cluster]:
    simulator = Simulator([HARVESTER_FIXTURES, legacy_manifest(tmp_path)], speed=200, migration_seconds=20)
    simulator.start()
    client = kubernetes.config.new_client_from_config(config_file=str(simulator.write_kubeconfig(tmp_path / "kubeconfig")))
    try:
        yield Cluster(simulator, kubernetes.client.CustomObjectsApi(client), kubernetes.client.CoreV1Api(client))
    finally:
        client.close()
        simulator.stop()


def vmi_interface(cluster: Cluster, name: str) -> dict:
    vmi = cluster.get("virtualmachineinstances", "legacy-01")
    return next(item for item in vmi["spec"]["domain"]["devices"]["interfaces"] if item["name"] == name)


def status_entry(cluster: Cluster, name: str) -> dict | None:
    vmi = cluster.get("virtualmachineinstances", "legacy-01")
    return next((item for item in vmi["status"].get("interfaces", []) if item.get("name") == name), None)


def test_ordinal_pod_name_ignores_absent(legacy: Cluster):
    wait_for(lambda: status_entry(legacy, "nic-vlan100") is not None, "the loaded status entry")
    vm = legacy.get("virtualmachines", "legacy-01")
    legacy.custom.patch_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, "virtualmachines", "legacy-01",
        [{"op": "replace", "path": "/metadata/resourceVersion", "value": vm["metadata"]["resourceVersion"]},
         {"op": "add", "path": "/spec/template/spec/domain/devices/interfaces/1/state", "value": "absent"}],
        _content_type="application/json-patch+json",
    )

    wait_sim_seconds(legacy, 60)

    assert "state" not in vmi_interface(legacy, "nic-vlan100")
    assert "domain" in status_entry(legacy, "nic-vlan100")["infoSource"]
    spec = legacy.get("virtualmachines", "legacy-01")["spec"]["template"]["spec"]
    assert spec["domain"]["devices"]["interfaces"][1]["state"] == "absent"
    assert [item["metadata"]["name"] for item in legacy.list("virtualmachineinstancemigrations")] == []
