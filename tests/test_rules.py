"""Table-driven tests for the hot-plug and hot-unplug rules, on copies of the Harvester manifests."""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache

import pytest
import yaml

from nicflow import pciports
from nicflow.macs import generate_laa_mac, is_unicast
from nicflow.reasons import DESCRIPTIONS, Reason
from nicflow.rules import (
    ClusterView,
    allocate_hotplug_mac,
    Verdict,
    check_hotplug,
    check_unplug,
    cluster_network_of,
    first_failure,
    is_cold,
    is_live_migratable,
    migration_targets,
    missing_macs,
    observed_macs,
    qualify_network,
)
from tests.conftest import HARVESTER_FIXTURES


@cache
def _manifests() -> dict[tuple[str, str], dict]:
    objects: dict[tuple[str, str], dict] = {}
    for path in sorted(HARVESTER_FIXTURES.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if not document:
                continue
            metadata = document["metadata"]
            key = f"{metadata['namespace']}/{metadata['name']}" if metadata.get("namespace") else metadata["name"]
            objects[(document["kind"], key)] = document
    return objects


def _manifest(kind: str, key: str) -> dict:
    return copy.deepcopy(_manifests()[(kind, key)])


def _set_condition(obj: dict, condition_type: str, status: str, reason: str = "", message: str = "") -> None:
    conditions = obj.setdefault("status", {}).setdefault("conditions", [])
    conditions[:] = [item for item in conditions if item.get("type") != condition_type]
    conditions.append({"type": condition_type, "status": status, "reason": reason, "message": message})


def _ready_node(node: dict) -> dict:
    # The node manifests carry no status; a Node read from the API server reports Ready.
    _set_condition(node, "Ready", "True", "KubeletReady")
    return node


@dataclass
class Scenario:
    """A mutable copy of the cluster, turned into a ClusterView for one request."""

    vm: dict | None
    vmi: dict | None
    nodes: list[dict]
    kubevirt: dict | None
    nads: dict[str, dict]
    migrations: list[dict] = field(default_factory=list)
    macs_in_use: dict[str, dict[str, str]] = field(default_factory=dict)
    reserved_macs: dict[str, dict[str, str]] = field(default_factory=dict)
    pending_unplugs: int = 0
    hotplugged_since_start: int = 0
    vm_ref: str = ""

    def view(self, network: str | None = None) -> ClusterView:
        namespace = (self.vm or {}).get("metadata", {}).get("namespace", "default")
        nad = None
        if network is not None and network.count("/") <= 1:
            key = network if "/" in network else f"{namespace}/{network}"
            nad = self.nads.get(key)
        return ClusterView(
            vm=self.vm,
            vmi=self.vmi,
            nodes=self.nodes,
            migrations=self.migrations,
            kubevirt=self.kubevirt,
            nad=nad,
            nads=self.nads,
            macs_in_use=self.macs_in_use,
            reserved_macs=self.reserved_macs,
            pending_unplugs=self.pending_unplugs,
            hotplugged_since_start=self.hotplugged_since_start,
            vm_ref=self.vm_ref,
        )


def _scenario(vm_name: str = "web-01") -> Scenario:
    nads = {key: copy.deepcopy(obj) for (kind, key), obj in _manifests().items() if kind == "NetworkAttachmentDefinition"}
    nodes = [_ready_node(copy.deepcopy(obj)) for (kind, _), obj in sorted(_manifests().items()) if kind == "Node"]

    # MACs of every manifest VM, grouped by the cluster network of each interface's NAD.
    macs_in_use: dict[str, dict[str, str]] = {}
    for (kind, key), vm in _manifests().items():
        if kind != "VirtualMachine":
            continue
        spec = vm["spec"]["template"]["spec"]
        networks = {item["name"]: item for item in spec["networks"]}
        for interface in spec["domain"]["devices"]["interfaces"]:
            if not interface.get("macAddress"):
                continue
            multus = networks[interface["name"]].get("multus")
            group = cluster_network_of(nads[multus["networkName"]]) if multus else ""
            macs_in_use.setdefault(group or "", {})[interface["macAddress"]] = f"{key}/{interface['name']}"

    return Scenario(
        vm=_manifest("VirtualMachine", f"default/{vm_name}"),
        vmi=_manifest("VirtualMachineInstance", f"default/{vm_name}"),
        nodes=nodes,
        kubevirt=_manifest("KubeVirt", "harvester-system/kubevirt"),
        nads=nads,
        macs_in_use=macs_in_use,
    )


def _node(scenario: Scenario, name: str) -> dict:
    return next(node for node in scenario.nodes if node["metadata"]["name"] == name)


def _vm_interfaces(scenario: Scenario) -> list[dict]:
    return scenario.vm["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"]


def _vm_networks(scenario: Scenario) -> list[dict]:
    return scenario.vm["spec"]["template"]["spec"]["networks"]


def _vmi_devices(scenario: Scenario) -> dict:
    return scenario.vmi["spec"]["domain"]["devices"]


def _verdict(verdicts: list[Verdict], rule: str) -> Verdict:
    matches = [verdict for verdict in verdicts if verdict.rule == rule]
    assert len(matches) == 1, f"expected one verdict for rule {rule}, got {[v.rule for v in verdicts]}"
    return matches[0]


# --- Mutations used by the tables -----------------------------------------------------------


def _stop(scenario: Scenario) -> None:
    scenario.vmi = None
    scenario.vm["status"] = {"printableStatus": "Stopped", "created": False, "ready": False}


def _starting(scenario: Scenario) -> None:
    scenario.vmi = None
    scenario.vm["status"] = {"printableStatus": "Starting", "created": True, "ready": False}


def _vmi_phase(phase: str) -> Callable[[Scenario], None]:
    def mutate(scenario: Scenario) -> None:
        scenario.vmi["status"]["phase"] = phase

    return mutate


def _vmi_condition(condition_type: str, status: str, reason: str = "", message: str = "") -> Callable[[Scenario], None]:
    def mutate(scenario: Scenario) -> None:
        _set_condition(scenario.vmi, condition_type, status, reason, message)

    return mutate


def _remove_vmi_condition(condition_type: str) -> Callable[[Scenario], None]:
    def mutate(scenario: Scenario) -> None:
        conditions = scenario.vmi["status"]["conditions"]
        conditions[:] = [item for item in conditions if item["type"] != condition_type]

    return mutate


def _migration(phase: str | None, vmi_name: str = "web-01", name: str = "web-01-7kq2d") -> Callable[[Scenario], None]:
    def mutate(scenario: Scenario) -> None:
        migration = {
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachineInstanceMigration",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"vmiName": vmi_name},
            "status": {"phase": phase} if phase else {},
        }
        scenario.migrations.append(migration)

    return mutate


def _migration_state_running(scenario: Scenario) -> None:
    scenario.vmi["status"]["migrationState"] = {
        "migrationUid": "1d6d7273-275d-48e0-bb76-62e240b42aaf",
        "sourceNode": "node-1",
        "targetNode": "node-2",
        "startTimestamp": "2026-05-04T10:15:03Z",
    }


def _migration_state_done(scenario: Scenario) -> None:
    _migration_state_running(scenario)
    scenario.vmi["status"]["migrationState"].update({"endTimestamp": "2026-05-04T10:15:21Z", "completed": True})


def _kubevirt_available(status: str, reason: str) -> Callable[[Scenario], None]:
    def mutate(scenario: Scenario) -> None:
        _set_condition(scenario.kubevirt, "Available", status, reason)

    return mutate


def _no_kubevirt(scenario: Scenario) -> None:
    scenario.kubevirt = None


def _vmi_annotation(key: str, value: str) -> Callable[[Scenario], None]:
    def mutate(scenario: Scenario) -> None:
        scenario.vmi["metadata"].setdefault("annotations", {})[key] = value

    return mutate


def _pin_to_node(scenario: Scenario) -> None:
    scenario.vmi["spec"]["nodeSelector"] = {"kubernetes.io/hostname": "node-1"}


def _host_device(scenario: Scenario) -> None:
    _vmi_devices(scenario)["hostDevices"] = [{"name": "nvme0", "deviceName": "intel.com/nvme"}]


def _gpu(scenario: Scenario) -> None:
    _vmi_devices(scenario)["gpus"] = [{"name": "vgpu0", "deviceName": "nvidia.com/GRID_T4-1Q"}]


def _cdrom(scenario: Scenario) -> None:
    _vmi_devices(scenario)["disks"].append({"name": "cdrom-iso", "cdrom": {"bus": "sata"}})


def _container_disk(scenario: Scenario) -> None:
    scenario.vmi["spec"]["volumes"].append({"name": "tools", "containerDisk": {"image": "registry.example/tools:1"}})


def _node_not_ready(name: str) -> Callable[[Scenario], None]:
    def mutate(scenario: Scenario) -> None:
        _set_condition(_node(scenario, name), "Ready", "False", "KubeletNotReady")

    return mutate


def _remove_node_conditions(name: str) -> Callable[[Scenario], None]:
    def mutate(scenario: Scenario) -> None:
        _node(scenario, name).pop("status", None)

    return mutate


def _node_cordoned(name: str) -> Callable[[Scenario], None]:
    def mutate(scenario: Scenario) -> None:
        _node(scenario, name).setdefault("spec", {})["unschedulable"] = True

    return mutate


def _node_label(name: str, key: str, value: str | None) -> Callable[[Scenario], None]:
    def mutate(scenario: Scenario) -> None:
        labels = _node(scenario, name)["metadata"]["labels"]
        if value is None:
            labels.pop(key, None)
        else:
            labels[key] = value

    return mutate


def _node_taint(name: str, key: str, effect: str) -> Callable[[Scenario], None]:
    def mutate(scenario: Scenario) -> None:
        _node(scenario, name).setdefault("spec", {}).setdefault("taints", []).append({"key": key, "effect": effect})

    return mutate


def _tolerate(key: str) -> Callable[[Scenario], None]:
    def mutate(scenario: Scenario) -> None:
        scenario.vmi["spec"].setdefault("tolerations", []).append({"key": key, "operator": "Exists"})

    return mutate


def _edge_network(scenario: Scenario) -> None:
    # A cluster network "edge" that only node-1, the VMI's current node, carries.
    nad = copy.deepcopy(scenario.nads["default/vlan200"])
    nad["metadata"]["name"] = "edge300"
    nad["metadata"]["labels"]["network.harvesterhci.io/clusternetwork"] = "edge"
    scenario.nads["default/edge300"] = nad
    _node(scenario, "node-1")["metadata"]["labels"]["network.harvesterhci.io/edge"] = "true"


def _no_affinity(scenario: Scenario) -> None:
    scenario.vmi["spec"].pop("affinity")


def _set_interface(name: str, **changes: object) -> Callable[[Scenario], None]:
    def mutate(scenario: Scenario) -> None:
        interface = next(item for item in _vm_interfaces(scenario) if item["name"] == name)
        for key, value in changes.items():
            if value is None:
                interface.pop(key, None)
            else:
                interface[key] = value

    return mutate


def _observed_mac_taken(scenario: Scenario) -> None:
    """Give web-01's VLAN interface the MAC that db-legacy's nic-vlan100 was observed with."""
    scenario.macs_in_use["data"]["02:11:22:33:44:02"] = "default/web-01/nic-vlan100"


def _drop_mac_annotation(scenario: Scenario) -> None:
    scenario.vm["metadata"]["annotations"].pop("harvesterhci.io/mac-address")


def _drop_vmi_macs(scenario: Scenario) -> None:
    for interface in _vmi_devices(scenario)["interfaces"]:
        interface.pop("macAddress", None)
    for status in scenario.vmi["status"]["interfaces"]:
        status.pop("mac", None)


def _forget_nad(key: str) -> Callable[[Scenario], None]:
    def mutate(scenario: Scenario) -> None:
        scenario.nads.pop(key)

    return mutate


def _guest_cluster_label(scenario: Scenario) -> None:
    scenario.vm["metadata"]["labels"]["harvesterhci.io/creator"] = "docker-machine-driver-harvester"


def _nad_deleting(scenario: Scenario) -> None:
    scenario.nads["default/vlan200"]["metadata"]["deletionTimestamp"] = "2026-05-04T10:00:00Z"


def _nad_config(config: str) -> Callable[[Scenario], None]:
    def mutate(scenario: Scenario) -> None:
        scenario.nads["default/vlan200"]["spec"]["config"] = config

    return mutate


def _absent_interface(scenario: Scenario) -> None:
    _vm_interfaces(scenario).append({"name": "nic-old", "model": "virtio", "bridge": {}, "macAddress": "02:00:00:00:00:99", "state": "absent"})
    _vm_networks(scenario).append({"name": "nic-old", "multus": {"networkName": "default/vlan200"}})


def _vmi_only_interface(scenario: Scenario) -> None:
    _vmi_devices(scenario)["interfaces"].append({"name": "nic-gone", "model": "virtio", "bridge": {}})
    scenario.vmi["spec"]["networks"].append({"name": "nic-gone", "multus": {"networkName": "default/vlan200"}})


def _reserve(mac: str, group: str = "data") -> Callable[[Scenario], None]:
    def mutate(scenario: Scenario) -> None:
        scenario.reserved_macs.setdefault(group, {})[mac] = "op-0001"

    return mutate


def _hotplugged(count: int) -> Callable[[Scenario], None]:
    """Add `count` interfaces to the VMI spec as if they had been hot-plugged since it started."""

    def mutate(scenario: Scenario) -> None:
        for number in range(count):
            _vmi_devices(scenario)["interfaces"].append({"name": f"hot-{number}", "model": "virtio", "bridge": {}})
            scenario.vmi["spec"]["networks"].append({"name": f"hot-{number}", "multus": {"networkName": "default/vlan200"}})
        scenario.hotplugged_since_start = count

    return mutate


def _no_vm(scenario: Scenario) -> None:
    scenario.vm = None
    scenario.vmi = None
    scenario.vm_ref = "default/ghost"


def _vmi_deleting(scenario: Scenario) -> None:
    scenario.vmi["metadata"]["deletionTimestamp"] = "2026-05-04T10:00:00Z"
    scenario.vm["status"]["printableStatus"] = "Stopping"


def _vm_deleting(scenario: Scenario) -> None:
    scenario.vm["metadata"]["deletionTimestamp"] = "2026-05-04T10:00:00Z"


def _unchanged(scenario: Scenario) -> None:
    return None


def _combine(*mutations: Callable[[Scenario], None]) -> Callable[[Scenario], None]:
    def mutate(scenario: Scenario) -> None:
        for mutation in mutations:
            mutation(scenario)

    return mutate


# --- Hot-plug table -------------------------------------------------------------------------

LONG_NAME = "n" * 63

# (case id, VM, mutation, interface, network, MAC, allow_restart, rule, expected reason or None)
HOTPLUG_CASES = [
    ("vm-exists-pass", "web-01", _unchanged, "nic-2", "default/vlan200", None, False, "vm-exists", None),
    ("vm-exists-missing", "web-01", _no_vm, "nic-2", "default/vlan200", None, False, "vm-exists", Reason.VM_NOT_FOUND),
    ("vm-exists-deleting", "web-01", _vm_deleting, "nic-2", "default/vlan200", None, False, "vm-exists", Reason.VM_BEING_DELETED),
    ("vm-running-pass", "web-01", _unchanged, "nic-2", "default/vlan200", None, False, "vm-running", None),
    ("vm-running-stopped-cold", "web-01", _stop, "nic-2", "default/vlan200", None, False, "vm-running", None),
    ("vm-running-starting", "web-01", _starting, "nic-2", "default/vlan200", None, False, "vm-running", Reason.VM_NOT_RUNNING),
    ("vm-running-scheduling", "web-01", _vmi_phase("Scheduling"), "nic-2", "default/vlan200", None, False, "vm-running", Reason.VM_NOT_RUNNING),
    ("vm-running-vmi-deleting", "web-01", _vmi_deleting, "nic-2", "default/vlan200", None, False, "vm-running", Reason.VM_NOT_RUNNING),
    ("vm-ready-pass", "web-01", _unchanged, "nic-2", "default/vlan200", None, False, "vm-ready", None),
    ("vm-ready-false", "web-01", _vmi_condition("Ready", "False", "GuestNotRunning"), "nic-2", "default/vlan200", None, False, "vm-ready", Reason.VM_NOT_READY),
    ("vm-ready-missing", "web-01", _remove_vmi_condition("Ready"), "nic-2", "default/vlan200", None, False, "vm-ready", Reason.VM_NOT_READY),
    ("vm-ready-stopped", "web-01", _stop, "nic-2", "default/vlan200", None, False, "vm-ready", None),
    ("migration-none", "web-01", _unchanged, "nic-2", "default/vlan200", None, False, "no-migration-in-progress", None),
    ("migration-succeeded", "web-01", _migration("Succeeded"), "nic-2", "default/vlan200", None, False, "no-migration-in-progress", None),
    ("migration-failed", "web-01", _migration("Failed"), "nic-2", "default/vlan200", None, False, "no-migration-in-progress", None),
    ("migration-running", "web-01", _migration("Running"), "nic-2", "default/vlan200", None, False, "no-migration-in-progress", Reason.MIGRATION_IN_PROGRESS),
    ("migration-no-phase", "web-01", _migration(None), "nic-2", "default/vlan200", None, False, "no-migration-in-progress", Reason.MIGRATION_IN_PROGRESS),
    ("migration-workload-update", "web-01", _migration("Scheduling", name="kubevirt-workload-update-x2k9p"), "nic-2", "default/vlan200", None, False, "no-migration-in-progress", Reason.MIGRATION_IN_PROGRESS),
    ("migration-other-vmi", "web-01", _migration("Running", vmi_name="db-legacy"), "nic-2", "default/vlan200", None, False, "no-migration-in-progress", None),
    ("migration-state-running", "web-01", _migration_state_running, "nic-2", "default/vlan200", None, False, "no-migration-in-progress", Reason.MIGRATION_IN_PROGRESS),
    ("migration-state-done", "web-01", _migration_state_done, "nic-2", "default/vlan200", None, False, "no-migration-in-progress", None),
    ("migration-harvester-state", "web-01", _vmi_annotation("harvesterhci.io/migrationState", "Pending migration"), "nic-2", "default/vlan200", None, False, "no-migration-in-progress", Reason.MIGRATION_IN_PROGRESS),
    ("kubevirt-pass", "web-01", _unchanged, "nic-2", "default/vlan200", None, False, "kubevirt-ready", None),
    ("kubevirt-missing", "web-01", _no_kubevirt, "nic-2", "default/vlan200", None, False, "kubevirt-ready", Reason.KUBEVIRT_NOT_READY),
    ("kubevirt-unavailable", "web-01", _kubevirt_available("False", "DeploymentInProgress"), "nic-2", "default/vlan200", None, False, "kubevirt-ready", Reason.KUBEVIRT_NOT_READY),
    ("kubevirt-other-reason", "web-01", _kubevirt_available("True", "Deploying"), "nic-2", "default/vlan200", None, False, "kubevirt-ready", Reason.KUBEVIRT_NOT_READY),
    ("kubevirt-vm-missing", "web-01", _combine(_no_vm, _no_kubevirt), "nic-2", "default/vlan200", None, False, "kubevirt-ready", Reason.KUBEVIRT_NOT_READY),
    ("migratable-pass", "web-01", _unchanged, "nic-2", "default/vlan200", None, False, "live-migratable", None),
    ("migratable-stopped", "web-01", _stop, "nic-2", "default/vlan200", None, False, "live-migratable", None),
    ("migratable-starting", "web-01", _starting, "nic-2", "default/vlan200", None, False, "live-migratable", Reason.NOT_LIVE_MIGRATABLE),
    ("migratable-harvester-uid", "web-01", _vmi_annotation("harvesterhci.io/migrationUID", "1d6d7273"), "nic-2", "default/vlan200", None, False, "live-migratable", Reason.NOT_LIVE_MIGRATABLE),
    ("migratable-pinned", "web-01", _pin_to_node, "nic-2", "default/vlan200", None, False, "live-migratable", Reason.NOT_LIVE_MIGRATABLE),
    ("migratable-host-device", "web-01", _host_device, "nic-2", "default/vlan200", None, False, "live-migratable", Reason.NOT_LIVE_MIGRATABLE),
    ("migratable-gpu", "web-01", _gpu, "nic-2", "default/vlan200", None, False, "live-migratable", Reason.NOT_LIVE_MIGRATABLE),
    ("migratable-cdrom", "web-01", _cdrom, "nic-2", "default/vlan200", None, False, "live-migratable", Reason.NOT_LIVE_MIGRATABLE),
    ("migratable-container-disk", "web-01", _container_disk, "nic-2", "default/vlan200", None, False, "live-migratable", Reason.NOT_LIVE_MIGRATABLE),
    ("migratable-condition-false", "web-01", _vmi_condition("LiveMigratable", "False", "InterfaceNotLiveMigratable"), "nic-2", "default/vlan200", None, False, "live-migratable", Reason.NOT_LIVE_MIGRATABLE),
    ("migratable-condition-missing", "web-01", _remove_vmi_condition("LiveMigratable"), "nic-2", "default/vlan200", None, False, "live-migratable", Reason.NOT_LIVE_MIGRATABLE),
    ("target-pass", "web-01", _unchanged, "nic-2", "default/vlan200", None, False, "migration-target", None),
    ("target-stopped", "web-01", _combine(_stop, _node_not_ready("node-2")), "nic-2", "default/vlan200", None, False, "migration-target", None),
    ("target-not-ready", "web-01", _node_not_ready("node-2"), "nic-2", "default/vlan200", None, False, "migration-target", Reason.NO_MIGRATION_TARGET),
    ("target-cordoned", "web-01", _node_cordoned("node-2"), "nic-2", "default/vlan200", None, False, "migration-target", Reason.NO_MIGRATION_TARGET),
    ("target-kubevirt-unschedulable", "web-01", _node_label("node-2", "kubevirt.io/schedulable", "false"), "nic-2", "default/vlan200", None, False, "migration-target", Reason.NO_MIGRATION_TARGET),
    ("target-tainted", "web-01", _node_taint("node-2", "maintenance", "NoSchedule"), "nic-2", "default/vlan200", None, False, "migration-target", Reason.NO_MIGRATION_TARGET),
    ("target-tainted-tolerated", "web-01", _combine(_node_taint("node-2", "maintenance", "NoSchedule"), _tolerate("maintenance")), "nic-2", "default/vlan200", None, False, "migration-target", None),
    ("target-prefer-taint", "web-01", _node_taint("node-2", "maintenance", "PreferNoSchedule"), "nic-2", "default/vlan200", None, False, "migration-target", None),
    ("target-new-network-source-only", "web-01", _edge_network, "nic-2", "default/edge300", None, False, "migration-target", Reason.NO_MIGRATION_TARGET),
    ("target-attached-network", "web-01", _combine(_no_affinity, _node_cordoned("node-2")), "nic-2", "default/overlay1", None, False, "migration-target", Reason.NO_MIGRATION_TARGET),
    ("target-attached-nad-unknown", "web-01", _combine(_no_affinity, _node_cordoned("node-2"), _forget_nad("default/vlan100")), "nic-2", "default/overlay1", None, False, "migration-target", None),
    ("target-attached-absent", "web-01", _combine(_no_affinity, _node_cordoned("node-2"), _set_interface("nic-vlan100", state="absent")), "nic-2", "default/overlay1", None, False, "migration-target", None),
    ("target-affinity-unmet", "web-01", _node_label("node-2", "network.harvesterhci.io/data", None), "nic-2", "default/overlay1", None, False, "migration-target", Reason.NO_MIGRATION_TARGET),
    ("guest-node-pass", "web-01", _unchanged, "nic-2", "default/vlan200", None, False, "not-guest-cluster-node", None),
    ("guest-node-rke2", "rke2-pool1-abcde", _unchanged, "nic-2", "default/vlan200", None, False, "not-guest-cluster-node", Reason.GUEST_CLUSTER_NODE),
    ("guest-node-stopped", "web-01", _combine(_stop, _guest_cluster_label), "nic-2", "default/vlan200", None, False, "not-guest-cluster-node", Reason.GUEST_CLUSTER_NODE),
    ("macs-pass", "web-01", _unchanged, "nic-2", "default/vlan200", None, False, "macs-in-spec", None),
    ("macs-missing", "db-legacy", _unchanged, "nic-2", "default/vlan200", None, False, "macs-in-spec", Reason.MAC_MISSING_IN_SPEC),
    ("macs-missing-restart", "db-legacy", _unchanged, "nic-2", "default/vlan200", None, True, "macs-in-spec", None),
    ("macs-missing-stopped", "db-legacy", _stop, "nic-2", "default/vlan200", None, False, "macs-in-spec", None),
    ("macs-unobserved-stopped", "db-legacy", _combine(_stop, _drop_mac_annotation), "nic-2", "default/vlan200", None, False, "macs-in-spec", Reason.MAC_MISSING_IN_SPEC),
    ("macs-unobserved-restart", "db-legacy", _combine(_drop_mac_annotation, _drop_vmi_macs), "nic-2", "default/vlan200", None, True, "macs-in-spec", Reason.MAC_MISSING_IN_SPEC),
    ("macs-observed-in-vmi", "db-legacy", _drop_mac_annotation, "nic-2", "default/vlan200", None, True, "macs-in-spec", None),
    ("macs-observed-taken", "db-legacy", _observed_mac_taken, "nic-2", "default/vlan200", None, True, "macs-in-spec", Reason.MAC_IN_USE),
    ("macs-observed-taken-stopped", "db-legacy", _combine(_stop, _observed_mac_taken), "nic-2", "default/vlan200", None, False, "macs-in-spec", Reason.MAC_IN_USE),
    ("network-qualified", "web-01", _unchanged, "nic-2", "default/vlan200", None, False, "network-name", None),
    ("network-bare", "web-01", _unchanged, "nic-2", "vlan200", None, False, "network-name", None),
    ("network-two-slashes", "web-01", _unchanged, "nic-2", "default/vlan/200", None, False, "network-name", Reason.NETWORK_NAME_INVALID),
    ("network-empty-namespace", "web-01", _unchanged, "nic-2", "/vlan200", None, False, "network-name", Reason.NETWORK_NAME_INVALID),
    ("network-empty", "web-01", _unchanged, "nic-2", "", None, False, "network-name", Reason.NETWORK_NAME_INVALID),
    ("nad-pass", "web-01", _unchanged, "nic-2", "default/vlan200", None, False, "nad-exists", None),
    ("nad-missing", "web-01", _unchanged, "nic-2", "default/vlan300", None, False, "nad-exists", Reason.NAD_NOT_FOUND),
    ("nad-other-namespace", "web-01", _unchanged, "nic-2", "tenant-a/vlan200", None, False, "nad-exists", Reason.NAD_NOT_FOUND),
    ("nad-not-deleting", "web-01", _unchanged, "nic-2", "default/vlan200", None, False, "nad-not-deleting", None),
    ("nad-deleting", "web-01", _nad_deleting, "nic-2", "default/vlan200", None, False, "nad-not-deleting", Reason.NAD_BEING_DELETED),
    ("nad-namespace-pass", "web-01", _unchanged, "nic-2", "default/vlan200", None, False, "nad-namespace", None),
    ("nad-storage-network", "web-01", _unchanged, "nic-2", "harvester-system/storagenetwork-x7k2p", None, False, "nad-namespace", Reason.NAD_SYSTEM_NAMESPACE),
    ("nad-vlan-bridge", "web-01", _unchanged, "nic-2", "default/vlan200", None, False, "nad-bridge", None),
    ("nad-untagged-bridge", "web-01", _unchanged, "nic-2", "default/untagged-data", None, False, "nad-bridge", None),
    ("nad-trunk-bridge", "web-01", _unchanged, "nic-2", "default/trunk-200-299", None, False, "nad-bridge", None),
    ("nad-overlay", "web-01", _unchanged, "nic-2", "default/overlay1", None, False, "nad-bridge", Reason.NAD_NOT_BRIDGE),
    ("nad-empty-type", "web-01", _nad_config('{"cniVersion":"0.3.1","bridge":"data-br"}'), "nic-2", "default/vlan200", None, False, "nad-bridge", Reason.NAD_NOT_BRIDGE),
    ("nad-type-case", "web-01", _nad_config('{"type":"Bridge"}'), "nic-2", "default/vlan200", None, False, "nad-bridge", Reason.NAD_NOT_BRIDGE),
    ("nad-config-broken", "web-01", _nad_config('{"type":"bridge"'), "nic-2", "default/vlan200", None, False, "nad-bridge", Reason.NAD_CONFIG_INVALID),
    ("nad-config-list", "web-01", _nad_config('["bridge"]'), "nic-2", "default/vlan200", None, False, "nad-bridge", Reason.NAD_CONFIG_INVALID),
    ("name-pass", "web-01", _unchanged, "nic_2-A", "default/vlan200", None, False, "interface-name-valid", None),
    ("name-max-length", "web-01", _unchanged, LONG_NAME, "default/vlan200", None, False, "interface-name-valid", None),
    ("name-too-long", "web-01", _unchanged, LONG_NAME + "n", "default/vlan200", None, False, "interface-name-valid", Reason.INTERFACE_NAME_INVALID),
    ("name-space", "web-01", _unchanged, "nic 2", "default/vlan200", None, False, "interface-name-valid", Reason.INTERFACE_NAME_INVALID),
    ("name-dot", "web-01", _unchanged, "nic.2", "default/vlan200", None, False, "interface-name-valid", Reason.INTERFACE_NAME_INVALID),
    ("name-empty", "web-01", _unchanged, "", "default/vlan200", None, False, "interface-name-valid", Reason.INTERFACE_NAME_INVALID),
    ("name-newline", "web-01", _unchanged, "nic-2\n", "default/vlan200", None, False, "interface-name-valid", Reason.INTERFACE_NAME_INVALID),
    ("name-unique", "web-01", _unchanged, "nic-2", "default/vlan200", None, False, "interface-name-unique", None),
    ("name-taken", "web-01", _unchanged, "nic-vlan100", "default/vlan200", None, False, "interface-name-unique", Reason.INTERFACE_NAME_TAKEN),
    ("name-taken-default", "web-01", _unchanged, "default", "default/vlan200", None, False, "interface-name-unique", Reason.INTERFACE_NAME_TAKEN),
    ("name-taken-absent", "web-01", _absent_interface, "nic-old", "default/vlan200", None, False, "interface-name-unique", Reason.INTERFACE_NAME_TAKEN),
    ("name-taken-vmi-only", "web-01", _vmi_only_interface, "nic-gone", "default/vlan200", None, False, "interface-name-unique", Reason.INTERFACE_NAME_TAKEN),
    ("mac-none", "web-01", _unchanged, "nic-2", "default/vlan200", None, False, "mac-valid", None),
    ("mac-valid", "web-01", _unchanged, "nic-2", "default/vlan200", "0A-51-D7-30-9C-44", False, "mac-valid", None),
    ("mac-malformed", "web-01", _unchanged, "nic-2", "default/vlan200", "0a:51:d7:30:9c", False, "mac-valid", Reason.MAC_INVALID),
    ("mac-too-long", "web-01", _unchanged, "nic-2", "default/vlan200", "0a:51:d7:30:9c:44:00:01", False, "mac-valid", Reason.MAC_INVALID),
    ("mac-zero", "web-01", _unchanged, "nic-2", "default/vlan200", "00:00:00:00:00:00", False, "mac-valid", Reason.MAC_INVALID),
    ("mac-unicast", "web-01", _unchanged, "nic-2", "default/vlan200", "0a:51:d7:30:9c:44", False, "mac-unicast", None),
    ("mac-multicast", "web-01", _unchanged, "nic-2", "default/vlan200", "01:00:5e:00:00:01", False, "mac-unicast", Reason.MAC_NOT_UNICAST),
    ("mac-broadcast", "web-01", _unchanged, "nic-2", "default/vlan200", "ff:ff:ff:ff:ff:ff", False, "mac-unicast", Reason.MAC_NOT_UNICAST),
    ("mac-unique", "web-01", _unchanged, "nic-2", "default/vlan200", "0a:51:d7:30:9c:44", False, "mac-unique", None),
    ("mac-in-use", "web-01", _unchanged, "nic-2", "default/vlan200", "06:b2:19:c4:55:e1", False, "mac-unique", Reason.MAC_IN_USE),
    ("mac-in-use-upper", "web-01", _unchanged, "nic-2", "default/vlan200", "06-B2-19-C4-55-E1", False, "mac-unique", Reason.MAC_IN_USE),
    ("mac-in-use-other-vm", "web-01", _unchanged, "nic-2", "default/vlan200", "02:aa:bb:cc:00:02", False, "mac-unique", Reason.MAC_IN_USE),
    ("mac-other-cluster-network", "web-01", _unchanged, "nic-2", "default/overlay1", "06:b2:19:c4:55:e1", False, "mac-unique", None),
    ("mac-pod-network-group", "web-01", _unchanged, "nic-2", "default/overlay1", "02:3c:8e:41:7a:10", False, "mac-unique", None),
    ("mac-reserved", "web-01", _reserve("0A:51:D7:30:9C:44"), "nic-2", "default/vlan200", "0a:51:d7:30:9c:44", False, "mac-unique", Reason.MAC_IN_USE),
    ("mac-reserved-other-network", "web-01", _reserve("0a:51:d7:30:9c:44", "mgmt"), "nic-2", "default/vlan200", "0a:51:d7:30:9c:44", False, "mac-unique", None),
    ("ports-pass", "web-01", _unchanged, "nic-2", "default/vlan200", None, False, "root-ports", None),
    ("ports-seven-used", "web-01", _hotplugged(7), "nic-2", "default/vlan200", None, False, "root-ports", None),
    ("ports-exhausted", "web-01", _hotplugged(8), "nic-2", "default/vlan200", None, False, "root-ports", Reason.ROOT_PORTS_EXHAUSTED),
    ("ports-root-complex", "web-01", _vmi_annotation("kubevirt.io/placePCIDevicesOnRootComplex", "true"), "nic-2", "default/vlan200", None, False, "root-ports", Reason.ROOT_PORTS_EXHAUSTED),
    ("ports-stopped", "web-01", _combine(_hotplugged(8), _stop), "nic-2", "default/vlan200", None, False, "root-ports", None),
]


@pytest.mark.parametrize(
    ("vm_name", "mutate", "interface", "network", "mac", "allow_restart", "rule", "reason"),
    [pytest.param(*case[1:], id=case[0]) for case in HOTPLUG_CASES],
)
def test_hotplug_rule(
    vm_name: str,
    mutate: Callable[[Scenario], None],
    interface: str,
    network: str,
    mac: str | None,
    allow_restart: bool,
    rule: str,
    reason: Reason | None,
) -> None:
    scenario = _scenario(vm_name)
    mutate(scenario)

    verdicts = check_hotplug(scenario.view(network), interface=interface, network=network, mac=mac, allow_restart=allow_restart)
    verdict = _verdict(verdicts, rule)

    assert verdict.passed is (reason is None), verdict.message
    assert verdict.reason == reason
    assert verdict.message


# --- Hot-unplug table -----------------------------------------------------------------------


def _bridge_on_pod_network(scenario: Scenario) -> None:
    interface = next(item for item in _vm_interfaces(scenario) if item["name"] == "default")
    interface.pop("masquerade")
    interface["bridge"] = {}


def _ordinal_pod_interface(scenario: Scenario) -> None:
    status = next(item for item in scenario.vmi["status"]["interfaces"] if item["name"] == "nic-vlan100")
    status["podInterfaceName"] = "net1"


def _only_interface(scenario: Scenario) -> None:
    spec = scenario.vm["spec"]["template"]["spec"]
    spec["domain"]["devices"]["interfaces"] = [item for item in _vm_interfaces(scenario) if item["name"] == "nic-vlan100"]
    spec["networks"] = [item for item in _vm_networks(scenario) if item["name"] == "nic-vlan100"]


def _pending_unplugs(count: int) -> Callable[[Scenario], None]:
    def mutate(scenario: Scenario) -> None:
        scenario.pending_unplugs = count

    return mutate


def _third_interface(scenario: Scenario) -> None:
    _vm_interfaces(scenario).append({"name": "nic-2", "model": "virtio", "bridge": {}, "macAddress": "0a:51:d7:30:9c:44"})
    _vm_networks(scenario).append({"name": "nic-2", "multus": {"networkName": "default/vlan200"}})


# (case id, VM, mutation, interface, allow_restart, rule, expected reason or None)
UNPLUG_CASES = [
    ("vm-exists-pass", "web-01", _unchanged, "nic-vlan100", False, "vm-exists", None),
    ("vm-exists-missing", "web-01", _no_vm, "nic-vlan100", False, "vm-exists", Reason.VM_NOT_FOUND),
    ("vm-exists-deleting", "web-01", _vm_deleting, "nic-vlan100", False, "vm-exists", Reason.VM_BEING_DELETED),
    ("vm-running-pass", "web-01", _unchanged, "nic-vlan100", False, "vm-running", None),
    ("vm-running-stopped-cold", "web-01", _stop, "nic-vlan100", False, "vm-running", None),
    ("vm-ready-pass", "web-01", _unchanged, "nic-vlan100", False, "vm-ready", None),
    ("migration-none", "web-01", _unchanged, "nic-vlan100", False, "no-migration-in-progress", None),
    ("kubevirt-pass", "web-01", _unchanged, "nic-vlan100", False, "kubevirt-ready", None),
    ("migratable-pass", "web-01", _unchanged, "nic-vlan100", False, "live-migratable", None),
    ("guest-node-pass", "web-01", _unchanged, "nic-vlan100", False, "not-guest-cluster-node", None),
    ("macs-pass", "web-01", _unchanged, "nic-vlan100", False, "macs-in-spec", None),
    ("vm-running-scheduling", "web-01", _vmi_phase("Scheduling"), "nic-vlan100", False, "vm-running", Reason.VM_NOT_RUNNING),
    ("vm-ready-false", "web-01", _vmi_condition("Ready", "False"), "nic-vlan100", False, "vm-ready", Reason.VM_NOT_READY),
    ("migration-running", "web-01", _migration("Running"), "nic-vlan100", False, "no-migration-in-progress", Reason.MIGRATION_IN_PROGRESS),
    ("kubevirt-missing", "web-01", _no_kubevirt, "nic-vlan100", False, "kubevirt-ready", Reason.KUBEVIRT_NOT_READY),
    ("migratable-cdrom", "web-01", _cdrom, "nic-vlan100", False, "live-migratable", Reason.NOT_LIVE_MIGRATABLE),
    ("target-pass", "web-01", _unchanged, "nic-vlan100", False, "migration-target", None),
    ("target-not-ready", "web-01", _node_not_ready("node-2"), "nic-vlan100", False, "migration-target", Reason.NO_MIGRATION_TARGET),
    ("target-leaving-network", "web-01", _combine(_no_affinity, _node_cordoned("node-2")), "nic-vlan100", False, "migration-target", None),
    ("target-staying-network", "web-01", _combine(_third_interface, _no_affinity, _node_cordoned("node-2")), "nic-2", False, "migration-target", Reason.NO_MIGRATION_TARGET),
    ("guest-node-rke2", "rke2-pool1-abcde", _unchanged, "nic-vlan100", False, "not-guest-cluster-node", Reason.GUEST_CLUSTER_NODE),
    ("macs-missing", "db-legacy", _unchanged, "nic-vlan100", False, "macs-in-spec", Reason.MAC_MISSING_IN_SPEC),
    ("macs-missing-restart", "db-legacy", _unchanged, "nic-vlan100", True, "macs-in-spec", None),
    ("interface-exists", "web-01", _unchanged, "nic-vlan100", False, "interface-exists", None),
    ("interface-missing", "web-01", _unchanged, "nic-9", False, "interface-exists", Reason.INTERFACE_NOT_FOUND),
    ("interface-not-absent", "web-01", _unchanged, "nic-vlan100", False, "interface-not-absent", None),
    ("interface-absent", "web-01", _set_interface("nic-vlan100", state="absent"), "nic-vlan100", False, "interface-not-absent", Reason.INTERFACE_ALREADY_ABSENT),
    ("interface-state-down", "web-01", _set_interface("nic-vlan100", state="down"), "nic-vlan100", False, "interface-not-absent", None),
    ("interface-bridge", "web-01", _unchanged, "nic-vlan100", False, "interface-bridge", None),
    ("interface-masquerade", "web-01", _unchanged, "default", False, "interface-bridge", Reason.INTERFACE_NOT_BRIDGE),
    ("interface-sriov", "web-01", _set_interface("nic-vlan100", bridge=None, sriov={}), "nic-vlan100", False, "interface-bridge", Reason.INTERFACE_NOT_BRIDGE),
    ("interface-virtio", "web-01", _unchanged, "nic-vlan100", False, "interface-virtio", None),
    ("interface-no-model", "web-01", _set_interface("nic-vlan100", model=None), "nic-vlan100", False, "interface-virtio", None),
    ("interface-e1000", "web-01", _set_interface("nic-vlan100", model="e1000"), "nic-vlan100", False, "interface-virtio", Reason.INTERFACE_NOT_VIRTIO),
    ("interface-secondary", "web-01", _unchanged, "nic-vlan100", False, "interface-not-pod-network", None),
    ("interface-pod-bridge", "web-01", _bridge_on_pod_network, "default", False, "interface-not-pod-network", Reason.INTERFACE_ON_POD_NETWORK),
    ("pod-name-hashed", "web-01", _unchanged, "nic-vlan100", False, "pod-interface-name", None),
    ("pod-name-ordinal", "web-01", _ordinal_pod_interface, "nic-vlan100", False, "pod-interface-name", Reason.INTERFACE_ORDINAL_NAME),
    ("last-pass", "web-01", _unchanged, "nic-vlan100", False, "not-last-interface", None),
    ("last-only-one", "web-01", _only_interface, "nic-vlan100", False, "not-last-interface", Reason.LAST_INTERFACE),
    ("last-other-absent", "web-01", _combine(_third_interface, _set_interface("default", state="absent")), "nic-vlan100", False, "not-last-interface", None),
    ("last-pending-unplug", "web-01", _pending_unplugs(1), "nic-vlan100", False, "not-last-interface", Reason.LAST_INTERFACE),
    ("last-pending-three", "web-01", _combine(_third_interface, _pending_unplugs(1)), "nic-vlan100", False, "not-last-interface", None),
]


@pytest.mark.parametrize(
    ("vm_name", "mutate", "interface", "allow_restart", "rule", "reason"),
    [pytest.param(*case[1:], id=case[0]) for case in UNPLUG_CASES],
)
def test_unplug_rule(
    vm_name: str,
    mutate: Callable[[Scenario], None],
    interface: str,
    allow_restart: bool,
    rule: str,
    reason: Reason | None,
) -> None:
    scenario = _scenario(vm_name)
    mutate(scenario)

    verdicts = check_unplug(scenario.view(), interface=interface, allow_restart=allow_restart)
    verdict = _verdict(verdicts, rule)

    assert verdict.passed is (reason is None), verdict.message
    assert verdict.reason == reason
    assert verdict.message


# --- Whole-request behaviour ----------------------------------------------------------------

HOTPLUG_RULES = [
    "vm-exists",
    "vm-running",
    "vm-ready",
    "no-migration-in-progress",
    "kubevirt-ready",
    "live-migratable",
    "migration-target",
    "not-guest-cluster-node",
    "macs-in-spec",
    "network-name",
    "nad-exists",
    "nad-not-deleting",
    "nad-namespace",
    "nad-bridge",
    "interface-name-valid",
    "interface-name-unique",
    "mac-valid",
    "mac-unicast",
    "mac-unique",
    "root-ports",
]

UNPLUG_RULES = [
    "vm-exists",
    "vm-running",
    "vm-ready",
    "no-migration-in-progress",
    "kubevirt-ready",
    "live-migratable",
    "migration-target",
    "not-guest-cluster-node",
    "macs-in-spec",
    "interface-exists",
    "interface-not-absent",
    "interface-bridge",
    "interface-virtio",
    "interface-not-pod-network",
    "pod-interface-name",
    "not-last-interface",
]


def test_hotplug_web01_all_pass() -> None:
    scenario = _scenario("web-01")

    verdicts = check_hotplug(scenario.view("default/vlan200"), interface="nic-2", network="default/vlan200", mac="0a:51:d7:30:9c:44")

    assert [verdict.rule for verdict in verdicts] == HOTPLUG_RULES
    assert first_failure(verdicts) is None
    assert all(verdict.reason is None for verdict in verdicts)


def test_unplug_web01_all_pass() -> None:
    scenario = _scenario("web-01")

    verdicts = check_unplug(scenario.view(), interface="nic-vlan100")

    assert [verdict.rule for verdict in verdicts] == UNPLUG_RULES
    assert first_failure(verdicts) is None


def test_hotplug_db_legacy_first_failure() -> None:
    scenario = _scenario("db-legacy")

    verdicts = check_hotplug(scenario.view("default/overlay1"), interface="nic-2", network="default/overlay1", mac=None)
    failure = first_failure(verdicts)

    assert failure is not None
    assert failure.reason == Reason.MAC_MISSING_IN_SPEC
    assert [verdict.reason for verdict in verdicts if not verdict.passed] == [Reason.MAC_MISSING_IN_SPEC, Reason.NAD_NOT_BRIDGE]


def test_hotplug_missing_vm_skips_vm_rules() -> None:
    scenario = _scenario("web-01")
    _no_vm(scenario)

    verdicts = check_hotplug(scenario.view("default/vlan200"), interface="nic-2", network="vlan200", mac=None)
    rules = [verdict.rule for verdict in verdicts]

    assert rules[0] == "vm-exists"
    assert "default/ghost" in verdicts[0].message
    assert "vm-running" not in rules
    assert "root-ports" not in rules
    assert "nad-exists" in rules


def test_unplug_missing_vm_single_verdict() -> None:
    scenario = _scenario("web-01")
    _no_vm(scenario)

    verdicts = check_unplug(scenario.view(), interface="nic-vlan100")

    assert [verdict.rule for verdict in verdicts] == ["vm-exists"]
    assert verdicts[0].reason == Reason.VM_NOT_FOUND


def test_unplug_missing_interface_skips_rules() -> None:
    scenario = _scenario("web-01")

    verdicts = check_unplug(scenario.view(), interface="nic-9")
    rules = [verdict.rule for verdict in verdicts]

    assert rules[-1] == "interface-exists"
    assert "nic-vlan100" in verdicts[-1].message


def test_hotplug_invalid_mac_skips_rules() -> None:
    scenario = _scenario("web-01")

    verdicts = check_hotplug(scenario.view("default/vlan200"), interface="nic-2", network="default/vlan200", mac="nope")
    rules = [verdict.rule for verdict in verdicts]

    assert "mac-valid" in rules
    assert "mac-unicast" not in rules
    assert "mac-unique" not in rules


def test_hotplug_stopped_is_cold() -> None:
    scenario = _scenario("web-01")
    _stop(scenario)
    _node_not_ready("node-2")(scenario)

    view = scenario.view("default/vlan200")
    verdicts = check_hotplug(view, interface="nic-2", network="default/vlan200", mac=None)

    assert is_cold(view)
    assert "cold" in _verdict(verdicts, "vm-running").message
    assert first_failure(verdicts) is None


def test_unplug_stopped_legacy_passes() -> None:
    scenario = _scenario("db-legacy")
    _stop(scenario)

    verdicts = check_unplug(scenario.view(), interface="nic-vlan100")

    assert first_failure(verdicts) is None
    assert "backfill writes the observed MACs first" in _verdict(verdicts, "macs-in-spec").message
    assert "no migration is needed" in _verdict(verdicts, "live-migratable").message


def test_hotplug_legacy_restart_passes() -> None:
    scenario = _scenario("db-legacy")

    verdicts = check_hotplug(
        scenario.view("default/vlan200"), interface="nic-2", network="default/vlan200", mac=None, allow_restart=True
    )

    assert first_failure(verdicts) is None
    assert "restarts the VM" in _verdict(verdicts, "macs-in-spec").message


def test_root_complex_message() -> None:
    scenario = _scenario("web-01")
    _vmi_annotation("kubevirt.io/placePCIDevicesOnRootComplex", "true")(scenario)

    verdicts = check_hotplug(scenario.view("default/vlan200"), interface="nic-2", network="default/vlan200", mac=None)
    message = _verdict(verdicts, "root-ports").message

    assert "kubevirt.io/placePCIDevicesOnRootComplex=true" in message
    assert "restart" in message


def test_running_is_not_cold() -> None:
    scenario = _scenario("web-01")

    assert not is_cold(scenario.view())


def test_final_vmi_stopped_is_cold() -> None:
    scenario = _scenario("web-01")
    scenario.vmi["status"]["phase"] = "Succeeded"
    scenario.vm["status"] = {"printableStatus": "Stopped"}

    assert is_cold(scenario.view())


def test_every_verdict_has_consistent_reason() -> None:
    for case in HOTPLUG_CASES:
        scenario = _scenario(case[1])
        case[2](scenario)
        network = case[4]
        for verdict in check_hotplug(scenario.view(network), interface=case[3], network=network, mac=case[5], allow_restart=case[6]):
            assert (verdict.reason is None) is verdict.passed, f"{case[0]}: {verdict}"


# --- Messages -------------------------------------------------------------------------------


def test_mac_missing_message_names_interfaces() -> None:
    scenario = _scenario("db-legacy")

    verdicts = check_hotplug(scenario.view("default/vlan200"), interface="nic-2", network="default/vlan200", mac=None)
    message = _verdict(verdicts, "macs-in-spec").message

    assert "default/db-legacy" in message
    assert "default, nic-vlan100" in message
    assert "--allow-restart" in message


def test_mac_in_use_message_names_owner() -> None:
    scenario = _scenario("web-01")

    verdicts = check_hotplug(scenario.view("default/vlan200"), interface="nic-2", network="default/vlan200", mac="02:AA:BB:CC:00:02")
    message = _verdict(verdicts, "mac-unique").message

    assert message.startswith("duplicate mac address present for vm default/web-01 for cluster network data")
    assert "default/rke2-pool1-abcde/nic-vlan100" in message
    assert "02:aa:bb:cc:00:02" in message


def test_name_taken_message_suggests_free_name() -> None:
    scenario = _scenario("web-01")
    _third_interface(scenario)

    verdicts = check_hotplug(scenario.view("default/vlan200"), interface="nic-2", network="default/vlan200", mac=None)
    message = _verdict(verdicts, "interface-name-unique").message

    assert "nic-1" in message
    assert "VM interface" in message


def test_name_taken_absent_message() -> None:
    scenario = _scenario("web-01")
    _absent_interface(scenario)

    verdicts = check_hotplug(scenario.view("default/vlan200"), interface="nic-old", network="default/vlan200", mac=None)
    message = _verdict(verdicts, "interface-name-unique").message

    assert "marked absent keeps its name" in message


def test_no_target_message_names_nodes() -> None:
    scenario = _scenario("web-01")
    _edge_network(scenario)

    verdicts = check_hotplug(scenario.view("default/edge300"), interface="nic-2", network="default/edge300", mac=None)
    message = _verdict(verdicts, "migration-target").message

    assert "network.harvesterhci.io/edge=true" in message
    assert "node node-2 does not have network.harvesterhci.io/edge=true" in message
    assert "node-3" in message
    assert "node node-1 " not in message


def test_nad_config_message_names_config() -> None:
    scenario = _scenario("web-01")
    _nad_config("{broken")(scenario)

    verdicts = check_hotplug(scenario.view("default/vlan200"), interface="nic-2", network="default/vlan200", mac=None)
    message = _verdict(verdicts, "nad-bridge").message

    assert message.startswith("failed to unmarshal nad default/vlan200 config")
    assert "{broken" in message


def test_reason_values_equal_names() -> None:
    for reason in Reason:
        assert reason.value == reason.name


def test_reason_descriptions_complete() -> None:
    assert set(DESCRIPTIONS) == set(Reason)
    for reason in Reason:
        assert reason.description.endswith(".")
        assert "\n" not in reason.description


# --- is_live_migratable ---------------------------------------------------------------------

# (case id, mutation, text expected in the message); Harvester applies them in this order.
MIGRATABLE_CASES = [
    ("not-running", _vmi_phase("Pending"), "as it is not running"),
    ("harvester-migration", _vmi_annotation("harvesterhci.io/migrationUID", "1d6d7273"), "already in a migrating state"),
    ("node-selector", _pin_to_node, "as node selector is set"),
    ("host-device", _host_device, "PCIe or USB devices are attached (nvme0)"),
    ("gpu", _gpu, "vGPU devices are attached (vgpu0)"),
    ("cdrom", _cdrom, "CD-ROM or container disk is set (cdrom-iso)"),
    ("container-disk", _container_disk, "CD-ROM or container disk is set (tools)"),
    ("condition-false", _vmi_condition("LiveMigratable", "False", "InterfaceNotLiveMigratable", "cannot migrate VMI"), "reason: InterfaceNotLiveMigratable"),
    ("condition-missing", _remove_vmi_condition("LiveMigratable"), "has not reported the LiveMigratable condition"),
]


@pytest.mark.parametrize(("mutate", "expected"), [pytest.param(*case[1:], id=case[0]) for case in MIGRATABLE_CASES])
def test_live_migratable_rule(mutate: Callable[[Scenario], None], expected: str) -> None:
    scenario = _scenario("web-01")
    mutate(scenario)

    verdict = is_live_migratable(scenario.vmi)

    assert not verdict.passed
    assert verdict.reason == Reason.NOT_LIVE_MIGRATABLE
    assert verdict.message.startswith("VM default/web-01 is not live migratable as")
    assert expected in verdict.message


def test_live_migratable_pass() -> None:
    scenario = _scenario("web-01")

    verdict = is_live_migratable(scenario.vmi)

    assert verdict.passed
    assert verdict.reason is None


def test_live_migratable_order() -> None:
    scenario = _scenario("web-01")
    _cdrom(scenario)
    _gpu(scenario)
    _vmi_condition("LiveMigratable", "False", "DisksNotLiveMigratable")(scenario)

    verdict = is_live_migratable(scenario.vmi)

    assert "vGPU" in verdict.message
    assert "CD-ROM" not in verdict.message


def test_live_migratable_bridge_advice() -> None:
    scenario = _scenario("web-01")
    _vmi_condition("LiveMigratable", "False", "InterfaceNotLiveMigratable")(scenario)

    verdict = is_live_migratable(scenario.vmi)

    assert "kubevirt.io/allow-pod-bridge-network-live-migration" in verdict.message


# --- migration_targets ----------------------------------------------------------------------


def _affinity(*expressions: dict) -> Callable[[Scenario], None]:
    def mutate(scenario: Scenario) -> None:
        scenario.vmi["spec"]["affinity"] = {
            "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": list(expressions)}]}}
        }

    return mutate


def _node_selector(labels: dict[str, str]) -> Callable[[Scenario], None]:
    def mutate(scenario: Scenario) -> None:
        scenario.vmi["spec"]["nodeSelector"] = labels

    return mutate


def _match_fields(scenario: Scenario) -> None:
    scenario.vmi["spec"]["affinity"] = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["node-2"]}]}]
            }
        }
    }


def _empty_term(scenario: Scenario) -> None:
    scenario.vmi["spec"]["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{}]}}}


def _two_terms(scenario: Scenario) -> None:
    scenario.vmi["spec"]["affinity"] = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["node-3"]}]},
                    {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["node-2"]}]},
                ]
            }
        }
    }


def _rack_labels(scenario: Scenario) -> None:
    _node(scenario, "node-2")["metadata"]["labels"]["example.com/rack"] = "4"
    _node(scenario, "node-3")["metadata"]["labels"]["example.com/rack"] = "12"


# (case id, mutation, extra node labels, expected targets); web-01 runs on node-1.
TARGET_CASES = [
    ("manifest-affinity", _unchanged, {}, ["node-2"]),
    ("no-affinity", _no_affinity, {}, ["node-2", "node-3"]),
    ("no-affinity-mgmt", _no_affinity, {"network.harvesterhci.io/mgmt": "true"}, ["node-2", "node-3"]),
    ("no-affinity-data", _no_affinity, {"network.harvesterhci.io/data": "true"}, ["node-2"]),
    ("not-in", _affinity({"key": "network.harvesterhci.io/data", "operator": "NotIn", "values": ["true"]}), {}, ["node-3"]),
    ("exists", _affinity({"key": "network.harvesterhci.io/data", "operator": "Exists"}), {}, ["node-2"]),
    ("does-not-exist", _affinity({"key": "network.harvesterhci.io/data", "operator": "DoesNotExist"}), {}, ["node-3"]),
    ("gt", _combine(_rack_labels, _affinity({"key": "example.com/rack", "operator": "Gt", "values": ["5"]})), {}, ["node-3"]),
    ("lt", _combine(_rack_labels, _affinity({"key": "example.com/rack", "operator": "Lt", "values": ["5"]})), {}, ["node-2"]),
    ("gt-not-integer", _combine(_rack_labels, _affinity({"key": "example.com/rack", "operator": "Gt", "values": ["x"]})), {}, []),
    ("match-fields", _match_fields, {}, ["node-3"]),
    ("empty-term", _empty_term, {}, []),
    ("terms-ored", _two_terms, {}, ["node-2", "node-3"]),
    ("node-selector", _combine(_no_affinity, _node_selector({"kubernetes.io/hostname": "node-3"})), {}, ["node-3"]),
    ("not-ready", _node_not_ready("node-2"), {}, []),
    ("no-ready-condition", _remove_node_conditions("node-2"), {}, ["node-2"]),
    ("not-ready-taint", _combine(_remove_node_conditions("node-2"), _node_taint("node-2", "node.kubernetes.io/not-ready", "NoSchedule")), {}, []),
    ("noexecute-taint", _combine(_no_affinity, _node_taint("node-3", "dedicated", "NoExecute")), {}, ["node-2"]),
]


@pytest.mark.parametrize(("mutate", "labels", "expected"), [pytest.param(*case[1:], id=case[0]) for case in TARGET_CASES])
def test_migration_targets(mutate: Callable[[Scenario], None], labels: dict[str, str], expected: list[str]) -> None:
    scenario = _scenario("web-01")
    mutate(scenario)

    assert migration_targets(scenario.view(), labels) == expected


def test_migration_targets_exclude_source() -> None:
    scenario = _scenario("db-legacy")

    assert migration_targets(scenario.view(), {}) == ["node-1"]


# --- MACs of existing interfaces ------------------------------------------------------------


def test_missing_macs_legacy() -> None:
    assert missing_macs(_manifest("VirtualMachine", "default/db-legacy")) == ["default", "nic-vlan100"]


def test_missing_macs_none() -> None:
    assert missing_macs(_manifest("VirtualMachine", "default/web-01")) == []


def test_observed_macs_from_vmi() -> None:
    vm = _manifest("VirtualMachine", "default/db-legacy")
    vmi = _manifest("VirtualMachineInstance", "default/db-legacy")
    vm["metadata"]["annotations"].pop("harvesterhci.io/mac-address")

    assert observed_macs(vmi, vm) == {"default": "02:11:22:33:44:01", "nic-vlan100": "02:11:22:33:44:02"}


def test_observed_macs_status_first() -> None:
    vm = _manifest("VirtualMachine", "default/db-legacy")
    vmi = _manifest("VirtualMachineInstance", "default/db-legacy")
    vmi["spec"]["domain"]["devices"]["interfaces"][1]["macAddress"] = "02:00:00:00:00:01"
    vmi["status"]["interfaces"][1]["mac"] = "02:11:22:33:44:0A"

    assert observed_macs(vmi, vm)["nic-vlan100"] == "02:11:22:33:44:0a"


def test_observed_macs_from_annotation() -> None:
    vm = _manifest("VirtualMachine", "default/db-legacy")

    assert observed_macs(None, vm) == {"default": "02:11:22:33:44:01", "nic-vlan100": "02:11:22:33:44:02"}


def test_observed_macs_spec_wins() -> None:
    vm = _manifest("VirtualMachine", "default/db-legacy")
    vm["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"][0]["macAddress"] = "02:AB:00:00:00:01"

    assert observed_macs(None, vm)["default"] == "02:ab:00:00:00:01"


def test_observed_macs_skip_unknown() -> None:
    vm = _manifest("VirtualMachine", "default/db-legacy")
    vm["metadata"]["annotations"]["harvesterhci.io/mac-address"] = json.dumps({"default": "02:11:22:33:44:01", "nic-old": "02:11:22:33:44:09"})

    assert observed_macs(None, vm) == {"default": "02:11:22:33:44:01"}


def test_observed_macs_skip_invalid() -> None:
    vm = _manifest("VirtualMachine", "default/db-legacy")
    vmi = _manifest("VirtualMachineInstance", "default/db-legacy")
    vmi["status"]["interfaces"][0]["mac"] = "not-a-mac"
    vmi["spec"]["domain"]["devices"]["interfaces"][0].pop("macAddress")

    assert observed_macs(vmi, vm)["default"] == "02:11:22:33:44:01"


def test_observed_macs_broken_annotation() -> None:
    vm = _manifest("VirtualMachine", "default/db-legacy")
    vm["metadata"]["annotations"]["harvesterhci.io/mac-address"] = "{not json"

    assert observed_macs(None, vm) == {}


# --- Small helpers --------------------------------------------------------------------------


def test_allocate_hotplug_mac_unique() -> None:
    scenario = _scenario("web-01")
    seeded_first = generate_laa_mac(random.Random(11))
    scenario.reserved_macs["data"] = {seeded_first: "op-0001"}

    mac = allocate_hotplug_mac(scenario.view("default/vlan200"), random.Random(11))

    assert mac != seeded_first
    assert mac not in scenario.macs_in_use["data"]
    assert is_unicast(mac)


def test_allocate_hotplug_mac_group() -> None:
    scenario = _scenario("web-01")
    seeded_first = generate_laa_mac(random.Random(11))
    scenario.reserved_macs["data"] = {seeded_first: "op-0001"}

    # The reservation is on cluster network data, so a mgmt NAD may reuse the MAC.
    assert allocate_hotplug_mac(scenario.view("default/overlay1"), random.Random(11)) == seeded_first


@pytest.mark.parametrize(
    ("network", "expected"),
    [("default/vlan100", "default/vlan100"), ("vlan100", "tenant-a/vlan100"), ("other/vlan100", "other/vlan100")],
)
def test_qualify_network(network: str, expected: str) -> None:
    assert qualify_network(network, "tenant-a") == expected


@pytest.mark.parametrize("network", ["", "/", "a/", "/b", "a/b/c"])
def test_qualify_network_invalid(network: str) -> None:
    with pytest.raises(ValueError, match="is invalid"):
        qualify_network(network, "tenant-a")


@pytest.mark.parametrize(
    ("key", "expected"),
    [("default/vlan100", "data"), ("default/overlay1", "mgmt"), ("harvester-system/storagenetwork-x7k2p", "data")],
)
def test_cluster_network_of(key: str, expected: str) -> None:
    assert cluster_network_of(_manifest("NetworkAttachmentDefinition", key)) == expected


def test_cluster_network_unlabelled() -> None:
    nad = _manifest("NetworkAttachmentDefinition", "default/vlan100")
    nad["metadata"]["labels"].pop("network.harvesterhci.io/clusternetwork")

    assert cluster_network_of(nad) is None


def test_first_failure_order() -> None:
    verdicts = [
        Verdict("a", True, None, "a passed"),
        Verdict("b", False, Reason.VM_NOT_READY, "b failed"),
        Verdict("c", False, Reason.MAC_IN_USE, "c failed"),
    ]

    assert first_failure(verdicts) is verdicts[1]
    assert first_failure(verdicts[:1]) is None
    assert first_failure([]) is None


# --- PCIe root ports ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("3996Mi", 3996 * 2**20), ("4Gi", 4 * 2**30), ("2G", 2 * 10**9), ("1e9", 10**9), ("512", 512), ("1.5Gi", 3 * 2**29), (1024, 1024)],
)
def test_parse_quantity(text: str | int, expected: int) -> None:
    assert pciports.parse_quantity(text) == expected


@pytest.mark.parametrize("text", ["", "4GB", "Gi", "four"])
def test_parse_quantity_invalid(text: str) -> None:
    with pytest.raises(ValueError, match="is invalid"):
        pciports.parse_quantity(text)


@pytest.mark.parametrize(
    ("memory", "in_use", "expected"),
    [
        (2 * 2**30, 0, 8),
        (2 * 2**30, 5, 3),
        (2 * 2**30, 8, 3),
        (2 * 2**30 + 1, 8, 8),
        (4 * 2**30, 8, 8),
        (4 * 2**30, 12, 6),
        (4 * 2**30, 0, 16),
    ],
)
def test_reserved_ports_formula(memory: int, in_use: int, expected: int) -> None:
    assert pciports.reserved_hotplug_ports(memory, in_use) == expected


def test_count_pci_devices_web01() -> None:
    # 2 interfaces, 2 virtio disks, virtio-serial, SCSI and USB controllers, and the balloon.
    assert pciports.count_pci_devices(_manifest("VirtualMachineInstance", "default/web-01")) == 8


def test_count_pci_devices_variants() -> None:
    vmi = _manifest("VirtualMachineInstance", "default/web-01")
    devices = vmi["spec"]["domain"]["devices"]
    devices["interfaces"][1]["state"] = "absent"
    devices["disks"].append({"name": "data", "disk": {"bus": "sata"}})
    devices["inputs"] = [{"name": "keyboard", "bus": "virtio", "type": "keyboard"}]
    devices["autoattachMemBalloon"] = False
    devices["rng"] = {}

    # 1 interface, 2 virtio disks, 1 virtio input, virtio-serial, SCSI, RNG; no USB, no balloon.
    assert pciports.count_pci_devices(vmi) == 7


def test_free_ports_small_memory() -> None:
    vmi = _manifest("VirtualMachineInstance", "default/web-01")
    vmi["spec"]["domain"]["memory"]["guest"] = "2Gi"

    assert pciports.free_hotplug_ports(vmi) == 3
    assert pciports.free_hotplug_ports(vmi, 2) == 1


def test_free_ports_counts_hotplugged() -> None:
    vmi = _manifest("VirtualMachineInstance", "default/web-01")

    # Two of the eight devices were hot-plugged, so six were counted at start: max(16 - 6, 6) - 2.
    assert pciports.free_hotplug_ports(vmi, 2) == 8


def test_free_ports_not_estimated() -> None:
    vmi = _manifest("VirtualMachineInstance", "default/web-01")
    vmi["spec"]["domain"]["machine"]["type"] = "pc-i440fx-rhel7.6.0"

    assert pciports.free_hotplug_ports(vmi) is None


def test_free_ports_memory_fallback() -> None:
    vmi = _manifest("VirtualMachineInstance", "default/web-01")
    domain = vmi["spec"]["domain"]
    domain.pop("memory")
    domain["resources"]["requests"]["memory"] = "1Gi"

    assert pciports.domain_memory_bytes(vmi) == 2**30
    assert pciports.free_hotplug_ports(vmi) == 3


# --- Sparse objects -------------------------------------------------------------------------


def _sparse_view() -> ClusterView:
    """A view whose objects have explicit nulls where the API usually omits a field."""
    metadata = {"name": "sparse", "namespace": "default", "labels": None, "annotations": None}
    return ClusterView(
        vm={"metadata": metadata, "spec": {"template": {"spec": {"domain": {"devices": {"interfaces": None}}, "networks": None}}}, "status": None},
        vmi={
            "metadata": metadata,
            "spec": {"domain": {"devices": {"disks": None, "inputs": None}, "memory": None, "machine": None}, "volumes": None, "affinity": None},
            "status": {"phase": "Running", "conditions": None, "migrationState": None, "interfaces": None},
        },
        nodes=[{"metadata": {"name": "node-1", "labels": None}, "spec": {"taints": None}, "status": None}],
        migrations=[{"metadata": None, "spec": None, "status": None}],
        kubevirt={"metadata": None, "status": None},
        nad={"metadata": {"name": "net", "namespace": "default", "labels": None}, "spec": {"config": None}},
        nads={},
        macs_in_use={},
        reserved_macs={},
    )


def test_hotplug_sparse_objects() -> None:
    verdicts = check_hotplug(_sparse_view(), interface="nic-2", network="net", mac=None)

    # Without a MAC only mac-valid runs, so mac-unicast and mac-unique are left out.
    assert [verdict.rule for verdict in verdicts] == HOTPLUG_RULES[:-3] + ["root-ports"]
    assert _verdict(verdicts, "kubevirt-ready").reason == Reason.KUBEVIRT_NOT_READY
    assert _verdict(verdicts, "nad-bridge").reason == Reason.NAD_CONFIG_INVALID


def test_unplug_sparse_objects() -> None:
    verdicts = check_unplug(_sparse_view(), interface="nic-2")

    assert verdicts[-1].reason == Reason.INTERFACE_NOT_FOUND


def test_macs_sparse_objects() -> None:
    view = _sparse_view()

    assert missing_macs(view.vm) == []
    assert observed_macs(view.vmi, view.vm) == {}
    assert pciports.free_hotplug_ports(view.vmi) is None


# --- Table coverage -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rules", "cases"), [(HOTPLUG_RULES, HOTPLUG_CASES), (UNPLUG_RULES, UNPLUG_CASES)], ids=["hotplug", "unplug"]
)
def test_tables_cover_every_rule(rules: list[str], cases: list[tuple]) -> None:
    for rule in rules:
        expected = [case[-1] for case in cases if case[-2] == rule]
        assert None in expected, f"rule {rule} has no passing case"
        assert any(reason is not None for reason in expected), f"rule {rule} has no failing case"


def test_case_ids_unique() -> None:
    for cases in (HOTPLUG_CASES, UNPLUG_CASES):
        ids = [case[0] for case in cases]
        assert len(ids) == len(set(ids))
