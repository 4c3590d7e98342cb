"""Admission and controller rules that no other simulator test drives through the official client over HTTP."""

from __future__ import annotations

import json
from typing import Any

from kubernetes.client import CustomObjectsApi

from tests.sim.test_admission_http import (  # noqa: F401  (api is a fixture)
    JSON_PATCH,
    KUBEVIRT,
    add_nic,
    api,
    create_migration,
    get_vm,
    rejected,
    replace_vm,
)
from tests.sim.test_ctrl_faults import wait_sim_seconds
from tests.sim.test_ctrl_hotplug import (  # noqa: F401  (cluster and manual are fixtures)
    NAMESPACE,
    NEW_MAC,
    VM_NAME,
    Cluster,
    add_interface,
    cluster,
    condition,
    interface_names,
    manual,
    migration_phase,
    wait_final,
    wait_for,
)

VM_VALIDATOR = 'admission webhook "virtualmachine-validator.kubevirt.io" denied the request: '
VMIM_VALIDATOR = 'admission webhook "migration-create-validator.kubevirt.io" denied the request: '


def template_interfaces(vm: dict[str, Any]) -> list[dict[str, Any]]:
    return vm["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"]



# Harvester's VM mutator and validator.


def test_annotated_name_keeps_empty_mac(api: CustomObjectsApi) -> None:
    stored = replace_vm(api, add_nic(get_vm(api, "db-legacy"), "nic-2", "default/vlan200"))
    macs = {interface["name"]: interface.get("macAddress", "") for interface in template_interfaces(stored)}
    assert macs["default"] == ""
    assert macs["nic-vlan100"] == ""
    assert int(macs["nic-2"][:2], 16) & 0x03 == 0x02


def test_affinity_drops_removed_network(api: CustomObjectsApi) -> None:
    vm = get_vm(api, "web-01")
    template = vm["spec"]["template"]["spec"]
    template["domain"]["devices"]["interfaces"] = template["domain"]["devices"]["interfaces"][:1]
    template["networks"] = template["networks"][:1]
    assert "network.harvesterhci.io/data" in json.dumps(template["affinity"])

    stored = replace_vm(api, vm)
    assert "network.harvesterhci.io/data" not in json.dumps(stored["spec"]["template"]["spec"].get("affinity") or {})


def test_affinity_added_for_new_network(api: CustomObjectsApi) -> None:
    stored = replace_vm(api, add_nic(get_vm(api, "web-01"), "nic-2", "default/overlay1"))
    assert "network.harvesterhci.io/mgmt" in json.dumps(stored["spec"]["template"]["spec"]["affinity"])
    assert "network.harvesterhci.io/data" in json.dumps(stored["spec"]["template"]["spec"]["affinity"])


def test_duplicate_mac_case_sensitive(api: CustomObjectsApi) -> None:
    # web-01's nic-vlan100 has 06:b2:19:c4:55:e1 on cluster network data; Harvester compares raw strings.
    stored = replace_vm(api, add_nic(get_vm(api, "db-legacy"), "nic-2", "default/untagged-data", mac="06:B2:19:C4:55:E1"))
    assert template_interfaces(stored)[-1]["macAddress"] == "06:B2:19:C4:55:E1"


# KubeVirt's VM validator.


def test_network_without_interface_422(api: CustomObjectsApi) -> None:
    vm = get_vm(api, "web-01")
    vm["spec"]["template"]["spec"]["networks"].append({"name": "nic-2", "multus": {"networkName": "default/vlan200"}})
    status, body = rejected(lambda: replace_vm(api, vm))
    assert status == 422
    assert body["reason"] == "Invalid"
    assert body["message"] == VM_VALIDATOR + "spec.template.spec.networks[2].name 'nic-2' not found."


def test_interface_without_network_422(api: CustomObjectsApi) -> None:
    vm = get_vm(api, "web-01")
    template_interfaces(vm).append({"name": "nic-2", "model": "virtio", "bridge": {}, "macAddress": NEW_MAC})
    status, body = rejected(lambda: replace_vm(api, vm))
    assert status == 422
    assert body["message"] == VM_VALIDATOR + "spec.template.spec.domain.devices.interfaces[2].name 'nic-2' not found."


def test_malformed_mac_422(api: CustomObjectsApi) -> None:
    status, body = rejected(lambda: replace_vm(api, add_nic(get_vm(api, "web-01"), "nic-2", "default/vlan200", mac="0a:51:d7:30:9c")))
    assert status == 422
    assert body["message"] == VM_VALIDATOR + (
        "interface spec.template.spec.domain.devices.interfaces[2].name has malformed MAC address (0a:51:d7:30:9c).")


def test_too_long_mac_422(api: CustomObjectsApi) -> None:
    mac = "0a:51:d7:30:9c:44:00:01"
    status, body = rejected(lambda: replace_vm(api, add_nic(get_vm(api, "web-01"), "nic-2", "default/vlan200", mac=mac)))
    assert status == 422
    # NOTE: only the words "too long MAC address" of KubeVirt's message are known; the rest was not checked.
    assert body["message"].startswith(VM_VALIDATOR + "interface spec.template.spec.domain.devices.interfaces[2].name has ")
    assert "too long MAC address" in body["message"]


def test_unsupported_model_422(api: CustomObjectsApi) -> None:
    vm = add_nic(get_vm(api, "web-01"), "nic-2", "default/vlan200")
    template_interfaces(vm)[-1]["model"] = "virtio-net"
    status, body = rejected(lambda: replace_vm(api, vm))
    assert status == 422
    assert body["message"] == VM_VALIDATOR + (
        "interface spec.template.spec.domain.devices.interfaces[2].name uses model virtio-net that is not supported.")


def test_empty_network_name_422(api: CustomObjectsApi) -> None:
    status, body = rejected(lambda: replace_vm(api, add_nic(get_vm(api, "web-01"), "nic-2", "")))
    assert status == 422
    assert body["message"] == VM_VALIDATOR + "CNI delegating plugin must have a networkName"


def test_unsupported_state_422(api: CustomObjectsApi) -> None:
    patch = [{"op": "add", "path": "/spec/template/spec/domain/devices/interfaces/1/state", "value": "gone"}]
    status, body = rejected(lambda: api.patch_namespaced_custom_object(
        *KUBEVIRT, NAMESPACE, "virtualmachines", "web-01", patch, _content_type=JSON_PATCH))
    assert status == 422
    assert body["message"] == VM_VALIDATOR + "logical nic-vlan100 interface state value is unsupported: gone"


def test_link_state_down_allowed(api: CustomObjectsApi) -> None:
    patch = [{"op": "add", "path": "/spec/template/spec/domain/devices/interfaces/1/state", "value": "down"}]
    stored = api.patch_namespaced_custom_object(*KUBEVIRT, NAMESPACE, "virtualmachines", "web-01", patch, _content_type=JSON_PATCH)
    assert template_interfaces(stored)[1]["state"] == "down"


# KubeVirt's VMIM create validator.


def test_migration_finalized_vmi_400(api: CustomObjectsApi) -> None:
    # The VMI has no status subresource in KubeVirt, so a merge patch of the main resource sets its phase.
    api.patch_namespaced_custom_object(*KUBEVIRT, NAMESPACE, "virtualmachineinstances", "web-01", {"status": {"phase": "Failed"}})
    status, body = rejected(lambda: create_migration(api, "web-01"))
    assert status == 400
    assert body["message"] == VMIM_VALIDATOR + "Cannot migrate VMI in finalized state."


# VM controller.


def test_changed_mac_restart_required(manual):
    def change_mac(vm: dict) -> None:
        template_interfaces(vm)[1]["macAddress"] = "06:b2:19:c4:55:e2"

    manual.edit_vm(change_mac)
    required = wait_for(lambda: condition(manual.vm(), "RestartRequired"), "RestartRequired")
    assert required["status"] == "True"
    assert required["message"] == "a non-live-updatable field was changed in the template spec"
    assert manual.vmi()["spec"]["domain"]["devices"]["interfaces"][1]["macAddress"] == "06:b2:19:c4:55:e1"


def stall_running_migration(cluster: Cluster) -> str:
    """Create a VMIM and hold it in Running, after the VMI's migrationState got its startTimestamp."""
    cluster.sim.faults.stall_migration("Running", vmi=VM_NAME)
    name = cluster.create_migration()["metadata"]["name"]
    wait_for(lambda: migration_phase(cluster, name) == "Running", "the VMIM in Running")
    wait_for(lambda: cluster.vmi()["status"]["migrationState"].get("startTimestamp"), "the migration start")
    return name


def test_scheduling_not_copied_while_migrating(manual):
    name = stall_running_migration(manual)
    manual.edit_vm(lambda vm: vm["spec"]["template"]["spec"].update(nodeSelector={"topology.kubernetes.io/zone": "zone-a"}))
    wait_sim_seconds(manual, 20)
    assert "nodeSelector" not in manual.vmi()["spec"]

    manual.sim.faults.clear()
    assert wait_final(manual, name)["status"]["phase"] == "Succeeded"
    selector = wait_for(lambda: manual.vmi()["spec"].get("nodeSelector"), "the nodeSelector in the VMI")
    assert selector == {"topology.kubernetes.io/zone": "zone-a"}


def test_printable_status_migrating(manual):
    name = stall_running_migration(manual)
    wait_for(lambda: manual.vm()["status"]["printableStatus"] == "Migrating", "printableStatus Migrating")

    manual.sim.faults.clear()
    assert wait_final(manual, name)["status"]["phase"] == "Succeeded"
    wait_for(lambda: manual.vm()["status"]["printableStatus"] == "Running", "printableStatus Running")


# VMI controller: MigrationRequired.


def test_sriov_required_at_once(manual):
    def add_sriov(vm: dict) -> None:
        template = vm["spec"]["template"]["spec"]
        template["domain"]["devices"]["interfaces"].append({"name": "nic-sriov", "macAddress": NEW_MAC, "sriov": {}})
        template["networks"].append({"name": "nic-sriov", "multus": {"networkName": "default/vlan200"}})

    since = max(c.resource_version for c in manual.sim.recorder.query())
    manual.edit_vm(add_sriov)
    wait_for(lambda: "nic-sriov" in interface_names(manual.vmi()["spec"]), "nic-sriov in the VMI spec")
    required = wait_for(lambda: condition(manual.vmi(), "MigrationRequired"), "MigrationRequired")
    assert (required["status"], required["reason"]) == ("True", "AutoMigrationDueToLiveUpdate")
    changes = manual.sim.recorder.query(plural="virtualmachineinstances", name=VM_NAME, since=since,
                                        field_prefix="status.conditions[type=MigrationRequired]")
    assert [c.new["status"] for c in changes if c.field == "status.conditions[type=MigrationRequired]"] == ["True"]


def test_required_untouched_while_migrating(manual):
    name = stall_running_migration(manual)
    manual.edit_vm(lambda vm: add_interface(vm, "nic-2", "default/vlan200"))
    wait_for(lambda: "nic-2" in interface_names(manual.vmi()["spec"]), "nic-2 in the VMI spec")
    wait_sim_seconds(manual, 30)
    assert condition(manual.vmi(), "MigrationRequired") is None

    # The target pod was created before the hot-plug, so the NIC is still pending after the migration.
    manual.sim.faults.clear()
    assert wait_final(manual, name)["status"]["phase"] == "Succeeded"
    required = wait_for(lambda: condition(manual.vmi(), "MigrationRequired"), "MigrationRequired after the migration")
    assert required["reason"] in ("AutoMigrationPending", "AutoMigrationDueToLiveUpdate")


# Workload updater.


def test_no_automatic_migration_without_live_migrate(manual):
    manual.edit_vm(lambda vm: add_interface(vm, "nic-2", "default/vlan200"))
    wait_for(lambda: (c := condition(manual.vmi(), "MigrationRequired")) and c["status"] == "True", "MigrationRequired True")
    wait_sim_seconds(manual, 30)
    assert manual.list("virtualmachineinstancemigrations") == []


# Bare networkName outside namespace default.


def create_nad(api: CustomObjectsApi, namespace: str, name: str, cluster_network: str) -> None:
    api.create_namespaced_custom_object("k8s.cni.cncf.io", "v1", namespace, "network-attachment-definitions", {
        "apiVersion": "k8s.cni.cncf.io/v1",
        "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": name, "labels": {"network.harvesterhci.io/clusternetwork": cluster_network}},
        "spec": {"config": json.dumps({"cniVersion": "0.3.1", "name": name, "type": "bridge", "bridge": f"{cluster_network}-br"})},
    })


def vm_in_namespace(api: CustomObjectsApi, namespace: str, network_name: str) -> dict[str, Any]:
    """Return web-01's VM as app-1 in `namespace`: VLAN NIC on `network_name` with a new MAC, no affinity."""
    vm = get_vm(api, "web-01")
    template = vm["spec"]["template"]
    template["spec"].pop("affinity")
    template["spec"]["networks"][1]["multus"]["networkName"] = network_name
    template_interfaces(vm)[0].pop("macAddress")
    template_interfaces(vm)[1]["macAddress"] = "06:b2:19:c4:55:f0"
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": "app-1", "namespace": namespace},
        "spec": {"runStrategy": "Halted", "template": template},
    }


def test_bare_network_name_validator_default(api: CustomObjectsApi) -> None:
    create_nad(api, "team-a", "vlan-a", "data")
    # The HTTP code of Harvester's own denials is not known, so only the message is checked.
    _, body = rejected(lambda: api.create_namespaced_custom_object(
        *KUBEVIRT, "team-a", "virtualmachines", vm_in_namespace(api, "team-a", "vlan-a")))
    assert body["message"] == (
        'admission webhook "validator.harvesterhci.io" denied the request: '
        'network-attachment-definitions.k8s.cni.cncf.io "vlan-a" not found')


def test_bare_network_name_mutator_vm_namespace(api: CustomObjectsApi) -> None:
    create_nad(api, "team-a", "vlan-a", "data")
    create_nad(api, "default", "vlan-a", "other")
    stored = api.create_namespaced_custom_object(*KUBEVIRT, "team-a", "virtualmachines", vm_in_namespace(api, "team-a", "vlan-a"))
    affinity = json.dumps(stored["spec"]["template"]["spec"]["affinity"])
    assert "network.harvesterhci.io/data" in affinity
    assert "network.harvesterhci.io/other" not in affinity


# Harvester's MAC backfill.


def test_backfill_denied_blocks_stop(cluster):
    # A VM made from a template of web-01 that copied its MAC annotation but not its spec MACs.
    parent = cluster.vm()
    template = parent["spec"]["template"]
    template["metadata"]["labels"]["harvesterhci.io/vmName"] = "child-1"
    for interface in template["spec"]["domain"]["devices"]["interfaces"]:
        interface.pop("macAddress")
    annotation = parent["metadata"]["annotations"]["harvesterhci.io/mac-address"]
    cluster.custom.create_namespaced_custom_object("kubevirt.io", "v1", NAMESPACE, "virtualmachines", {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": "child-1", "annotations": {"harvesterhci.io/mac-address": annotation}},
        "spec": {"runStrategy": "RerunOnFailure", "template": template},
    })
    vmi = wait_for(lambda: (v := cluster.try_get("virtualmachineinstances", "child-1"))
                   and v.get("status", {}).get("phase") == "Running" and v, "child-1 running")
    assert [i["macAddress"] for i in vmi["spec"]["domain"]["devices"]["interfaces"]] == list(json.loads(annotation).values())

    # Stopping deletes the VMI; the backfill of web-01's MACs into child-1 is a duplicate, so the VMI stays.
    cluster.custom.patch_namespaced_custom_object("kubevirt.io", "v1", NAMESPACE, "virtualmachines", "child-1",
                                                  {"spec": {"runStrategy": "Halted"}})
    wait_for(lambda: cluster.vmi("child-1")["metadata"].get("deletionTimestamp"), "the VMI deletion")
    wait_sim_seconds(cluster, 30)
    stuck = cluster.vmi("child-1")
    assert "wrangler.cattle.io/VMController.BackfillObservedNetworkMacAddress" in stuck["metadata"]["finalizers"]
    assert all("macAddress" not in i for i in template_interfaces(cluster.vm("child-1")))
    assert cluster.vm("child-1")["status"]["printableStatus"] == "Stopping"
