"""Failure paths of the simulator's controllers: scheduling, root ports, guest agent, aborts, faults, limits."""

from __future__ import annotations

import json
import urllib.request
from datetime import datetime

import kubernetes

from tests.sim.test_ctrl_hotplug import (  # noqa: F401  (cluster and manual are fixtures)
    GROUP,
    NAMESPACE,
    VM_NAME,
    VMIRecorder,
    add_interface,
    cluster,
    condition,
    hot_plug_nic2,
    interface_names,
    manual,
    mark_absent,
    migration_phase,
    status_entry,
    wait_final,
    wait_for,
)


EMPTY_STATUS = kubernetes.client.V1NodeStatus()


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def phases_of(migration: dict) -> list[str]:
    return [t["phase"] for t in migration["status"].get("phaseTransitionTimestamps") or []]


def wait_sim_seconds(cluster, seconds: float) -> None:
    """Let `seconds` of simulated time pass, so that a check can show that something did not happen."""
    start = cluster.sim.clock.monotonic()
    wait_for(lambda: cluster.sim.clock.monotonic() - start >= seconds, f"{seconds} simulated seconds")


def attached(entry: dict | None) -> bool:
    return entry is not None and "domain" in entry["infoSource"]


# Scheduling.


def test_unschedulable_target_fails(manual):
    manual.custom.create_namespaced_custom_object("k8s.cni.cncf.io", "v1", NAMESPACE, "network-attachment-definitions", {
        "apiVersion": "k8s.cni.cncf.io/v1",
        "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": "iso-net", "labels": {"network.harvesterhci.io/clusternetwork": "iso",
                                                   "network.harvesterhci.io/type": "UntaggedNetwork"}},
        "spec": {"config": '{"cniVersion":"0.3.1","name":"iso-net","type":"bridge","bridge":"iso-br","ipam":{}}'},
    })
    manual.core.patch_node("node-1", {"metadata": {"labels": {"network.harvesterhci.io/iso": "true"}}})
    manual.edit_vm(lambda vm: add_interface(vm, "nic-iso", "default/iso-net"))
    wait_for(lambda: "nic-iso" in interface_names(manual.vmi()["spec"]), "nic-iso in the VMI spec")
    affinity = str(manual.vmi()["spec"]["affinity"])
    assert "network.harvesterhci.io/iso" in affinity

    migration = manual.create_migration()
    name = migration["metadata"]["name"]
    wait_for(lambda: migration_phase(manual, name) == "Scheduling", "phase Scheduling")
    pending_pod = wait_for(lambda: next((p for p in manual.core.list_namespaced_pod(
        NAMESPACE, label_selector=f"kubevirt.io/migrationJobUID={migration['metadata']['uid']}").items
        if p.status.conditions and p.status.conditions[0].reason == "Unschedulable"), None), "an unschedulable target pod")
    assert pending_pod.spec.node_name is None

    finished = wait_final(manual, name)
    state = manual.vmi()["status"]["migrationState"]
    assert finished["status"]["phase"] == "Failed"
    assert phases_of(finished) == ["Pending", "Scheduling", "Failed"]
    stamps = {t["phase"]: parse_time(t["phaseTransitionTimestamp"]) for t in finished["status"]["phaseTransitionTimestamps"]}
    # KubeVirt's unschedulable timeout is 5 simulated minutes; timestamps have second precision.
    assert (stamps["Failed"] - stamps["Scheduling"]).total_seconds() >= 299
    assert state["failed"] is True
    assert state["failureReason"] == "Migration target pod for VMI [default/web-01] is currently unschedulable."
    assert manual.vmi()["status"]["nodeName"] == "node-1"
    assert status_entry(manual.vmi(), "nic-iso") is None
    assert manual.core.list_namespaced_pod(
        NAMESPACE, label_selector=f"kubevirt.io/migrationJobUID={migration['metadata']['uid']}").items == []


def test_node_not_ready_excluded(manual):
    manual.sim.faults.set_node_ready("node-2", False)
    ready = wait_for(lambda: next((c for c in (manual.core.read_node("node-2").status or EMPTY_STATUS).conditions or []
                                   if c.type == "Ready" and c.status == "False"), None), "node-2 not Ready")
    assert ready.reason == "NodeStatusUnknown"

    name = manual.create_migration()["metadata"]["name"]
    wait_for(lambda: migration_phase(manual, name) == "Scheduling", "phase Scheduling")
    wait_sim_seconds(manual, 30)
    assert migration_phase(manual, name) == "Scheduling"

    manual.sim.faults.set_node_ready("node-2", True)
    assert wait_final(manual, name)["status"]["phase"] == "Succeeded"
    assert manual.vmi()["status"]["nodeName"] == "node-2"


# PCIe root ports.


def test_root_ports_run_out(manual):
    names = [f"nic-{letter}" for letter in "abcdefghi"]
    def add_nine(vm: dict) -> None:
        for name in names:
            add_interface(vm, name, "default/vlan200", mac=None)

    manual.edit_vm(add_nine)
    wait_for(lambda: set(names) <= set(interface_names(manual.vmi()["spec"])), "the nine NICs in the VMI spec")
    assert wait_final(manual, manual.create_migration()["metadata"]["name"])["status"]["phase"] == "Succeeded"

    # web-01 has 8 PCI devices and more than 2 GiB, so max(16 - 8, 6) = 8 root ports are free.
    wait_for(lambda: sum(attached(status_entry(manual.vmi(), n)) for n in names) == 8, "eight NICs attached")
    vmi = manual.vmi()
    assert not attached(status_entry(vmi, "nic-i"))
    assert status_entry(vmi, "nic-i")["infoSource"] == "multus-status"

    manual.edit_vm(lambda vm: mark_absent(vm, "nic-a"))
    entry = wait_for(lambda: (e := status_entry(manual.vmi(), "nic-i")) and attached(e) and e, "nic-i attached after an unplug")
    assert "mac" in entry
    assert status_entry(manual.vmi(), "nic-a")["infoSource"] == "multus-status"


def test_root_ports_fault(manual):
    manual.sim.faults.exhaust_root_ports(VM_NAME)
    hot_plug_nic2(manual)
    assert wait_final(manual, manual.create_migration()["metadata"]["name"])["status"]["phase"] == "Succeeded"
    wait_for(lambda: status_entry(manual.vmi(), "nic-2"), "nic-2 status entry")
    wait_sim_seconds(manual, 10)
    assert status_entry(manual.vmi(), "nic-2")["infoSource"] == "multus-status"

    manual.sim.faults.exhaust_root_ports(VM_NAME, on=False)
    entry = wait_for(lambda: (e := status_entry(manual.vmi(), "nic-2")) and attached(e) and e, "nic-2 attached")
    assert entry["mac"] == "0a:51:d7:30:9c:44"


# Guest agent.


def test_agent_disconnected(manual):
    manual.sim.faults.disconnect_agent(VM_NAME)
    agent = wait_for(lambda: (c := condition(manual.vmi(), "AgentConnected")) and c["status"] == "False" and c,
                     "AgentConnected False")
    assert agent["status"] == "False"
    wait_for(lambda: (c := condition(manual.vm(), "AgentConnected")) and c["status"] == "False", "AgentConnected False on the VM")

    hot_plug_nic2(manual)
    assert wait_final(manual, manual.create_migration()["metadata"]["name"])["status"]["phase"] == "Succeeded"
    entry = wait_for(lambda: (e := status_entry(manual.vmi(), "nic-2")) and attached(e) and e, "nic-2 attached")
    wait_sim_seconds(manual, 10)
    entry = status_entry(manual.vmi(), "nic-2")
    assert entry["infoSource"] == "domain, multus-status"
    assert "interfaceName" not in entry

    manual.sim.faults.disconnect_agent(VM_NAME, on=False)
    entry = wait_for(lambda: (e := status_entry(manual.vmi(), "nic-2")) and "guest-agent" in e["infoSource"] and e,
                     "guest-agent data for nic-2")
    assert entry["interfaceName"] == "enp3s0"


# Migration life cycle.


def test_keep_five_finalized(manual):
    created = []
    for _ in range(7):
        migration = manual.create_migration()
        created.append(migration["metadata"]["name"])
        assert wait_final(manual, migration["metadata"]["name"])["status"]["phase"] == "Succeeded"
        # Creation timestamps have second precision; keep the VMIMs apart by at least one second.
        wait_sim_seconds(manual, 1)

    remaining = wait_for(lambda: (names := {m["metadata"]["name"] for m in manual.list("virtualmachineinstancemigrations")})
                         and len(names) == 5 and names, "five VMIMs left")
    assert remaining == set(created[2:])


def test_abort_running_migration(manual):
    manual.sim.faults.stall_migration("Running", vmi=VM_NAME)
    recorder = VMIRecorder(manual).start()
    migration = manual.create_migration()
    name = migration["metadata"]["name"]
    wait_for(lambda: migration_phase(manual, name) == "Running", "phase Running")

    manual.custom.delete_namespaced_custom_object(GROUP, "v1", NAMESPACE, "virtualmachineinstancemigrations", name)
    wait_for(lambda: manual.try_get("virtualmachineinstancemigrations", name) is None, "the VMIM to go")
    wait_for(lambda: "harvesterhci.io/migrationState" not in (manual.vmi()["metadata"].get("annotations") or {}),
             "migration annotations removed")
    wait_for(lambda: recorder.annotation_values("harvesterhci.io/migrationState")[-1] is None, "the watch to catch up")
    recorder.stop()

    state = manual.vmi()["status"]["migrationState"]
    assert state["migrationUid"] == migration["metadata"]["uid"]
    assert state["abortStatus"] == "Succeeded"
    assert state["failed"] is True
    assert manual.vmi()["status"]["nodeName"] == "node-1"
    assert "Aborting migration" in recorder.annotation_values("harvesterhci.io/migrationState")


def test_second_migration_fails_pending(manual):
    manual.sim.faults.stall_migration("Scheduling")
    first = manual.create_migration()["metadata"]["name"]
    wait_for(lambda: migration_phase(manual, first) == "Scheduling", "first VMIM in Scheduling")

    # The create webhook rejects a second VMIM; a VMIM that got past it (no label) fails in Pending.
    second = manual.sim.store.create("virtualmachineinstancemigrations", NAMESPACE, {
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
        "metadata": {"name": "web-01-second"}, "spec": {"vmiName": VM_NAME},
    }, actor="client", admit=False)
    finished = wait_final(manual, second["metadata"]["name"])
    assert phases_of(finished) == ["Pending", "Failed"]
    assert finished["status"]["migrationState"]["failureReason"] == (
        "VMI is not eligible for migration because another migration job is in progress.")
    assert migration_phase(manual, first) == "Scheduling"

    manual.sim.faults.clear()
    assert wait_final(manual, first)["status"]["phase"] == "Succeeded"


def test_in_flight_rejected(manual):
    manual.sim.faults.stall_migration("Scheduling")
    manual.create_migration()
    try:
        manual.create_migration()
    except kubernetes.client.ApiException as error:
        assert error.status == 400
        assert "in-flight migration detected" in error.body
    else:
        raise AssertionError("a second VMIM was accepted while one is in flight")


def test_fail_fault(manual):
    manual.sim.faults.fail_migration("TargetReady")
    finished = wait_final(manual, manual.create_migration()["metadata"]["name"])
    assert finished["status"]["phase"] == "Failed"
    assert phases_of(finished)[-2:] == ["TargetReady", "Failed"]
    assert manual.vmi()["status"]["migrationState"]["failed"] is True
    assert manual.vmi()["status"]["nodeName"] == "node-1"


def test_stall_fault(manual):
    manual.sim.faults.stall_migration("Scheduled")
    name = manual.create_migration()["metadata"]["name"]
    wait_for(lambda: migration_phase(manual, name) == "Scheduled", "phase Scheduled")
    wait_sim_seconds(manual, 60)
    assert migration_phase(manual, name) == "Scheduled"
    manual.sim.faults.clear()
    assert wait_final(manual, name)["status"]["phase"] == "Succeeded"


def test_parallel_cluster_cap(manual):
    manual.custom.patch_namespaced_custom_object(
        GROUP, "v1", "harvester-system", "kubevirts", "kubevirt",
        {"spec": {"configuration": {"migrations": {"parallelMigrationsPerCluster": 1}}}})
    manual.sim.faults.stall_migration("Scheduled")
    first = manual.create_migration(VM_NAME)["metadata"]["name"]
    wait_for(lambda: migration_phase(manual, first) == "Scheduled", "first VMIM Scheduled")
    second = manual.create_migration("db-legacy")["metadata"]["name"]
    wait_for(lambda: migration_phase(manual, second) == "Pending", "second VMIM Pending")
    wait_sim_seconds(manual, 30)
    assert migration_phase(manual, second) == "Pending"

    manual.sim.faults.clear()
    assert wait_final(manual, first)["status"]["phase"] == "Succeeded"
    assert wait_final(manual, second)["status"]["phase"] == "Succeeded"


def test_workload_updater_backoff(cluster):
    cluster.sim.faults.fail_migration("Scheduling", vmi=VM_NAME)
    hot_plug_nic2(cluster)
    migrations = wait_for(lambda: (items := cluster.list("virtualmachineinstancemigrations")) and len(items) >= 2
                          and items, "a second automatic VMIM")
    migrations.sort(key=lambda m: m["metadata"]["creationTimestamp"])
    first, second = migrations[0], migrations[1]
    failed_at = next(t["phaseTransitionTimestamp"] for t in first["status"]["phaseTransitionTimestamps"]
                     if t["phase"] == "Failed")

    assert first["metadata"]["name"].startswith("kubevirt-workload-update-")
    assert second["metadata"]["name"].startswith("kubevirt-workload-update-")
    # Simulated timestamps have second precision, so the 20 s back-off shows as at least 19 s.
    assert (parse_time(second["metadata"]["creationTimestamp"]) - parse_time(failed_at)).total_seconds() >= 19


# VM start and stop.


def test_stop_backfills_macs(cluster):
    legacy = cluster.vm("db-legacy")
    assert all("macAddress" not in i for i in legacy["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"])
    cluster.custom.patch_namespaced_custom_object(GROUP, "v1", NAMESPACE, "virtualmachines", "db-legacy",
                                                  {"spec": {"runStrategy": "Halted"}})
    wait_for(lambda: cluster.try_get("virtualmachineinstances", "db-legacy") is None, "the VMI to go")
    vm = wait_for(lambda: (v := cluster.vm("db-legacy")) and v["status"].get("printableStatus") == "Stopped" and v,
                  "printableStatus Stopped")
    macs = {i["name"]: i.get("macAddress") for i in vm["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"]}
    assert macs == {"default": "02:11:22:33:44:01", "nic-vlan100": "02:11:22:33:44:02"}


def test_start_creates_vmi(cluster):
    cluster.custom.patch_namespaced_custom_object(GROUP, "v1", NAMESPACE, "virtualmachines", VM_NAME,
                                                  {"spec": {"runStrategy": "Halted"}})
    wait_for(lambda: cluster.try_get("virtualmachineinstances", VM_NAME) is None, "the VMI to go")
    cluster.custom.patch_namespaced_custom_object(GROUP, "v1", NAMESPACE, "virtualmachines", VM_NAME,
                                                  {"spec": {"runStrategy": "RerunOnFailure"}})
    vmi = wait_for(lambda: (v := cluster.try_get("virtualmachineinstances", VM_NAME))
                   and v.get("status", {}).get("phase") == "Running" and v, "a Running VMI")
    assert vmi["status"]["nodeName"] in ("node-1", "node-2")
    assert [e["name"] for e in vmi["status"]["interfaces"]] == ["default", "nic-vlan100"]
    assert status_entry(vmi, "nic-vlan100")["infoSource"] == "domain, guest-agent, multus-status"
    assert status_entry(vmi, "default")["mac"] == "02:3c:8e:41:7a:10"
    pods = cluster.core.list_namespaced_pod(NAMESPACE, label_selector=f"kubevirt.io/created-by={vmi['metadata']['uid']}").items
    assert len(pods) == 1
    assert condition(vmi, "Ready")["status"] == "True"
    wait_for(lambda: cluster.vm()["status"].get("printableStatus") == "Running", "printableStatus Running")


def test_stopped_vm_drops_absent(cluster):
    cluster.custom.patch_namespaced_custom_object(GROUP, "v1", NAMESPACE, "virtualmachines", VM_NAME,
                                                  {"spec": {"runStrategy": "Halted"}})
    wait_for(lambda: cluster.try_get("virtualmachineinstances", VM_NAME) is None, "the VMI to go")
    cluster.edit_vm(lambda vm: mark_absent(vm, "nic-vlan100"))
    wait_for(lambda: "nic-vlan100" not in interface_names(cluster.vm()["spec"]["template"]["spec"]), "nic-vlan100 dropped")
    assert [n["name"] for n in cluster.vm()["spec"]["template"]["spec"]["networks"]] == ["default"]


def vm_action(cluster, name: str, action: str) -> None:
    """PUT a VM subresource of subresources.kubevirt.io (start, stop, restart), as virtctl does.

    A 409 caused by a concurrent VM status write (controllers update it all the time) is retried.
    """
    client = cluster.custom.api_client
    for _ in range(20):
        request = client.param_serialize(
            method="PUT",
            resource_path=f"/apis/subresources.kubevirt.io/v1/namespaces/{NAMESPACE}/virtualmachines/{name}/{action}",
            header_params={"Content-Type": "application/json"}, body={}, auth_settings=["BearerToken"])
        response = client.call_api(*request)
        response.read()
        if response.status == 409 and b"the object has been modified" in response.data:
            continue
        assert response.status in (200, 202), response.data
        return
    raise AssertionError(f"{action} of VM {name} kept conflicting")


def test_restart_replaces_vmi(cluster):
    old_uid = cluster.vmi()["metadata"]["uid"]
    vm_action(cluster, VM_NAME, "restart")
    vmi = wait_for(lambda: (v := cluster.try_get("virtualmachineinstances", VM_NAME)) and v["metadata"]["uid"] != old_uid
                   and v.get("status", {}).get("phase") == "Running" and v, "a new Running VMI")
    assert vmi["metadata"]["annotations"]["kubevirt.io/vm-generation"] == "3"
    assert condition(vmi, "AgentConnected")["status"] == "True"


def test_manual_stop_start(cluster):
    cluster.custom.patch_namespaced_custom_object(GROUP, "v1", NAMESPACE, "virtualmachines", VM_NAME,
                                                  {"spec": {"runStrategy": "Manual"}})
    vm_action(cluster, VM_NAME, "stop")
    wait_for(lambda: cluster.try_get("virtualmachineinstances", VM_NAME) is None, "the VMI to go")
    wait_for(lambda: not cluster.vm()["status"].get("stateChangeRequests"), "the stop request handled")

    vm_action(cluster, VM_NAME, "start")
    wait_for(lambda: (v := cluster.try_get("virtualmachineinstances", VM_NAME)) and v.get("status", {}).get("phase") == "Running",
             "a Running VMI")
    vm = wait_for(lambda: (v := cluster.vm()) and not v["status"].get("stateChangeRequests") and v, "the start request handled")
    assert vm["spec"]["runStrategy"] == "Manual"


def post_fault(cluster, kind: str, args: dict) -> int:
    request = urllib.request.Request(f"{cluster.sim.url}/sim/faults", method="POST",
                                     data=json.dumps({"kind": kind, "args": args}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status


def test_fault_endpoint_json(cluster):
    assert post_fault(cluster, "disconnect_agent", {"vmi": "default/web-01"}) == 200
    wait_for(lambda: condition(cluster.vmi(), "AgentConnected")["status"] == "False", "AgentConnected False")

    request = urllib.request.Request(f"{cluster.sim.url}/sim/faults", method="DELETE")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    wait_for(lambda: condition(cluster.vmi(), "AgentConnected")["status"] == "True", "AgentConnected True again")


def test_parallel_outbound_cap(manual):
    manual.custom.patch_namespaced_custom_object(
        GROUP, "v1", "harvester-system", "kubevirts", "kubevirt",
        {"spec": {"configuration": {"migrations": {"parallelOutboundMigrationsPerNode": 1}}}})
    manual.sim.faults.stall_migration("Scheduled")
    first = manual.create_migration(VM_NAME)["metadata"]["name"]
    wait_for(lambda: migration_phase(manual, first) == "Scheduled", "web-01's VMIM Scheduled")

    # rke2-pool1-abcde runs on node-1 like web-01; db-legacy runs on node-2.
    same_node = manual.create_migration("rke2-pool1-abcde")["metadata"]["name"]
    other_node = manual.create_migration("db-legacy")["metadata"]["name"]
    wait_for(lambda: migration_phase(manual, other_node) == "Scheduled", "db-legacy's VMIM Scheduled")
    assert migration_phase(manual, same_node) == "Pending"

    manual.sim.faults.clear()
    assert wait_final(manual, first)["status"]["phase"] == "Succeeded"
    assert wait_final(manual, same_node)["status"]["phase"] == "Succeeded"
    assert wait_final(manual, other_node)["status"]["phase"] == "Succeeded"


def clear_state(vm: dict, name: str) -> dict:
    for interface in vm["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"]:
        if interface["name"] == name:
            interface.pop("state", None)
    return vm


def test_revert_failed_unplug(manual):
    manual.sim.faults.fail_migration("Scheduling", vmi=VM_NAME)
    manual.edit_vm(lambda vm: mark_absent(vm, "nic-vlan100"))
    wait_for(lambda: (e := status_entry(manual.vmi(), "nic-vlan100")) and e["infoSource"] == "multus-status", "nic-vlan100 detached")
    assert wait_final(manual, manual.create_migration()["metadata"]["name"])["status"]["phase"] == "Failed"

    manual.edit_vm(lambda vm: clear_state(vm, "nic-vlan100"))
    entry = wait_for(lambda: (e := status_entry(manual.vmi(), "nic-vlan100")) and "guest-agent" in e["infoSource"] and e,
                     "nic-vlan100 attached again")
    assert entry["mac"] == "06:b2:19:c4:55:e1"
    assert "state" not in manual.vmi()["spec"]["domain"]["devices"]["interfaces"][1]
    wait_for(lambda: condition(manual.vmi(), "MigrationRequired") is None, "MigrationRequired removed")
