"""Unit tests of the simulator controllers' pure rules, on plain dicts built from the manifests."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from kubevirt_sim import naming
from kubevirt_sim.controllers import handlersync, harvester, migration, network, scheduling, vmsync, workload
from kubevirt_sim.controllers import vmi as vmi_controller
from kubevirt_sim.controllers.objects import find_condition, find_status_interface, info_sources
from kubevirt_sim.faults import ClusterFaults

MANIFESTS = Path(__file__).resolve().parents[2] / "nicflow" / "manifests"
NOW = datetime(2026, 5, 4, 10, 15, 0, tzinfo=timezone.utc)


def load(file: str, kind: str, name: str | None = None) -> dict:
    for document in yaml.safe_load_all((MANIFESTS / file).read_text()):
        if document and document["kind"] == kind and (name is None or document["metadata"]["name"] == name):
            return document
    raise LookupError(f"{kind} {name} not found in {file}")


@pytest.fixture
def vm() -> dict:
    return load("vm-web-01.yaml", "VirtualMachine")


@pytest.fixture
def vmi() -> dict:
    return load("vm-web-01.yaml", "VirtualMachineInstance")


@pytest.fixture
def nodes() -> list[dict]:
    with (MANIFESTS / "cluster.yaml").open() as stream:
        return [d for d in yaml.safe_load_all(stream) if d and d["kind"] == "Node"]


def hot_plug(vm: dict, name: str = "nic-2", mac: str = "0a:51:d7:30:9c:44", network_name: str = "default/vlan200") -> None:
    template = vm["spec"]["template"]["spec"]
    template["domain"]["devices"]["interfaces"].append({"name": name, "model": "virtio", "bridge": {}, "macAddress": mac})
    template["networks"].append({"name": name, "multus": {"networkName": network_name}})


def set_state(obj_spec: dict, name: str, state: str) -> None:
    for interface in obj_spec["domain"]["devices"]["interfaces"]:
        if interface["name"] == name:
            interface["state"] = state


# naming


def test_pod_interface_name_vlan100():
    assert naming.pod_interface_name("nic-vlan100") == "podc39e4a25326"


def test_pod_interface_name_nic2():
    assert naming.pod_interface_name("nic-2") == "pod3c50acb7c28"


def test_generate_mac_locally_administered():
    for _ in range(50):
        mac = naming.generate_mac()
        first = int(mac.split(":")[0], 16)
        assert first & 0x02
        assert not first & 0x01
        assert mac == mac.lower()


# root ports


def test_pci_devices_web01(vmi):
    # 2 interfaces, 2 virtio disks, balloon, virtio-serial, SCSI and USB controllers.
    assert network.count_pci_devices(vmi["spec"]) == 8


def test_root_ports_large_memory(vmi):
    assert network.hotplug_root_ports(vmi["spec"]) == 8


def test_root_ports_small_memory(vmi):
    spec = copy.deepcopy(vmi["spec"])
    spec["domain"]["memory"]["guest"] = "2Gi"
    assert network.hotplug_root_ports(spec) == 3


def test_root_ports_minimum_large(vmi):
    spec = copy.deepcopy(vmi["spec"])
    for index in range(10):
        spec["domain"]["devices"]["disks"].append({"name": f"d{index}", "disk": {"bus": "virtio"}})
    assert network.hotplug_root_ports(spec) == 6


def test_root_ports_root_complex(vmi):
    annotations = {"kubevirt.io/placePCIDevicesOnRootComplex": "true"}
    assert network.hotplug_root_ports(vmi["spec"], annotations) == 0


def test_free_root_ports(vmi):
    assert network.free_root_ports(vmi, start_interfaces=2, reserved_ports=8) == 8
    handlersync.attach_interface(vmi, "nic-2", "0a:51:d7:30:9c:44")
    assert network.free_root_ports(vmi, start_interfaces=2, reserved_ports=8) == 7


def test_parse_quantity_units():
    assert network.parse_quantity("4Gi") == 4 * 2**30
    assert network.parse_quantity("3996Mi") == 3996 * 2**20
    assert network.parse_quantity("2G") == 2 * 10**9
    assert network.parse_quantity("bogus") == 0


# pod annotations


def test_pod_networks_skip_absent(vmi):
    entries = network.pod_networks_annotation(vmi)
    assert entries == [{"name": "vlan100", "namespace": "default", "mac": "06:b2:19:c4:55:e1", "interface": "podc39e4a25326"}]
    set_state(vmi["spec"], "nic-vlan100", "absent")
    assert network.pod_networks_annotation(vmi) == []


def test_pod_network_status(vmi):
    status = network.pod_network_status(network.pod_networks_annotation(vmi), "10.52.1.41", "02:3c:8e:41:7a:10")
    assert status[0]["default"] is True
    assert status[0]["interface"] == "eth0"
    assert status[1]["name"] == "default/vlan100"
    assert status[1]["interface"] == "podc39e4a25326"
    pod = {"metadata": {"annotations": {network.NETWORK_STATUS_ANNOTATION: json.dumps(status)}}}
    assert network.pod_secondary_interfaces(pod) == {"podc39e4a25326"}


# status.interfaces from the pod's network-status


def test_multus_status_added_for_new_network(vm, vmi):
    hot_plug(vm)
    vmsync.propagate_interfaces(vm, vmi)
    changed = network.sync_multus_status(vmi, {"podc39e4a25326", "pod3c50acb7c28"})
    entry = find_status_interface(vmi, "nic-2")
    assert changed
    assert entry == {"name": "nic-2", "podInterfaceName": "pod3c50acb7c28", "infoSource": "multus-status"}
    assert [e["name"] for e in vmi["status"]["interfaces"]] == ["default", "nic-vlan100", "nic-2"]


def test_multus_status_dropped_when_pod_lacks(vmi):
    set_state(vmi["spec"], "nic-vlan100", "absent")
    handlersync.detach_absent(vmi)
    network.sync_multus_status(vmi, set())
    assert find_status_interface(vmi, "nic-vlan100") is None


def test_multus_status_unchanged(vmi):
    assert not network.sync_multus_status(vmi, {"podc39e4a25326"})


def test_primary_never_multus(vmi):
    network.sync_multus_status(vmi, {"podc39e4a25326"})
    assert "multus-status" not in info_sources(find_status_interface(vmi, "default"))


# MigrationRequired


def test_migration_required_pending_then_true(vm, vmi):
    hot_plug(vm)
    vmsync.propagate_interfaces(vm, vmi)
    changed, recheck = network.sync_migration_required(vmi, NOW)
    condition = find_condition(vmi, "MigrationRequired")
    assert changed
    assert recheck == 15.0
    assert condition["status"] == "False"
    assert condition["reason"] == "AutoMigrationPending"

    changed, recheck = network.sync_migration_required(vmi, NOW + timedelta(seconds=10))
    assert not changed
    assert recheck == pytest.approx(5.0)

    changed, _ = network.sync_migration_required(vmi, NOW + timedelta(seconds=15))
    condition = find_condition(vmi, "MigrationRequired")
    assert changed
    assert condition["status"] == "True"
    assert condition["reason"] == "AutoMigrationDueToLiveUpdate"


def test_migration_required_sriov_at_once(vm, vmi):
    template = vm["spec"]["template"]["spec"]
    template["domain"]["devices"]["interfaces"].append({"name": "vf-1", "sriov": {}, "macAddress": "0a:00:00:00:00:01"})
    template["networks"].append({"name": "vf-1", "multus": {"networkName": "default/sriov-net"}})
    vmsync.propagate_interfaces(vm, vmi)
    network.sync_migration_required(vmi, NOW)
    assert find_condition(vmi, "MigrationRequired")["status"] == "True"


def test_migration_required_unplug(vmi):
    set_state(vmi["spec"], "nic-vlan100", "absent")
    handlersync.detach_absent(vmi)
    network.sync_migration_required(vmi, NOW)
    assert find_condition(vmi, "MigrationRequired")["reason"] == "AutoMigrationPending"


def test_migration_required_removed(vmi):
    vmi["status"]["conditions"].append({"type": "MigrationRequired", "status": "True", "reason": "AutoMigrationDueToLiveUpdate"})
    changed, _ = network.sync_migration_required(vmi, NOW)
    assert changed
    assert find_condition(vmi, "MigrationRequired") is None


def test_migration_required_frozen_migrating(vm, vmi):
    hot_plug(vm)
    vmsync.propagate_interfaces(vm, vmi)
    vmi["status"]["migrationState"] = {"startTimestamp": "2026-05-04T10:14:00Z"}
    assert network.sync_migration_required(vmi, NOW) == (False, None)
    assert find_condition(vmi, "MigrationRequired") is None


# LiveMigratable


def test_live_migratable_masquerade(vmi):
    assert network.live_migratable(vmi) == ("True", None, None)


def test_live_migratable_pod_bridge(vmi):
    vmi["spec"]["domain"]["devices"]["interfaces"][0] = {"name": "default", "model": "virtio", "bridge": {}}
    status, reason, message = network.live_migratable(vmi)
    assert status == "False"
    assert reason == "InterfaceNotLiveMigratable"
    assert message.startswith("cannot migrate VMI which does not use masquerade")


def test_live_migratable_bridge_annotation(vmi):
    vmi["spec"]["domain"]["devices"]["interfaces"][0] = {"name": "default", "model": "virtio", "bridge": {}}
    vmi["metadata"]["annotations"]["kubevirt.io/allow-pod-bridge-network-live-migration"] = ""
    assert network.live_migratable(vmi)[0] == "True"


def test_live_migratable_plugin(vmi):
    vmi["spec"]["domain"]["devices"]["interfaces"][0] = {"name": "default", "binding": {"name": "managedtap"}}
    assert network.live_migratable(vmi)[0] == "False"
    assert network.live_migratable(vmi, {"managedtap"})[0] == "True"


# VM controller


def test_propagate_new_bridge(vm, vmi):
    hot_plug(vm)
    assert vmsync.propagate_interfaces(vm, vmi) == ["nic-2"]
    assert vmi["spec"]["domain"]["devices"]["interfaces"][-1]["macAddress"] == "0a:51:d7:30:9c:44"
    assert vmi["spec"]["networks"][-1] == {"name": "nic-2", "multus": {"networkName": "default/vlan200"}}
    assert vmsync.propagate_interfaces(vm, vmi) == []


def test_propagate_skips_masquerade(vm, vmi):
    template = vm["spec"]["template"]["spec"]
    template["domain"]["devices"]["interfaces"].append({"name": "extra", "masquerade": {}})
    template["networks"].append({"name": "extra", "multus": {"networkName": "default/vlan200"}})
    assert vmsync.propagate_interfaces(vm, vmi) == []


def test_propagate_skips_absent_new(vm, vmi):
    hot_plug(vm)
    set_state(vm["spec"]["template"]["spec"], "nic-2", "absent")
    assert vmsync.propagate_interfaces(vm, vmi) == []


def test_propagate_copies_state(vm, vmi):
    set_state(vm["spec"]["template"]["spec"], "nic-vlan100", "absent")
    assert vmsync.propagate_interfaces(vm, vmi) == ["nic-vlan100"]
    assert vmi["spec"]["domain"]["devices"]["interfaces"][1]["state"] == "absent"


def test_propagate_ordinal_keeps_state(vm, vmi):
    vmi["status"]["interfaces"][1]["podInterfaceName"] = "net1"
    set_state(vm["spec"]["template"]["spec"], "nic-vlan100", "absent")
    assert vmsync.propagate_interfaces(vm, vmi) == []


def test_clear_detached_from_vmi(vmi):
    set_state(vmi["spec"], "nic-vlan100", "absent")
    assert vmsync.clear_detached_from_vmi(vmi) == []
    vmi["status"]["interfaces"] = vmi["status"]["interfaces"][:1]
    assert vmsync.clear_detached_from_vmi(vmi) == ["nic-vlan100"]
    assert [n["name"] for n in vmi["spec"]["networks"]] == ["default"]


def test_clear_detached_from_vm(vm, vmi):
    set_state(vm["spec"]["template"]["spec"], "nic-vlan100", "absent")
    assert vmsync.clear_detached_from_vm(vm, vmi) == []
    vmi["spec"]["domain"]["devices"]["interfaces"] = vmi["spec"]["domain"]["devices"]["interfaces"][:1]
    vmi["status"]["interfaces"] = vmi["status"]["interfaces"][:1]
    assert vmsync.clear_detached_from_vm(vm, vmi) == ["nic-vlan100"]
    assert [n["name"] for n in vm["spec"]["template"]["spec"]["networks"]] == ["default"]


def test_clear_detached_stopped(vm):
    set_state(vm["spec"]["template"]["spec"], "nic-vlan100", "absent")
    assert vmsync.clear_detached_from_vm(vm, None) == ["nic-vlan100"]


def test_restart_not_required_hot_plug(vm, vmi):
    start = copy.deepcopy(vm["spec"]["template"]["spec"])
    hot_plug(vm)
    template = vm["spec"]["template"]["spec"]
    assert not vmsync.restart_required(template, start, vmi["spec"])


def test_restart_required_mac_change(vm, vmi):
    start = copy.deepcopy(vm["spec"]["template"]["spec"])
    template = vm["spec"]["template"]["spec"]
    template["domain"]["devices"]["interfaces"][1]["macAddress"] = "06:00:00:00:00:01"
    assert vmsync.restart_required(template, start, vmi["spec"])


def test_restart_required_removed(vm, vmi):
    start = copy.deepcopy(vm["spec"]["template"]["spec"])
    template = vm["spec"]["template"]["spec"]
    template["domain"]["devices"]["interfaces"].pop()
    template["networks"].pop()
    assert vmsync.restart_required(template, start, vmi["spec"])


def test_restart_required_legacy_macs():
    legacy_vm = load("vm-db-legacy.yaml", "VirtualMachine")
    legacy_vmi = load("vm-db-legacy.yaml", "VirtualMachineInstance")
    start = copy.deepcopy(legacy_vm["spec"]["template"]["spec"])
    hot_plug(legacy_vm)
    assert vmsync.restart_required(legacy_vm["spec"]["template"]["spec"], start, legacy_vmi["spec"])


def test_restart_required_cpu_cores(vm, vmi):
    start = copy.deepcopy(vm["spec"]["template"]["spec"])
    vm["spec"]["template"]["spec"]["domain"]["cpu"]["cores"] = 4
    assert vmsync.restart_required(vm["spec"]["template"]["spec"], start, vmi["spec"])


def test_copy_scheduling(vm, vmi):
    vm["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"][0]["matchExpressions"].append({"key": "network.harvesterhci.io/other", "operator": "In", "values": ["true"]})
    assert vmsync.copy_scheduling(vm["spec"]["template"]["spec"], vmi)
    assert vmi["spec"]["affinity"] == vm["spec"]["template"]["spec"]["affinity"]


def test_copy_scheduling_migrating(vm, vmi):
    vm["spec"]["template"]["spec"]["nodeSelector"] = {"a": "b"}
    vmi["status"]["migrationState"] = {"startTimestamp": "2026-05-04T10:14:00Z"}
    assert not vmsync.copy_scheduling(vm["spec"]["template"]["spec"], vmi)


def test_mirror_status_generations(vm, vmi):
    vm["metadata"]["generation"] = 4
    vmsync.mirror_status(vm, vmi, template_matches_start=False, timestamp="2026-05-04T10:15:00Z")
    assert vm["status"]["desiredGeneration"] == 4
    assert vm["status"]["observedGeneration"] == 3
    assert vm["status"]["printableStatus"] == "Running"
    assert vm["status"]["ready"] is True


def test_mirror_status_migration_required(vm, vmi):
    vmi["status"]["conditions"].append({"type": "MigrationRequired", "status": "False", "reason": "AutoMigrationPending"})
    vmsync.mirror_status(vm, vmi, template_matches_start=True, timestamp="2026-05-04T10:15:00Z")
    assert find_condition(vm, "MigrationRequired")["reason"] == "AutoMigrationPending"


def test_mirror_status_stopped(vm):
    vm["spec"]["runStrategy"] = "Halted"
    vmsync.mirror_status(vm, None, template_matches_start=True, timestamp="2026-05-04T10:15:00Z")
    assert vm["status"]["printableStatus"] == "Stopped"
    assert "ready" not in vm["status"]
    assert find_condition(vm, "LiveMigratable") is None


# virt-handler


def test_detach_absent(vmi):
    set_state(vmi["spec"], "nic-vlan100", "absent")
    assert handlersync.detach_absent(vmi) == ["nic-vlan100"]
    assert find_status_interface(vmi, "nic-vlan100") == {
        "name": "nic-vlan100", "podInterfaceName": "podc39e4a25326", "infoSource": "multus-status"}


def test_attach_then_agent(vm, vmi):
    hot_plug(vm)
    vmsync.propagate_interfaces(vm, vmi)
    network.sync_multus_status(vmi, {"podc39e4a25326", "pod3c50acb7c28"})
    assert handlersync.attach_candidates(vmi) == ["nic-2"]

    handlersync.attach_interface(vmi, "nic-2", "0A:51:D7:30:9C:44")
    entry = find_status_interface(vmi, "nic-2")
    assert entry["infoSource"] == "domain, multus-status"
    assert entry["mac"] == "0a:51:d7:30:9c:44"
    assert handlersync.attach_candidates(vmi) == []
    assert handlersync.agent_report_candidates(vmi) == ["nic-2"]

    assert handlersync.report_guest_agent(vmi, "nic-2")
    assert entry["infoSource"] == "domain, guest-agent, multus-status"
    assert entry["interfaceName"] == "enp3s0"


def test_attach_order_after_domain(vm, vmi):
    hot_plug(vm)
    vmsync.propagate_interfaces(vm, vmi)
    set_state(vmi["spec"], "nic-vlan100", "absent")
    handlersync.detach_absent(vmi)
    network.sync_multus_status(vmi, {"podc39e4a25326", "pod3c50acb7c28"})
    handlersync.attach_interface(vmi, "nic-2", "0a:51:d7:30:9c:44")
    assert [e["name"] for e in vmi["status"]["interfaces"]] == ["default", "nic-2", "nic-vlan100"]


# scheduling


def test_candidates_data_network(vmi, nodes):
    assert scheduling.candidate_nodes(vmi["spec"], nodes, exclude="node-1") == ["node-2"]


def test_candidates_not_ready(vmi, nodes):
    assert scheduling.candidate_nodes(vmi["spec"], nodes, exclude="node-1", ready_overrides={"node-2": False}) == []


def test_candidates_new_cluster_network(vmi, nodes):
    terms = vmi["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    terms[0]["matchExpressions"].append({"key": "network.harvesterhci.io/mgmt", "operator": "In", "values": ["true"]})
    assert scheduling.candidate_nodes(vmi["spec"], nodes) == ["node-1", "node-2"]
    nodes[0]["metadata"]["labels"]["kubevirt.io/schedulable"] = "false"
    assert scheduling.candidate_nodes(vmi["spec"], nodes) == ["node-2"]


def test_candidates_no_affinity(nodes):
    assert scheduling.candidate_nodes({}, nodes, exclude="node-3") == ["node-1", "node-2"]


# faults


def test_faults_vmi_selector():
    faults = ClusterFaults()
    faults.fail_migration("Scheduling", vmi="web-01")
    assert faults.migration_fails_in("Scheduling", "default", "web-01")
    assert not faults.migration_fails_in("Running", "default", "web-01")
    assert not faults.migration_fails_in("Scheduling", "default", "db-legacy")
    faults.stall_migration("Running", vmi="other/web-01")
    assert not faults.migration_stalls_in("Running", "default", "web-01")
    assert faults.migration_stalls_in("Running", "other", "web-01")


def test_faults_invalid_phase():
    with pytest.raises(ValueError):
        ClusterFaults().fail_migration("Flying")


def test_faults_clear_restores_nodes():
    faults = ClusterFaults()
    calls = []
    faults.add_listener(lambda: calls.append(1))
    faults.set_node_ready("node-2", False)
    faults.disconnect_agent("web-01")
    faults.clear()
    assert faults.node_ready_override("node-2") is True
    assert not faults.agent_disconnected("default", "web-01")
    assert len(calls) == 3


# Harvester rules


def test_observed_macs_sorted(vmi):
    assert harvester.observed_macs(vmi) == '{"default":"02:3c:8e:41:7a:10","nic-vlan100":"06:b2:19:c4:55:e1"}'


def test_observed_macs_skip_detached(vmi):
    set_state(vmi["spec"], "nic-vlan100", "absent")
    handlersync.detach_absent(vmi)
    assert harvester.observed_macs(vmi) == '{"default":"02:3c:8e:41:7a:10"}'


def test_backfill_fills_missing():
    legacy_vm = load("vm-db-legacy.yaml", "VirtualMachine")
    macs = json.loads(legacy_vm["metadata"]["annotations"]["harvesterhci.io/mac-address"])
    assert harvester.backfill_macs(legacy_vm, macs) == ["default", "nic-vlan100"]
    interfaces = legacy_vm["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"]
    assert [i["macAddress"] for i in interfaces] == ["02:11:22:33:44:01", "02:11:22:33:44:02"]


def test_backfill_keeps_spec_mac(vm):
    assert harvester.backfill_macs(vm, {"default": "02:00:00:00:00:99", "nic-vlan100": "06:b2:19:c4:55:e1"}) == []
    assert vm["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"][0]["macAddress"] == "02:3c:8e:41:7a:10"


def test_backfill_unobserved(vm):
    hot_plug(vm, mac="")
    assert harvester.backfill_macs(vm, {}) == []
    assert vm["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"][-1]["macAddress"] == ""


def test_migration_state_annotation():
    assert harvester.migration_state_annotation({"status": {}}) == "Pending migration"
    assert harvester.migration_state_annotation({"status": {"phase": "Pending"}}) == "Pending migration"
    assert harvester.migration_state_annotation({"status": {"phase": "Scheduling"}}) == "Migrating"
    assert harvester.migration_state_annotation({"status": {"phase": "Running"}}) == "Migrating"
    deleting = {"metadata": {"deletionTimestamp": "2026-05-04T10:15:00Z"}, "status": {"phase": "Running"}}
    assert harvester.migration_state_annotation(deleting) == "Aborting migration"


# Migration and workload updater rules


def test_migration_limits_default():
    assert migration.migration_limits({}) == (5, 2)


def test_migration_limits_fixture():
    kubevirt = load("cluster.yaml", "KubeVirt")
    kubevirt["spec"]["configuration"]["migrations"]["parallelMigrationsPerCluster"] = 3
    assert migration.migration_limits(kubevirt) == (3, 2)


def test_phase_shares_sum():
    assert sum(migration.PHASE_SHARE.values()) == pytest.approx(1.0)


def test_backoff_doubles():
    assert workload.backoff_seconds(0) == 0
    assert workload.backoff_seconds(1) == 20
    assert workload.backoff_seconds(2) == 40
    assert workload.backoff_seconds(3) == 80
    assert workload.backoff_seconds(10) == workload.BACKOFF_MAX_SECONDS


def test_migratable_bindings():
    kubevirt = {"spec": {"configuration": {"network": {"binding": {
        "managedtap": {"domainAttachmentType": "managedTap", "migration": {}},
        "passt": {"sidecarImage": "passt"},
    }}}}}
    assert vmi_controller.migratable_bindings(kubevirt) == {"managedtap"}


def test_target_spec_added_selector(vmi, nodes):
    migration_object = {"spec": {"vmiName": "web-01", "addedNodeSelector": {"kubernetes.io/hostname": "node-3"}}}
    spec = migration.target_spec(vmi, migration_object)
    assert spec["nodeSelector"] == {"kubernetes.io/hostname": "node-3"}
    assert scheduling.candidate_nodes(spec, nodes, exclude="node-1") == []
    assert "nodeSelector" not in vmi["spec"]
