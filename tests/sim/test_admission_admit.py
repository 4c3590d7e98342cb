"""admit(): which webhooks run for which write, and the errors a client receives."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubevirt_sim.admission import DictReader, admit
from kubevirt_sim.errors import ApiError

HARVESTER_FIXTURES = Path(__file__).resolve().parents[2] / "nicflow" / "manifests"

PLURALS = {
    "VirtualMachine": "virtualmachines",
    "VirtualMachineInstance": "virtualmachineinstances",
    "NetworkAttachmentDefinition": "network-attachment-definitions",
    "Node": "nodes",
    "KubeVirt": "kubevirts",
}


@pytest.fixture
def cluster() -> DictReader:
    reader = DictReader()
    for path in sorted(HARVESTER_FIXTURES.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                reader.add(PLURALS[document["kind"]], document)
    return reader


def add_nic(vm: dict[str, Any], name: str, network_name: str, mac: str = "", **fields: Any) -> dict[str, Any]:
    """Return a copy of `vm` with a NIC appended the way Harvester's addNic appends it."""
    updated = copy.deepcopy(vm)
    template_spec = updated["spec"]["template"]["spec"]
    template_spec["domain"]["devices"]["interfaces"].append(
        {"name": name, "macAddress": mac, "model": "virtio", "bridge": {}, **fields}
    )
    template_spec["networks"].append({"name": name, "multus": {"networkName": network_name}})
    return updated


def update_vm(cluster: DictReader, new: dict[str, Any]) -> dict[str, Any]:
    old = cluster.try_get("virtualmachines", "default", new["metadata"]["name"])
    return admit(cluster, "UPDATE", "virtualmachines", "default", old, new, None, "client")


def denial(call: Any) -> ApiError:
    with pytest.raises(ApiError) as raised:
        call()
    return raised.value


def test_add_nic_gets_mac(cluster: DictReader) -> None:
    web = cluster.try_get("virtualmachines", "default", "web-01")
    stored = update_vm(cluster, add_nic(web, "nic-2", "default/trunk-200-299"))
    new_interface = stored["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"][-1]
    assert new_interface["name"] == "nic-2"
    assert new_interface["macAddress"] != ""
    assert int(new_interface["macAddress"][:2], 16) & 0x03 == 0x02


def test_add_nic_keeps_existing_macs(cluster: DictReader) -> None:
    web = cluster.try_get("virtualmachines", "default", "web-01")
    stored = update_vm(cluster, add_nic(web, "nic-2", "default/trunk-200-299"))
    macs = [interface["macAddress"] for interface in stored["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"][:2]]
    assert macs == ["02:3c:8e:41:7a:10", "06:b2:19:c4:55:e1"]


def test_add_nic_does_not_modify_argument(cluster: DictReader) -> None:
    web = cluster.try_get("virtualmachines", "default", "web-01")
    new = add_nic(web, "nic-2", "default/trunk-200-299")
    original = copy.deepcopy(new)
    update_vm(cluster, new)
    assert new == original


def test_invalid_vm_denied_422(cluster: DictReader) -> None:
    web = cluster.try_get("virtualmachines", "default", "web-01")
    error = denial(lambda: update_vm(cluster, add_nic(web, "nic.2", "default/vlan200", mac="0a:51:d7:30:9c")))
    assert error.code == 422
    assert error.reason == "Invalid"
    assert error.message == (
        'admission webhook "virtualmachine-validator.kubevirt.io" denied the request: '
        "Network interface name can only contain alphabetical characters, numbers, dashes (-) or underscores (_), "
        "interface spec.template.spec.domain.devices.interfaces[2].name has malformed MAC address (0a:51:d7:30:9c)."
    )
    assert error.details == {
        "causes": [
            {
                "reason": "FieldValueInvalid",
                "message": "Network interface name can only contain alphabetical characters, numbers, dashes (-) or underscores (_)",
                "field": "spec.template.spec.domain.devices.interfaces[2].name",
            },
            {
                "reason": "FieldValueInvalid",
                "message": "interface spec.template.spec.domain.devices.interfaces[2].name has malformed MAC address (0a:51:d7:30:9c).",
                "field": "spec.template.spec.domain.devices.interfaces[2].macAddress",
            },
        ]
    }


def test_absent_on_pod_network_denied(cluster: DictReader) -> None:
    web = cluster.try_get("virtualmachines", "default", "web-01")
    web["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"][0]["state"] = "absent"
    error = denial(lambda: update_vm(cluster, web))
    assert error.code == 422
    assert error.message == (
        'admission webhook "virtualmachine-validator.kubevirt.io" denied the request: '
        "\"default\" interface's state \"absent\" is supported only for bridge binding, "
        "\"default\" interface's state \"absent\" is not supported on default networks"
    )


def test_absent_on_bridge_allowed(cluster: DictReader) -> None:
    web = cluster.try_get("virtualmachines", "default", "web-01")
    web["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"][1]["state"] = "absent"
    stored = update_vm(cluster, web)
    assert stored["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"][1]["state"] == "absent"


def test_duplicate_mac_denied_500(cluster: DictReader) -> None:
    db = cluster.try_get("virtualmachines", "default", "db-legacy")
    error = denial(lambda: update_vm(cluster, add_nic(db, "nic-2", "default/vlan200", mac="06:b2:19:c4:55:e1")))
    assert error.code == 500
    assert error.reason == "InternalError"
    assert error.message == (
        'admission webhook "validator.harvesterhci.io" denied the request: '
        "duplicate mac address present for vm db-legacy for cluster network data"
    )


def test_missing_nad_denied_by_mutator(cluster: DictReader) -> None:
    web = cluster.try_get("virtualmachines", "default", "web-01")
    error = denial(lambda: update_vm(cluster, add_nic(web, "nic-2", "default/missing")))
    assert error.code == 500
    assert error.message == (
        'admission webhook "mutator.harvesterhci.io" denied the request: '
        'network-attachment-definitions.k8s.cni.cncf.io "missing" not found'
    )


def test_kubevirt_denial_reported_first(cluster: DictReader) -> None:
    """A write both validators deny reports KubeVirt's 422."""
    db = cluster.try_get("virtualmachines", "default", "db-legacy")
    error = denial(lambda: update_vm(cluster, add_nic(db, "nic 2", "default/vlan200", mac="06:b2:19:c4:55:e1")))
    assert error.code == 422


def test_vm_create_mutated_and_validated(cluster: DictReader) -> None:
    web = cluster.try_get("virtualmachines", "default", "web-01")
    new = copy.deepcopy(web)
    new["metadata"] = {"name": "web-02"}
    for interface in new["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"]:
        interface["macAddress"] = ""
    del new["spec"]["template"]["spec"]["affinity"]
    stored = admit(cluster, "CREATE", "virtualmachines", "default", None, new, None, "client")
    interfaces = stored["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"]
    assert all(interface["macAddress"] for interface in interfaces)
    assert stored["metadata"]["namespace"] == "default"
    assert stored["spec"]["template"]["spec"]["affinity"] == {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "network.harvesterhci.io/data", "operator": "In", "values": ["true"]}]}
                ]
            }
        }
    }


def test_status_write_passes(cluster: DictReader) -> None:
    web = cluster.try_get("virtualmachines", "default", "web-01")
    broken = add_nic(web, "nic 2", "default/missing")
    assert admit(cluster, "UPDATE", "virtualmachines", "default", web, broken, "status", "virt-controller") is broken


def test_other_kind_passes(cluster: DictReader) -> None:
    node = cluster.try_get("nodes", None, "node-1")
    assert admit(cluster, "UPDATE", "nodes", "", node, node, None, "client") is node


def test_vmi_update_by_controller_passes(cluster: DictReader) -> None:
    old = cluster.try_get("virtualmachineinstances", "default", "web-01")
    new = copy.deepcopy(old)
    new["spec"]["domain"]["devices"]["interfaces"][1]["state"] = "absent"
    assert admit(cluster, "UPDATE", "virtualmachineinstances", "default", old, new, None, "virt-controller") == new


def test_vmi_spec_update_by_client_422(cluster: DictReader) -> None:
    old = cluster.try_get("virtualmachineinstances", "default", "web-01")
    new = copy.deepcopy(old)
    new["spec"]["domain"]["devices"]["interfaces"][1]["state"] = "absent"
    error = denial(lambda: admit(cluster, "UPDATE", "virtualmachineinstances", "default", old, new, None, "client"))
    assert error.code == 422
    assert error.message == (
        'admission webhook "virtualmachineinstances-update-validator.kubevirt.io" denied the request: '
        "update of VMI object is restricted"
    )


def test_vmi_create_injects_macs(cluster: DictReader) -> None:
    vmi = cluster.try_get("virtualmachineinstances", "default", "db-legacy")
    for interface in vmi["spec"]["domain"]["devices"]["interfaces"]:
        del interface["macAddress"]
    stored = admit(cluster, "CREATE", "virtualmachineinstances", "default", None, vmi, None, "virt-controller")
    macs = [interface["macAddress"] for interface in stored["spec"]["domain"]["devices"]["interfaces"]]
    assert macs == ["02:11:22:33:44:01", "02:11:22:33:44:02"]


def test_malformed_vm_passes_to_schema(cluster: DictReader) -> None:
    web = cluster.try_get("virtualmachines", "default", "web-01")
    web["spec"]["template"]["spec"]["networks"] = "not-a-list"
    assert admit(cluster, "UPDATE", "virtualmachines", "default", web, web, None, "client") is web


def test_migration_create_mutated(cluster: DictReader) -> None:
    vmim = {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration", "metadata": {"generateName": "web-01-"}, "spec": {"vmiName": "web-01"}}
    stored = admit(cluster, "CREATE", "virtualmachineinstancemigrations", "default", None, vmim, None, "harvester")
    assert stored["metadata"]["labels"] == {"kubevirt.io/vmi-name": "web-01"}
    assert stored["metadata"]["finalizers"] == ["kubevirt.io/migrationJobFinalize"]


def test_migration_missing_vmi_400(cluster: DictReader) -> None:
    vmim = {"metadata": {"generateName": "web-09-"}, "spec": {"vmiName": "web-09"}}
    error = denial(lambda: admit(cluster, "CREATE", "virtualmachineinstancemigrations", "default", None, vmim, None, "client"))
    assert error.code == 400
    assert error.reason == ""
    assert error.message == (
        'admission webhook "migration-create-validator.kubevirt.io" denied the request: '
        'the VMI "default/web-09" does not exist'
    )


def test_migration_in_flight_400(cluster: DictReader) -> None:
    first = admit(cluster, "CREATE", "virtualmachineinstancemigrations", "default", None, {"metadata": {"name": "web-01-a", "uid": "uid-a"}, "spec": {"vmiName": "web-01"}}, None, "client")
    cluster.add("virtualmachineinstancemigrations", first)
    second = {"metadata": {"name": "web-01-b"}, "spec": {"vmiName": "web-01"}}
    error = denial(lambda: admit(cluster, "CREATE", "virtualmachineinstancemigrations", "default", None, second, None, "client"))
    assert error.code == 400
    assert error.message == (
        'admission webhook "migration-create-validator.kubevirt.io" denied the request: '
        "in-flight migration detected. Active migration job (uid-a) is currently already in progress for VMI web-01."
    )


def test_migration_without_vmi_name_422(cluster: DictReader) -> None:
    vmim = {"metadata": {"name": "x"}, "spec": {}}
    error = denial(lambda: admit(cluster, "CREATE", "virtualmachineinstancemigrations", "default", None, vmim, None, "client"))
    assert error.code == 422
    assert error.reason == "Invalid"
    assert error.message == 'admission webhook "migration-create-validator.kubevirt.io" denied the request: vmiName is missing'


def test_migration_spec_update_422(cluster: DictReader) -> None:
    old = {"metadata": {"name": "web-01-a", "labels": {"kubevirt.io/vmi-name": "web-01"}}, "spec": {"vmiName": "web-01"}}
    new = copy.deepcopy(old)
    new["spec"]["vmiName"] = "db-legacy"
    error = denial(lambda: admit(cluster, "UPDATE", "virtualmachineinstancemigrations", "default", old, new, None, "client"))
    assert error.code == 422
    assert error.message == (
        'admission webhook "migration-update-validator.kubevirt.io" denied the request: '
        "update of Migration object's spec is restricted"
    )


def test_migration_status_write_passes(cluster: DictReader) -> None:
    old = {"metadata": {"name": "web-01-a"}, "spec": {"vmiName": "web-01"}}
    new = {"metadata": {"name": "web-01-a"}, "spec": {"vmiName": "other"}, "status": {"phase": "Running"}}
    assert admit(cluster, "UPDATE", "virtualmachineinstancemigrations", "default", old, new, "status", "virt-controller") is new


def test_vmi_create_invalid_422(cluster: DictReader) -> None:
    vmi = cluster.try_get("virtualmachineinstances", "default", "web-01")
    vmi["spec"]["domain"]["devices"]["interfaces"][1]["model"] = "virtio-net"
    error = denial(lambda: admit(cluster, "CREATE", "virtualmachineinstances", "default", None, vmi, None, "virt-controller"))
    expected = "interface spec.domain.devices.interfaces[1].name uses model virtio-net that is not supported."
    assert error.code == 422
    assert error.message == (
        'admission webhook "virtualmachineinstances-create-validator.kubevirt.io" denied the request: '
        f"{expected}, {expected}"
    )
