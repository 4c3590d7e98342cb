"""Harvester's VM mutator, VM validator and VMI mutator, as pure functions over a DictReader."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubevirt_sim.admission import DictReader, harvester_vm, harvester_vmi

HARVESTER_FIXTURES = Path(__file__).resolve().parents[2] / "nicflow" / "manifests"

PLURALS = {
    "VirtualMachine": "virtualmachines",
    "VirtualMachineInstance": "virtualmachineinstances",
    "NetworkAttachmentDefinition": "network-attachment-definitions",
    "Node": "nodes",
    "KubeVirt": "kubevirts",
}


def load_manifests(directory: Path) -> DictReader:
    reader = DictReader()
    for path in sorted(directory.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                reader.add(PLURALS[document["kind"]], document)
    return reader


@pytest.fixture
def cluster() -> DictReader:
    return load_manifests(HARVESTER_FIXTURES)


def nad(name: str, namespace: str, cluster_network: str | None) -> dict[str, Any]:
    labels = {"network.harvesterhci.io/type": "L2VlanNetwork"}
    if cluster_network is not None:
        labels["network.harvesterhci.io/clusternetwork"] = cluster_network
    return {
        "apiVersion": "k8s.cni.cncf.io/v1",
        "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"config": json.dumps({"cniVersion": "0.3.1", "type": "bridge"})},
    }


def vm(
    name: str,
    nics: list[tuple[str, str, str | None]],
    namespace: str = "default",
    annotations: dict[str, str] | None = None,
    affinity: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build a VM whose NICs are (name, MAC, networkName); networkName None means the pod network."""
    interfaces = []
    networks = []
    for nic, mac, network_name in nics:
        binding = {"masquerade": {}} if network_name is None else {"bridge": {}}
        interfaces.append({"name": nic, "model": "virtio", "macAddress": mac, **binding})
        source = {"pod": {}} if network_name is None else {"multus": {"networkName": network_name}}
        networks.append({"name": nic, **source})
    template_spec: dict[str, Any] = {"domain": {"devices": {"interfaces": interfaces}}, "networks": networks}
    if affinity is not None:
        template_spec["affinity"] = affinity
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": namespace, "annotations": annotations or {}},
        "spec": {"template": {"spec": template_spec}},
    }


def interfaces_of(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return obj["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"]


def terms_of(obj: dict[str, Any]) -> list[dict[str, Any]]:
    affinity = obj["spec"]["template"]["spec"]["affinity"]
    return affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]


def requirement(cluster_network: str) -> dict[str, Any]:
    return {"key": f"network.harvesterhci.io/{cluster_network}", "operator": "In", "values": ["true"]}


# MAC generation -------------------------------------------------------------------------------


def test_mac_generated_for_empty() -> None:
    subject = vm("web-02", [("default", "", None), ("nic-1", "06:00:00:00:00:01", "default/vlan100")])
    patched = harvester_vm.patch_interface_macs(subject, generate=lambda: "0a:00:00:00:00:99")
    assert patched == ["default"]
    assert interfaces_of(subject)[0]["macAddress"] == "0a:00:00:00:00:99"
    assert interfaces_of(subject)[1]["macAddress"] == "06:00:00:00:00:01"


def test_mac_generated_when_field_missing() -> None:
    subject = vm("web-02", [("default", "", None)])
    del interfaces_of(subject)[0]["macAddress"]
    harvester_vm.patch_interface_macs(subject)
    assert int(interfaces_of(subject)[0]["macAddress"][:2], 16) & 0x03 == 0x02


def test_mac_not_generated_for_annotated() -> None:
    annotation = json.dumps({"default": "02:11:22:33:44:01"})
    subject = vm("db-legacy", [("default", "", None), ("nic-2", "", "default/vlan100")], annotations={harvester_vm.MAC_ADDRESS_ANNOTATION: annotation})
    patched = harvester_vm.patch_interface_macs(subject, generate=lambda: "0a:00:00:00:00:99")
    assert patched == ["nic-2"]
    assert interfaces_of(subject)[0]["macAddress"] == ""
    assert interfaces_of(subject)[1]["macAddress"] == "0a:00:00:00:00:99"


def test_mac_unparsable_annotation_ignored() -> None:
    subject = vm("web-02", [("default", "", None)], annotations={harvester_vm.MAC_ADDRESS_ANNOTATION: "{not json"})
    patched = harvester_vm.patch_interface_macs(subject, generate=lambda: "0a:00:00:00:00:99")
    assert patched == ["default"]


# Affinity -------------------------------------------------------------------------------------


def test_affinity_created_for_cluster_network(cluster: DictReader) -> None:
    subject = vm("web-02", [("default", "", None), ("nic-1", "", "default/vlan100")])
    harvester_vm.patch_affinity(cluster, subject)
    assert terms_of(subject) == [{"matchExpressions": [requirement("data")]}]


def test_affinity_bare_name_uses_vm_namespace(cluster: DictReader) -> None:
    cluster.add("network-attachment-definitions", nad("vlan300", "tenant-a", "tenant"))
    subject = vm("app", [("nic-1", "", "vlan300")], namespace="tenant-a")
    harvester_vm.patch_affinity(cluster, subject)
    assert terms_of(subject) == [{"matchExpressions": [requirement("tenant")]}]


def test_affinity_added_to_every_term(cluster: DictReader) -> None:
    zone_a = {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["a"]}
    zone_b = {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["b"]}
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [zone_a]}, {"matchExpressions": [zone_b]}]
            }
        }
    }
    subject = vm("web-02", [("nic-1", "", "default/vlan100")], affinity=affinity)
    harvester_vm.patch_affinity(cluster, subject)
    assert terms_of(subject) == [
        {"matchExpressions": [zone_a, requirement("data")]},
        {"matchExpressions": [zone_b, requirement("data")]},
    ]


def test_affinity_drops_stale_network_keys(cluster: DictReader) -> None:
    stale = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [requirement("old"), {"key": "cpumanager", "operator": "In", "values": ["true"]}]}
                ]
            }
        }
    }
    subject = vm("web-02", [("default", "", None)], affinity=stale)
    harvester_vm.patch_affinity(cluster, subject)
    assert subject["spec"]["template"]["spec"]["affinity"] == {}


def test_affinity_keeps_preferred(cluster: DictReader) -> None:
    preferred = [{"weight": 1, "preference": {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}}]
    affinity = {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": preferred}}
    subject = vm("web-02", [("default", "", None)], affinity=affinity)
    harvester_vm.patch_affinity(cluster, subject)
    assert subject["spec"]["template"]["spec"]["affinity"] == {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": preferred}}


def test_affinity_one_requirement_per_cluster_network(cluster: DictReader) -> None:
    subject = vm("web-02", [("nic-1", "", "default/vlan100"), ("nic-2", "", "default/vlan200")])
    harvester_vm.patch_affinity(cluster, subject)
    assert terms_of(subject) == [{"matchExpressions": [requirement("data")]}]


def test_affinity_ignores_unlabelled_nad(cluster: DictReader) -> None:
    cluster.add("network-attachment-definitions", nad("plain", "default", None))
    subject = vm("web-02", [("nic-1", "", "default/plain")])
    harvester_vm.patch_affinity(cluster, subject)
    assert subject["spec"]["template"]["spec"]["affinity"] == {}


def test_affinity_missing_nad_raises(cluster: DictReader) -> None:
    subject = vm("web-02", [("nic-1", "", "default/missing")])
    with pytest.raises(harvester_vm.HarvesterWebhookError) as raised:
        harvester_vm.patch_affinity(cluster, subject)
    assert str(raised.value) == 'network-attachment-definitions.k8s.cni.cncf.io "missing" not found'


def test_affinity_invalid_network_name(cluster: DictReader) -> None:
    subject = vm("web-02", [("nic-1", "", "a/b/c")])
    with pytest.raises(harvester_vm.HarvesterWebhookError) as raised:
        harvester_vm.patch_affinity(cluster, subject)
    assert str(raised.value) == "invalid network name a/b/c"


def test_mutate_vm_skips_deleting_update(cluster: DictReader) -> None:
    subject = vm("web-02", [("nic-1", "", "default/missing")])
    subject["metadata"]["deletionTimestamp"] = "2026-05-04T10:15:03Z"
    mutated = harvester_vm.mutate_vm(cluster, "UPDATE", subject)
    assert mutated == subject


def test_mutate_vm_leaves_input(cluster: DictReader) -> None:
    subject = vm("web-02", [("nic-1", "", "default/vlan100")])
    original = copy.deepcopy(subject)
    harvester_vm.mutate_vm(cluster, "CREATE", subject)
    assert subject == original


# Duplicate MACs -------------------------------------------------------------------------------


def test_duplicate_mac_same_cluster_network(cluster: DictReader) -> None:
    subject = vm("web-02", [("nic-1", "06:b2:19:c4:55:e1", "default/vlan200")])
    message = harvester_vm.validate_vm(cluster, "CREATE", None, subject)
    assert message == "duplicate mac address present for vm web-02 for cluster network data"


def test_duplicate_mac_pod_network_group(cluster: DictReader) -> None:
    subject = vm("web-02", [("default", "02:3c:8e:41:7a:10", None)])
    message = harvester_vm.validate_vm(cluster, "CREATE", None, subject)
    assert message == "duplicate mac address present for vm web-02 for cluster network "


def test_duplicate_mac_other_cluster_network_allowed(cluster: DictReader) -> None:
    cluster.add("network-attachment-definitions", nad("vlan900", "default", "other"))
    subject = vm("web-02", [("nic-1", "06:b2:19:c4:55:e1", "default/vlan900")])
    assert harvester_vm.validate_vm(cluster, "CREATE", None, subject) is None


def test_duplicate_mac_is_case_sensitive(cluster: DictReader) -> None:
    subject = vm("web-02", [("nic-1", "06:B2:19:C4:55:E1", "default/vlan200")])
    assert harvester_vm.validate_vm(cluster, "CREATE", None, subject) is None


def test_duplicate_mac_same_vm_allowed(cluster: DictReader) -> None:
    stored = cluster.try_get("virtualmachines", "default", "web-01")
    updated = copy.deepcopy(stored)
    updated["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"].append(
        {"name": "nic-2", "model": "virtio", "bridge": {}, "macAddress": "0a:51:d7:30:9c:44"}
    )
    updated["spec"]["template"]["spec"]["networks"].append({"name": "nic-2", "multus": {"networkName": "default/trunk-200-299"}})
    assert harvester_vm.validate_vm(cluster, "UPDATE", stored, updated) is None


def test_duplicate_mac_within_vm_on_new_interface(cluster: DictReader) -> None:
    """A second interface of the same VM reusing a MAC has another "<iface>+<vm>" key, so it counts."""
    stored = cluster.try_get("virtualmachines", "default", "web-01")
    updated = copy.deepcopy(stored)
    updated["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"].append(
        {"name": "nic-2", "model": "virtio", "bridge": {}, "macAddress": "06:b2:19:c4:55:e1"}
    )
    updated["spec"]["template"]["spec"]["networks"].append({"name": "nic-2", "multus": {"networkName": "default/vlan200"}})
    message = harvester_vm.validate_vm(cluster, "UPDATE", stored, updated)
    assert message == "duplicate mac address present for vm web-01 for cluster network data"


def test_duplicate_mac_skipped_when_interfaces_unchanged(cluster: DictReader) -> None:
    clash = vm("web-02", [("nic-1", "06:b2:19:c4:55:e1", "default/vlan200")])
    updated = copy.deepcopy(clash)
    updated["metadata"]["labels"] = {"changed": "true"}
    assert harvester_vm.validate_vm(cluster, "UPDATE", clash, updated) is None


def test_duplicate_mac_ignores_annotation_only_macs(cluster: DictReader) -> None:
    """db-legacy's MACs live only in its annotation, which Harvester's MAC index does not read."""
    subject = vm("web-02", [("nic-1", "02:11:22:33:44:02", "default/vlan100")])
    assert harvester_vm.validate_vm(cluster, "CREATE", None, subject) is None


def test_validator_bare_name_resolves_in_default(cluster: DictReader) -> None:
    cluster.add("network-attachment-definitions", nad("vlan300", "tenant-a", "tenant"))
    subject = vm("app", [("nic-1", "0a:00:00:00:00:01", "vlan300")], namespace="tenant-a")
    message = harvester_vm.validate_vm(cluster, "CREATE", None, subject)
    assert message == 'network-attachment-definitions.k8s.cni.cncf.io "vlan300" not found'


def test_validator_bare_name_in_default_passes(cluster: DictReader) -> None:
    subject = vm("web-02", [("nic-1", "0a:00:00:00:00:01", "vlan100")])
    assert harvester_vm.validate_vm(cluster, "CREATE", None, subject) is None


def test_validator_no_macs_skips_lookup(cluster: DictReader) -> None:
    subject = vm("web-02", [("nic-1", "", "default/vlan100")])
    assert harvester_vm.validate_vm(cluster, "CREATE", None, subject) is None


def test_validator_unlabelled_nad_in_pod_group(cluster: DictReader) -> None:
    cluster.add("network-attachment-definitions", nad("plain", "default", None))
    subject = vm("web-02", [("nic-1", "02:3c:8e:41:7a:10", "default/plain")])
    message = harvester_vm.validate_vm(cluster, "CREATE", None, subject)
    assert message == "duplicate mac address present for vm web-02 for cluster network "


# VMI MAC injection ----------------------------------------------------------------------------


def legacy_vmi(reader: DictReader) -> dict[str, Any]:
    vmi = reader.try_get("virtualmachineinstances", "default", "db-legacy")
    for interface in vmi["spec"]["domain"]["devices"]["interfaces"]:
        interface.pop("macAddress", None)
    return vmi


def test_vmi_mac_injected_from_annotation(cluster: DictReader) -> None:
    mutated = harvester_vmi.mutate_vmi(cluster, legacy_vmi(cluster))
    macs = [interface.get("macAddress") for interface in mutated["spec"]["domain"]["devices"]["interfaces"]]
    assert macs == ["02:11:22:33:44:01", "02:11:22:33:44:02"]


def test_vmi_mac_kept_when_vm_has_mac(cluster: DictReader) -> None:
    vm_object = cluster.try_get("virtualmachines", "default", "db-legacy")
    interfaces_of(vm_object)[0]["macAddress"] = "0a:00:00:00:00:01"
    mutated = harvester_vmi.inject_annotated_macs(vm_object, legacy_vmi(cluster))
    macs = [interface.get("macAddress") for interface in mutated["spec"]["domain"]["devices"]["interfaces"]]
    assert macs == [None, "02:11:22:33:44:02"]


def test_vmi_mac_skipped_without_annotation(cluster: DictReader) -> None:
    vm_object = cluster.try_get("virtualmachines", "default", "db-legacy")
    del vm_object["metadata"]["annotations"][harvester_vm.MAC_ADDRESS_ANNOTATION]
    vmi = legacy_vmi(cluster)
    assert harvester_vmi.inject_annotated_macs(vm_object, vmi) == vmi


def test_vmi_more_interfaces_than_vm_unchanged(cluster: DictReader) -> None:
    vm_object = cluster.try_get("virtualmachines", "default", "db-legacy")
    vmi = legacy_vmi(cluster)
    vmi["spec"]["domain"]["devices"]["interfaces"].append({"name": "extra", "bridge": {}})
    assert harvester_vmi.inject_annotated_macs(vm_object, vmi) == vmi


def test_vmi_without_vm_denied(cluster: DictReader) -> None:
    vmi = legacy_vmi(cluster)
    vmi["metadata"]["name"] = "orphan"
    with pytest.raises(harvester_vm.HarvesterWebhookError) as raised:
        harvester_vmi.mutate_vmi(cluster, vmi)
    assert str(raised.value) == 'virtualmachines.kubevirt.io "orphan" not found'
