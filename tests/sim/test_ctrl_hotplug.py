"""Hot-plug and unplug through the simulator's controllers, driven by the official client over HTTP."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import urllib3

from kubevirt_sim import Simulator
from tests.conftest import HARVESTER_FIXTURES

GROUP, VERSION = "kubevirt.io", "v1"
NAMESPACE = "default"
VM_NAME = "web-01"
NEW_MAC = "0a:51:d7:30:9c:44"
PHASES = ["Pending", "Scheduling", "Scheduled", "PreparingTarget", "TargetReady", "Running", "Succeeded"]

# Real seconds a wait may take before the test fails. At speed 200 a 20 s migration takes 0.1 s.
WAIT_SECONDS = 20.0


@dataclass
class Cluster:
    """A running simulator and the official clients bound to it."""

    sim: Simulator
    custom: kubernetes.client.CustomObjectsApi
    core: kubernetes.client.CoreV1Api

    def get(self, plural: str, name: str, namespace: str = NAMESPACE) -> dict:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)

    def try_get(self, plural: str, name: str, namespace: str = NAMESPACE) -> dict | None:
        try:
            return self.get(plural, name, namespace)
        except kubernetes.client.ApiException as error:
            if error.status == 404:
                return None
            raise

    def list(self, plural: str, namespace: str = NAMESPACE) -> list[dict]:
        return self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, plural)["items"]

    def vm(self, name: str = VM_NAME) -> dict:
        return self.get("virtualmachines", name)

    def vmi(self, name: str = VM_NAME) -> dict:
        return self.get("virtualmachineinstances", name)

    def replace_vm(self, vm: dict) -> dict:
        return self.custom.replace_namespaced_custom_object(
            GROUP, VERSION, vm["metadata"]["namespace"], "virtualmachines", vm["metadata"]["name"], vm)

    def edit_vm(self, edit: Callable[[dict], Any], name: str = VM_NAME) -> dict:
        """Read, edit and replace a VM, retrying on 409 Conflict as controllers write its status meanwhile."""
        for _ in range(20):
            vm = self.vm(name)
            edit(vm)
            try:
                return self.replace_vm(vm)
            except kubernetes.client.ApiException as error:
                if error.status != 409:
                    raise
        pytest.fail(f"VM {name} kept conflicting on update")

    def create_migration(self, vmi_name: str = VM_NAME) -> dict:
        body = {
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachineInstanceMigration",
            "metadata": {"generateName": f"{vmi_name}-"},
            "spec": {"vmiName": vmi_name},
        }
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "virtualmachineinstancemigrations", body)

    def set_workload_updates(self, methods: list[str]) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, "harvester-system", "kubevirts", "kubevirt",
            {"spec": {"workloadUpdateStrategy": {"workloadUpdateMethods": methods}}})


def wait_for(check: Callable[[], Any], description: str, timeout: float = WAIT_SECONDS) -> Any:
    """Poll `check` until it returns a truthy value and return it; fail the test after `timeout` real seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.01)
    pytest.fail(f"timed out after {timeout} s waiting for {description}; last value: {last!r}")


def condition(obj: dict, condition_type: str) -> dict | None:
    return next((c for c in obj.get("status", {}).get("conditions") or [] if c["type"] == condition_type), None)


def status_entry(vmi: dict, name: str) -> dict | None:
    return next((e for e in vmi.get("status", {}).get("interfaces") or [] if e.get("name") == name), None)


def interface_names(spec: dict) -> list[str]:
    return [i["name"] for i in spec["domain"]["devices"]["interfaces"]]


def network_names(spec: dict) -> list[str]:
    return [n["name"] for n in spec["networks"]]


def add_interface(vm: dict, name: str, network: str, mac: str | None = NEW_MAC) -> dict:
    template = vm["spec"]["template"]["spec"]
    interface = {"name": name, "model": "virtio", "bridge": {}}
    if mac:
        interface["macAddress"] = mac
    template["domain"]["devices"]["interfaces"].append(interface)
    template["networks"].append({"name": name, "multus": {"networkName": network}})
    return vm


def mark_absent(vm: dict, name: str) -> dict:
    for interface in vm["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"]:
        if interface["name"] == name:
            interface["state"] = "absent"
    return vm


def migration_phase(cluster: Cluster, name: str) -> str:
    migration = cluster.try_get("virtualmachineinstancemigrations", name)
    return (migration or {}).get("status", {}).get("phase", "")


def wait_final(cluster: Cluster, name: str) -> dict:
    wait_for(lambda: migration_phase(cluster, name) in ("Succeeded", "Failed"), f"VMIM {name} to finish")
    return cluster.get("virtualmachineinstancemigrations", name)


@dataclass
class VMIRecorder:
    """Every version of one VMI seen by a watch over HTTP, in order."""

    cluster: Cluster
    name: str = VM_NAME
    versions: list[dict] = field(default_factory=list)
    _watch: kubernetes.watch.Watch | None = None
    _thread: threading.Thread | None = None

    def start(self) -> "VMIRecorder":
        listing = self.cluster.custom.list_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, "virtualmachineinstances", field_selector=f"metadata.name={self.name}")
        self.versions.extend(listing["items"])
        self._watch = kubernetes.watch.Watch()
        ready = threading.Event()

        def run() -> None:
            stream = self._watch.stream(
                self.cluster.custom.list_namespaced_custom_object, GROUP, VERSION, NAMESPACE, "virtualmachineinstances",
                field_selector=f"metadata.name={self.name}", resource_version=listing["metadata"]["resourceVersion"],
                timeout_seconds=60)
            ready.set()
            try:
                for event in stream:
                    self.versions.append(event["object"])
            except urllib3.exceptions.ProtocolError:
                # The simulator closed the watch on shutdown; the versions seen so far are kept.
                return

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(5)
        return self

    def stop(self) -> None:
        if self._watch is not None:
            self._watch.stop()

    def info_sources(self, interface: str) -> list[str]:
        """Return the distinct successive infoSource values of an interface's status entry ('' for no entry)."""
        values: list[str] = []
        for version in self.versions:
            entry = status_entry(version, interface)
            value = entry.get("infoSource", "") if entry else ""
            if not values or values[-1] != value:
                values.append(value)
        return values

    def condition_values(self, condition_type: str) -> list[tuple[str, str] | None]:
        """Return the distinct successive (status, reason) values of a VMI condition (None when absent)."""
        values: list[tuple[str, str] | None] = []
        for version in self.versions:
            found = condition(version, condition_type)
            value = (found["status"], found.get("reason", "")) if found else None
            if not values or values[-1] != value:
                values.append(value)
        return values

    def annotation_values(self, key: str) -> list[str | None]:
        values: list[str | None] = []
        for version in self.versions:
            value = (version["metadata"].get("annotations") or {}).get(key)
            if not values or values[-1] != value:
                values.append(value)
        return values


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """The Harvester fixtures with controllers and admission, 200 times faster than real time."""
    simulator = Simulator([HARVESTER_FIXTURES], speed=200, migration_seconds=20)
    simulator.start()
    client = kubernetes.config.new_client_from_config(config_file=str(simulator.write_kubeconfig(tmp_path / "kubeconfig")))
    try:
        yield Cluster(simulator, kubernetes.client.CustomObjectsApi(client), kubernetes.client.CoreV1Api(client))
    finally:
        client.close()
        simulator.stop()


@pytest.fixture
def manual(cluster: Cluster) -> Cluster:
    """The cluster with KubeVirt's automatic migrations off, so that the test creates the VMIM."""
    cluster.set_workload_updates([])
    return cluster


def hot_plug_nic2(cluster: Cluster) -> None:
    cluster.edit_vm(lambda vm: add_interface(vm, "nic-2", "default/vlan200"))
    wait_for(lambda: "nic-2" in interface_names(cluster.vmi()["spec"]), "nic-2 in the VMI spec")


# Start-up.


def test_launcher_pods_for_loaded_vmis(cluster):
    pods = wait_for(lambda: (items := cluster.core.list_namespaced_pod(
        NAMESPACE, label_selector="kubevirt.io=virt-launcher").items) and len(items) == 3 and items, "three launcher pods")
    vmi = cluster.vmi()
    pod = wait_for(lambda: next((p for p in cluster.core.list_namespaced_pod(
        NAMESPACE, label_selector=f"kubevirt.io/created-by={vmi['metadata']['uid']}").items), None), "web-01's pod")
    assert {p.metadata.labels["vm.kubevirt.io/name"] for p in pods} == {"web-01", "db-legacy", "rke2-pool1-abcde"}
    assert pod.spec.node_name == "node-1"
    assert '"interface":"podc39e4a25326"' in pod.metadata.annotations["k8s.v1.cni.cncf.io/networks"]
    assert "podc39e4a25326" in pod.metadata.annotations["k8s.v1.cni.cncf.io/network-status"]
    assert pod.status.pod_ip == "10.52.1.41"


def test_vmi_gets_backfill_finalizer(cluster):
    finalizers = wait_for(lambda: cluster.vmi()["metadata"].get("finalizers"), "VMI finalizers")
    assert "wrangler.cattle.io/VMController.BackfillObservedNetworkMacAddress" in finalizers


# Hot-plug.


def test_hot_plug_end_to_end(manual):
    recorder = VMIRecorder(manual).start()
    hot_plug_nic2(manual)

    vmi = manual.vmi()
    assert vmi["spec"]["networks"][-1] == {"name": "nic-2", "multus": {"networkName": "default/vlan200"}}
    wait_for(lambda: ("True", "AutoMigrationDueToLiveUpdate") in recorder.condition_values("MigrationRequired"),
             "MigrationRequired True in the watch")
    assert recorder.condition_values("MigrationRequired") == [
        None, ("False", "AutoMigrationPending"), ("True", "AutoMigrationDueToLiveUpdate")]
    assert status_entry(manual.vmi(), "nic-2") is None
    vm_condition = wait_for(lambda: condition(manual.vm(), "MigrationRequired"), "MigrationRequired on the VM")
    assert vm_condition["reason"] == "AutoMigrationDueToLiveUpdate"

    migration = manual.create_migration()
    name = migration["metadata"]["name"]
    assert migration["metadata"]["labels"]["kubevirt.io/vmi-name"] == VM_NAME
    finished = wait_final(manual, name)
    assert finished["status"]["phase"] == "Succeeded"
    assert [t["phase"] for t in finished["status"]["phaseTransitionTimestamps"]] == PHASES
    stamps = [t["phaseTransitionTimestamp"] for t in finished["status"]["phaseTransitionTimestamps"]]
    assert stamps == sorted(stamps)

    entry = wait_for(lambda: (e := status_entry(manual.vmi(), "nic-2")) and "guest-agent" in e["infoSource"] and e,
                     "nic-2 reported by the guest agent")
    wait_for(lambda: recorder.info_sources("nic-2")[-1] == entry["infoSource"], "the watch to catch up")
    wait_for(lambda: recorder.condition_values("MigrationRequired")[-1] is None, "MigrationRequired removal in the watch")
    recorder.stop()
    assert entry["mac"] == NEW_MAC
    assert entry["interfaceName"] == "enp3s0"
    assert entry["podInterfaceName"] == "pod3c50acb7c28"
    assert recorder.info_sources("nic-2") == [
        "", "multus-status", "domain, multus-status", "domain, guest-agent, multus-status"]
    assert recorder.condition_values("MigrationRequired")[-1] is None

    vmi = manual.vmi()
    assert [e["name"] for e in vmi["status"]["interfaces"]] == ["default", "nic-vlan100", "nic-2"]
    assert condition(vmi, "MigrationRequired") is None
    assert vmi["status"]["nodeName"] == "node-2"
    assert vmi["metadata"]["labels"]["kubevirt.io/nodeName"] == "node-2"


def test_hot_plug_migration_state(manual):
    hot_plug_nic2(manual)
    name = manual.create_migration()["metadata"]["name"]
    finished = wait_final(manual, name)
    state = manual.vmi()["status"]["migrationState"]

    assert finished["status"]["phase"] == "Succeeded"
    assert state["migrationUid"] == finished["metadata"]["uid"]
    assert state["sourceNode"] == "node-1"
    assert state["targetNode"] == "node-2"
    assert state["targetNodeAddress"] == "10.52.2.7"
    assert state["completed"] is True
    assert state["mode"] == "PreCopy"
    assert state["startTimestamp"] <= state["endTimestamp"]
    assert finished["status"]["migrationState"]["completed"] is True
    assert finished["status"]["migrationState"]["targetNode"] == "node-2"


def test_hot_plug_pods_switch(manual):
    vmi_uid = manual.vmi()["metadata"]["uid"]
    hot_plug_nic2(manual)
    name = manual.create_migration()["metadata"]["name"]
    wait_final(manual, name)

    pods = wait_for(lambda: [p for p in manual.core.list_namespaced_pod(
        NAMESPACE, label_selector=f"kubevirt.io/created-by={vmi_uid}").items
        if p.metadata.deletion_timestamp is None and p.spec.node_name == "node-2"], "the target pod")
    remaining = manual.core.list_namespaced_pod(NAMESPACE, label_selector=f"kubevirt.io/created-by={vmi_uid}").items
    assert len(pods) == 1
    assert [p.spec.node_name for p in remaining] == ["node-2"]
    assert "pod3c50acb7c28" in pods[0].metadata.annotations["k8s.v1.cni.cncf.io/network-status"]
    anti_affinity = pods[0].spec.affinity.pod_anti_affinity.required_during_scheduling_ignored_during_execution
    assert anti_affinity[0].topology_key == "kubernetes.io/hostname"


def test_hot_plug_harvester_annotations(manual):
    recorder = VMIRecorder(manual).start()
    hot_plug_nic2(manual)
    migration = manual.create_migration()
    wait_final(manual, migration["metadata"]["name"])
    wait_for(lambda: "harvesterhci.io/migrationState" not in (manual.vmi()["metadata"].get("annotations") or {}),
             "migration annotations removed")
    wait_for(lambda: recorder.annotation_values("harvesterhci.io/migrationState")[-1] is None, "the watch to catch up")
    recorder.stop()

    states = [v for v in recorder.annotation_values("harvesterhci.io/migrationState")]
    uids = [v for v in recorder.annotation_values("harvesterhci.io/migrationUID") if v]
    assert states[-1] is None
    assert "Migrating" in states
    assert uids == [migration["metadata"]["uid"]]

    macs = wait_for(lambda: "nic-2" in manual.vm()["metadata"]["annotations"]["harvesterhci.io/mac-address"]
                    and manual.vm()["metadata"]["annotations"]["harvesterhci.io/mac-address"], "nic-2 in the MAC annotation")
    assert f'"nic-2":"{NEW_MAC}"' in macs


def test_hot_plug_vm_generations(manual):
    hot_plug_nic2(manual)
    status = wait_for(lambda: (s := manual.vm()["status"]) and s.get("desiredGeneration") == 4 and s, "desiredGeneration 4")
    assert status["observedGeneration"] == 3
    assert condition(manual.vm(), "RestartRequired") is None


def test_workload_updater_migrates(cluster):
    hot_plug_nic2(cluster)
    migration = wait_for(lambda: next((m for m in cluster.list("virtualmachineinstancemigrations")
                                       if m["metadata"]["name"].startswith("kubevirt-workload-update-")), None),
                         "an automatic VMIM")
    assert migration["metadata"]["annotations"] == {"kubevirt.io/workloadUpdateMigration": ""}
    assert migration["spec"] == {"vmiName": VM_NAME}
    assert len(migration["metadata"]["name"]) == len("kubevirt-workload-update-") + 5

    finished = wait_final(cluster, migration["metadata"]["name"])
    assert finished["status"]["phase"] == "Succeeded"
    entry = wait_for(lambda: (e := status_entry(cluster.vmi(), "nic-2")) and "domain" in e["infoSource"] and e, "nic-2 attached")
    assert entry["mac"] == NEW_MAC


def test_hot_plug_generated_mac(manual):
    manual.edit_vm(lambda vm: add_interface(vm, "nic-2", "default/vlan200", mac=None))
    mac = next(i["macAddress"] for i in manual.vm()["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"]
               if i["name"] == "nic-2")
    wait_for(lambda: "nic-2" in interface_names(manual.vmi()["spec"]), "nic-2 in the VMI spec")
    wait_final(manual, manual.create_migration()["metadata"]["name"])
    entry = wait_for(lambda: (e := status_entry(manual.vmi(), "nic-2")) and "domain" in e["infoSource"] and e, "nic-2 attached")
    assert entry["mac"] == mac


# Unplug.


def test_unplug_end_to_end(manual):
    recorder = VMIRecorder(manual).start()
    manual.edit_vm(lambda vm: mark_absent(vm, "nic-vlan100"))

    detached = wait_for(lambda: (e := status_entry(manual.vmi(), "nic-vlan100")) and e["infoSource"] == "multus-status" and e,
                        "nic-vlan100 detached")
    assert manual.list("virtualmachineinstancemigrations") == []
    assert detached == {"name": "nic-vlan100", "podInterfaceName": "podc39e4a25326", "infoSource": "multus-status"}
    assert manual.vmi()["spec"]["domain"]["devices"]["interfaces"][1]["state"] == "absent"
    pending = wait_for(lambda: condition(manual.vmi(), "MigrationRequired"), "MigrationRequired")
    assert pending["reason"] in ("AutoMigrationPending", "AutoMigrationDueToLiveUpdate")

    finished = wait_final(manual, manual.create_migration()["metadata"]["name"])
    assert finished["status"]["phase"] == "Succeeded"
    wait_for(lambda: status_entry(manual.vmi(), "nic-vlan100") is None, "the status entry removed")
    wait_for(lambda: "nic-vlan100" not in interface_names(manual.vmi()["spec"]), "nic-vlan100 removed from the VMI")
    wait_for(lambda: "nic-vlan100" not in interface_names(manual.vm()["spec"]["template"]["spec"]),
             "nic-vlan100 removed from the VM")
    wait_for(lambda: recorder.info_sources("nic-vlan100")[-1] == "", "the watch to catch up")
    recorder.stop()

    vm = manual.vm()
    vmi = manual.vmi()
    assert network_names(vm["spec"]["template"]["spec"]) == ["default"]
    assert network_names(vmi["spec"]) == ["default"]
    assert recorder.info_sources("nic-vlan100") == ["domain, guest-agent, multus-status", "multus-status", ""]
    assert condition(vmi, "MigrationRequired") is None
    assert condition(vm, "RestartRequired") is None
    macs = wait_for(lambda: (a := manual.vm()["metadata"]["annotations"]["harvesterhci.io/mac-address"])
                    and "nic-vlan100" not in a and a, "nic-vlan100 dropped from the MAC annotation")
    assert macs == '{"default":"02:3c:8e:41:7a:10"}'


def test_cancel_pending_hot_plug(manual):
    hot_plug_nic2(manual)
    manual.edit_vm(lambda vm: mark_absent(vm, "nic-2"))
    wait_for(lambda: "nic-2" not in interface_names(manual.vmi()["spec"]), "nic-2 removed from the VMI")
    wait_for(lambda: "nic-2" not in interface_names(manual.vm()["spec"]["template"]["spec"]), "nic-2 removed from the VM")
    wait_for(lambda: condition(manual.vmi(), "MigrationRequired") is None, "MigrationRequired removed")
    assert manual.list("virtualmachineinstancemigrations") == []


def test_removed_interface_restart_required(manual):
    def remove_last(vm: dict) -> None:
        vm["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"].pop()
        vm["spec"]["template"]["spec"]["networks"].pop()

    manual.edit_vm(remove_last)
    required = wait_for(lambda: condition(manual.vm(), "RestartRequired"), "RestartRequired")
    assert required["status"] == "True"
    assert required["message"] == "a non-live-updatable field was changed in the template spec"
    assert "nic-vlan100" in interface_names(manual.vmi()["spec"])


def test_state_restart_keeps_pods(tmp_path):
    state = tmp_path / "state.json"
    with Simulator([HARVESTER_FIXTURES], speed=200, migration_seconds=20, state_file=state) as first:
        wait_for(lambda: len(first.store.list("pods")[0]) == 3, "three launcher pods")
        pods_before = sorted(p["metadata"]["name"] for p in first.store.list("pods")[0])

    with Simulator([], speed=200, migration_seconds=20, state_file=state) as second:
        vmi = second.store.get("virtualmachineinstances", NAMESPACE, VM_NAME)
        second.clock.sleep(10)
        pods_after = sorted(p["metadata"]["name"] for p in second.store.list("pods")[0])

    assert vmi["status"]["phase"] == "Running"
    assert pods_after == pods_before
