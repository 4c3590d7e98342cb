"""Rejection codes that need a changed cluster, end to end through the HotplugNic and UnplugNic workflows.

Each test sets up the state that one rule rejects, through the Kubernetes API, a simulator
fault or an extra VM loaded from a manifest. It then runs the request and checks that the VM
spec and generation stay as they were and that nicflow created no VMIM. The ledger must record
the operation as rejected with the code, and no MAC reservation may stay active.
tests/e2e/test_rejections_e2e.py and tests/e2e/test_rules_e2e.py cover the other codes.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from kubevirt_sim import Simulator
from nicflow.devstack import BUNDLED_MANIFESTS
from nicflow.kube import KubeVirtClient
from nicflow.ledger import Ledger
from nicflow.models import HotplugRequest, OperationResult, OperationStatus, UnplugRequest
from nicflow.patches import template_interfaces
from nicflow.reasons import Reason
from tests.e2e.conftest import SPEED, run_operation, vm_action, wait_until

pytestmark = pytest.mark.e2e


KUBEVIRT_GROUP = "kubevirt.io"
MULTUS_GROUP = "k8s.cni.cncf.io"
MERGE_PATCH = "application/merge-patch+json"

# A finalizer that no controller removes, so a deleted object keeps its deletionTimestamp.
HOLD_FINALIZER = "e2e.nicflow.test/hold"
ALLOW_POD_BRIDGE_ANNOTATION = "kubevirt.io/allow-pod-bridge-network-live-migration"
ROOT_COMPLEX_ANNOTATION = "kubevirt.io/placePCIDevicesOnRootComplex"

# Codes that no request can carry into a workflow, with the test that shows why.
UNREACHABLE: dict[Reason, str] = {Reason.NETWORK_NAME_INVALID: "test_network_name_invalid_stops_at_model"}



# --- Extra VMs ------------------------------------------------------------------------------


def _set_interface(spec: dict, name: str, **fields: Any) -> None:
    interface = next(item for item in spec["domain"]["devices"]["interfaces"] if item["name"] == name)
    interface.update(fields)


def _bridge_on_pod_network(vm: dict, vmi: dict) -> None:
    for spec in (vm["spec"]["template"]["spec"], vmi["spec"]):
        interface = next(item for item in spec["domain"]["devices"]["interfaces"] if item["name"] == "default")
        del interface["masquerade"]
        interface["bridge"] = {}
    # KubeVirt reports a bridge on the pod network as not live migratable.
    condition = next(item for item in vmi["status"]["conditions"] if item["type"] == "LiveMigratable")
    condition.update(status="False", reason="InterfaceNotLiveMigratable")


def _allowed_bridge_on_pod_network(vm: dict, vmi: dict) -> None:
    _bridge_on_pod_network(vm, vmi)
    vm["spec"]["template"]["metadata"]["annotations"] = {ALLOW_POD_BRIDGE_ANNOTATION: ""}
    vmi["metadata"]["annotations"][ALLOW_POD_BRIDGE_ANNOTATION] = ""
    condition = next(item for item in vmi["status"]["conditions"] if item["type"] == "LiveMigratable")
    condition["status"] = "True"
    condition.pop("reason")


def _e1000_model(vm: dict, vmi: dict) -> None:
    _set_interface(vm["spec"]["template"]["spec"], "nic-vlan100", model="e1000")
    _set_interface(vmi["spec"], "nic-vlan100", model="e1000")


def _ordinal_pod_interface(vm: dict, vmi: dict) -> None:
    # KubeVirt v0.59 and older named the pod interfaces of secondary networks net1, net2, ...
    entry = next(item for item in vmi["status"]["interfaces"] if item["name"] == "nic-vlan100")
    entry["podInterfaceName"] = "net1"


def _only_secondary_interface(vm: dict, vmi: dict) -> None:
    for spec in (vm["spec"]["template"]["spec"], vmi["spec"]):
        spec["domain"]["devices"]["interfaces"] = [i for i in spec["domain"]["devices"]["interfaces"] if i["name"] != "default"]
        spec["networks"] = [n for n in spec["networks"] if n["name"] != "default"]
    vmi["status"]["interfaces"] = [e for e in vmi["status"]["interfaces"] if e["name"] != "default"]


def _small_memory(vm: dict, vmi: dict) -> None:
    # With at most 2 GiB of guest memory, KubeVirt 1.6.0 to 1.6.3 reserve max(8 - PCI devices in use, 3)
    # root ports.
    for spec in (vm["spec"]["template"]["spec"], vmi["spec"]):
        spec["domain"]["memory"]["guest"] = "2Gi"
        spec["domain"]["resources"]["requests"]["memory"] = "2Gi"
        spec["domain"]["resources"]["limits"]["memory"] = "2Gi"


# Extra VMs by name, each made by an edit of a copy of web-01 (VM and running VMI on node-1).
EXTRA_VMS: dict[str, Callable[[dict, dict], None]] = {
    "podbridge-01": _bridge_on_pod_network,
    "podbridge-02": _allowed_bridge_on_pod_network,
    "e1000-01": _e1000_model,
    "legacy-01": _ordinal_pod_interface,
    "single-01": _only_secondary_interface,
    "small-01": _small_memory,
}


def extra_vm_manifests(folder: Path) -> Path:
    """Write the EXTRA_VMS as copies of web-01, each with its own name, uids and MACs, and return the file."""
    documents = list(yaml.safe_load_all((BUNDLED_MANIFESTS / "vm-web-01.yaml").read_text()))
    vm_template = next(d for d in documents if d["kind"] == "VirtualMachine")
    vmi_template = next(d for d in documents if d["kind"] == "VirtualMachineInstance")
    output = []
    for index, (name, edit) in enumerate(EXTRA_VMS.items()):
        vm, vmi = copy.deepcopy(vm_template), copy.deepcopy(vmi_template)
        vm_uid = f"00000000-0000-4000-9000-{index:04d}00000001"
        vm["metadata"].update(name=name, uid=vm_uid)
        vm["spec"]["template"]["metadata"]["labels"]["harvesterhci.io/vmName"] = name
        vmi["metadata"].update(name=name, uid=f"00000000-0000-4000-9000-{index:04d}00000002")
        vmi["metadata"]["labels"]["harvesterhci.io/vmName"] = name
        vmi["metadata"]["ownerReferences"][0].update(name=name, uid=vm_uid)

        macs = {
            interface["name"]: f"02:fe:01:00:{index:02x}:{position:02x}"
            for position, interface in enumerate(template_interfaces(vm))
        }
        for interfaces in (template_interfaces(vm), vmi["spec"]["domain"]["devices"]["interfaces"]):
            for interface in interfaces:
                interface["macAddress"] = macs[interface["name"]]
        for entry in vmi["status"]["interfaces"]:
            entry["mac"] = macs[entry["name"]]

        edit(vm, vmi)
        remaining = {interface["name"]: interface["macAddress"] for interface in template_interfaces(vm)}
        vm["metadata"]["annotations"]["harvesterhci.io/mac-address"] = json.dumps(remaining)
        output.extend([vm, vmi])

    path = folder / "extra-vms.yaml"
    path.write_text(yaml.safe_dump_all(output))
    return path


@pytest.fixture
def sim(request: pytest.FixtureRequest, tmp_path: Path, kubevirt_schema_path: Path) -> Iterator[Simulator]:
    """Start the simulator on the bundled manifests and EXTRA_VMS.

    An indirect parameter, a dict of `speed` and `migration_seconds`, replaces the defaults.
    """
    options = {"speed": SPEED, "migration_seconds": 20.0, **getattr(request, "param", {})}
    manifests = [BUNDLED_MANIFESTS, extra_vm_manifests(tmp_path)]
    simulator = Simulator(manifests, schema_path=kubevirt_schema_path, **options)
    simulator.start()
    try:
        yield simulator
    finally:
        simulator.stop()


# --- Helpers --------------------------------------------------------------------------------


def hotplug(vm: str = "default/web-01", network: str = "default/vlan200", interface: str = "nic-2") -> HotplugRequest:
    return HotplugRequest(vm=vm, network=network, interface=interface, actor="e2e", reason="reason code test")


def unplug(vm: str = "default/web-01", interface: str = "nic-vlan100") -> UnplugRequest:
    return UnplugRequest(vm=vm, interface=interface, actor="e2e", reason="reason code test")


def condition_of(obj: dict | None, condition_type: str) -> dict:
    for condition in (obj or {}).get("status", {}).get("conditions") or []:
        if condition.get("type") == condition_type:
            return condition
    return {}


def migration_names(kube: KubeVirtClient, namespace: str, vmi_name: str) -> list[str]:
    return [migration["metadata"]["name"] for migration in kube.list_migrations(namespace, vmi_name)]


async def run_rejected(client, settings, kube: KubeVirtClient, ledger: Ledger, request, reason_code: Reason) -> OperationResult:
    """Run `request` and check that it was rejected with `reason_code` and changed nothing."""
    namespace, name = request.vm.split("/")
    before = kube.get_vm(namespace, name)
    migrations_before = migration_names(kube, namespace, name)

    result = await run_operation(client, settings, request)

    assert result.status == OperationStatus.REJECTED, result.message
    assert result.reason_code == reason_code, result.message
    after = kube.get_vm(namespace, name)
    assert after["spec"] == before["spec"]
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    assert migration_names(kube, namespace, name) == migrations_before
    row = ledger.get_operation(result.operation_id)
    assert row.status == "rejected"
    assert row.reason_code == reason_code
    assert ledger.active_reservations() == []
    return result


# --- The VM and its instance ----------------------------------------------------------------


async def test_vm_not_running_while_starting(client, settings, worker, kube: KubeVirtClient, ledger: Ledger):
    await vm_action(kube, "web-01", "stop")
    await wait_until(lambda: kube.get_vmi("default", "web-01") is None, "the VMI of web-01 is gone")
    for node in kube.list_nodes():
        kube.core.patch_node(node["metadata"]["name"], {"spec": {"unschedulable": True}})
    await vm_action(kube, "web-01", "start")
    await wait_until(
        lambda: condition_of(kube.get_vmi("default", "web-01"), "PodScheduled").get("status") == "False",
        "the new VMI of web-01 is unschedulable",
    )

    result = await run_rejected(client, settings, kube, ledger, hotplug(), Reason.VM_NOT_RUNNING)

    assert "VMI phase Scheduling" in result.message


async def test_vm_not_ready(client, settings, worker, kube: KubeVirtClient, ledger: Ledger):
    vmi = kube.get_vmi("default", "web-01")
    conditions = [item for item in vmi["status"]["conditions"] if item["type"] != "Ready"]
    conditions.append({"type": "Ready", "status": "False", "reason": "GuestNotRunning"})
    kube.custom.patch_namespaced_custom_object(
        KUBEVIRT_GROUP, "v1", "default", "virtualmachineinstances", "web-01",
        {"status": {"conditions": conditions}}, _content_type=MERGE_PATCH,
    )

    result = await run_rejected(client, settings, kube, ledger, hotplug(), Reason.VM_NOT_READY)

    assert "GuestNotRunning" in result.message


async def test_vm_being_deleted(client, settings, worker, kube: KubeVirtClient, ledger: Ledger):
    kube.custom.patch_namespaced_custom_object(
        KUBEVIRT_GROUP, "v1", "default", "virtualmachines", "web-01",
        {"metadata": {"finalizers": [HOLD_FINALIZER]}}, _content_type=MERGE_PATCH,
    )
    kube.custom.delete_namespaced_custom_object(KUBEVIRT_GROUP, "v1", "default", "virtualmachines", "web-01")
    await wait_until(lambda: kube.get_vmi("default", "web-01") is None, "the VMI of the deleted web-01 is gone")
    assert kube.get_vm("default", "web-01")["metadata"]["deletionTimestamp"]

    await run_rejected(client, settings, kube, ledger, hotplug(), Reason.VM_BEING_DELETED)


# --- Live migration -------------------------------------------------------------------------


async def test_migration_in_progress(sim: Simulator, client, settings, worker, kube: KubeVirtClient, ledger: Ledger):
    sim.faults.stall_migration("Running", vmi="default/web-01")
    kube.create_migration("default", {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstanceMigration",
        "metadata": {"name": "e2e-move", "namespace": "default"},
        "spec": {"vmiName": "web-01"},
    })
    await wait_until(
        lambda: kube.get_migration("default", "e2e-move").get("status", {}).get("phase") == "Running",
        "migration e2e-move is Running",
    )

    result = await run_rejected(client, settings, kube, ledger, hotplug(), Reason.MIGRATION_IN_PROGRESS)

    assert "e2e-move" in result.message
    assert kube.get_migration("default", "e2e-move")["status"]["phase"] == "Running"


async def test_kubevirt_not_ready(client, settings, worker, kube: KubeVirtClient, ledger: Ledger):
    kube.custom.patch_namespaced_custom_object_status(
        KUBEVIRT_GROUP, "v1", "harvester-system", "kubevirts", "kubevirt",
        {"status": {"phase": "Deploying", "conditions": [
            {"type": "Available", "status": "False", "reason": "DeploymentInProgress"},
        ]}},
        _content_type=MERGE_PATCH,
    )

    result = await run_rejected(client, settings, kube, ledger, hotplug(), Reason.KUBEVIRT_NOT_READY)

    assert "DeploymentInProgress" in result.message


async def test_pod_bridge_not_live_migratable(client, settings, worker, kube: KubeVirtClient, ledger: Ledger):
    await wait_until(
        lambda: condition_of(kube.get_vmi("default", "podbridge-01"), "LiveMigratable").get("status") == "False",
        "KubeVirt reports podbridge-01 as not live migratable",
    )

    result = await run_rejected(client, settings, kube, ledger, hotplug(vm="default/podbridge-01"), Reason.NOT_LIVE_MIGRATABLE)

    assert "InterfaceNotLiveMigratable" in result.message
    assert ALLOW_POD_BRIDGE_ANNOTATION in result.message


# --- The network being added ----------------------------------------------------------------


def test_network_name_invalid_stops_at_model():
    # The rule rejects an empty part or more than one "/". HotplugRequest already requires
    # NAMESPACE/NAME with RFC 1123 parts, so such a name never reaches a workflow.
    for network in ("default/vlan/200", "/vlan200", "default/", "vlan200"):
        with pytest.raises(ValidationError, match="invalid network"):
            hotplug(network=network)


async def test_nad_being_deleted(client, settings, worker, kube: KubeVirtClient, ledger: Ledger):
    kube.custom.patch_namespaced_custom_object(
        MULTUS_GROUP, "v1", "default", "network-attachment-definitions", "vlan200",
        {"metadata": {"finalizers": [HOLD_FINALIZER]}}, _content_type=MERGE_PATCH,
    )
    kube.custom.delete_namespaced_custom_object(MULTUS_GROUP, "v1", "default", "network-attachment-definitions", "vlan200")
    assert kube.get_nad("default", "vlan200")["metadata"]["deletionTimestamp"]

    await run_rejected(client, settings, kube, ledger, hotplug(network="default/vlan200"), Reason.NAD_BEING_DELETED)


@pytest.mark.parametrize("config", ['{"cniVersion":"0.3.1","type":"bridge"', '["bridge"]'], ids=["not-json", "json-list"])
async def test_nad_config_invalid(config, client, settings, worker, kube: KubeVirtClient, ledger: Ledger):
    kube.custom.create_namespaced_custom_object(MULTUS_GROUP, "v1", "default", "network-attachment-definitions", {
        "apiVersion": "k8s.cni.cncf.io/v1",
        "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": "broken", "namespace": "default", "labels": {
            "network.harvesterhci.io/type": "L2VlanNetwork", "network.harvesterhci.io/clusternetwork": "data",
            "network.harvesterhci.io/vlan-id": "300", "network.harvesterhci.io/ready": "true"}},
        "spec": {"config": config},
    })

    await run_rejected(client, settings, kube, ledger, hotplug(network="default/broken"), Reason.NAD_CONFIG_INVALID)


# --- The interface being added --------------------------------------------------------------


async def test_interface_name_too_long(client, settings, worker, kube: KubeVirtClient, ledger: Ledger):
    # HotplugRequest accepts any length, so a 64-character name reaches the rule.
    request = hotplug(interface="n" * 64)

    result = await run_rejected(client, settings, kube, ledger, request, Reason.INTERFACE_NAME_INVALID)

    assert "63" in result.message


def test_interface_name_characters_stop_at_model():
    # The rule's character set equals the model's, so these names never reach a workflow.
    for interface in ("nic.2", "nic 2", "nic/2", ""):
        with pytest.raises(ValidationError, match="invalid interface name"):
            hotplug(interface=interface)


async def test_root_ports_on_root_complex(client, settings, worker, kube: KubeVirtClient, ledger: Ledger):
    old_uid = kube.get_vmi("default", "web-01")["metadata"]["uid"]
    kube.patch_vm("default", "web-01", [
        {"op": "add", "path": "/spec/template/metadata/annotations", "value": {ROOT_COMPLEX_ANNOTATION: "true"}},
    ])
    await vm_action(kube, "web-01", "restart")

    def restarted() -> bool:
        vmi = kube.get_vmi("default", "web-01")
        return (
            vmi is not None
            and vmi["metadata"]["uid"] != old_uid
            and vmi.get("status", {}).get("phase") == "Running"
            and condition_of(vmi, "Ready").get("status") == "True"
        )

    await wait_until(restarted, "web-01 runs again with the root-complex annotation")
    assert kube.get_vmi("default", "web-01")["metadata"]["annotations"][ROOT_COMPLEX_ANNOTATION] == "true"

    result = await run_rejected(client, settings, kube, ledger, hotplug(), Reason.ROOT_PORTS_EXHAUSTED)

    assert ROOT_COMPLEX_ANNOTATION in result.message


# nicflow counts the hot-plugs since the VMI started by comparing the ledger's times with the
# VMI's creationTimestamp. At speed 100 the simulated clock runs ahead of the ledger's, so this
# test runs the simulator in real time with short migrations.
@pytest.mark.parametrize("sim", [{"speed": 1.0, "migration_seconds": 1.0}], indirect=True, ids=["real-time"])
async def test_root_ports_used_by_hotplugs(client, settings, worker, kube: KubeVirtClient, ledger: Ledger):
    # small-01 has 2 GiB of memory and, by nicflow's estimate, 8 PCI devices, so its domain
    # started with 3 free root ports.
    for number in (2, 3, 4):
        plugged = await run_operation(client, settings, hotplug(vm="default/small-01", interface=f"nic-{number}"))
        assert plugged.status == OperationStatus.SUCCEEDED, plugged.message

    # A short verify timeout makes a wrongly accepted request end soon, since the attach stalls.
    request = hotplug(vm="default/small-01", interface="nic-5").model_copy(update={"verify_timeout_seconds": 10.0})
    result = await run_rejected(client, settings, kube, ledger, request, Reason.ROOT_PORTS_EXHAUSTED)

    assert "3 hot-plugged since start" in result.message


# --- The interface being removed ------------------------------------------------------------


async def test_interface_not_virtio(client, settings, worker, kube: KubeVirtClient, ledger: Ledger):
    result = await run_rejected(client, settings, kube, ledger, unplug(vm="default/e1000-01"), Reason.INTERFACE_NOT_VIRTIO)

    assert "e1000" in result.message


async def test_interface_on_pod_network(client, settings, worker, kube: KubeVirtClient, ledger: Ledger):
    await wait_until(
        lambda: condition_of(kube.get_vmi("default", "podbridge-02"), "LiveMigratable").get("status") == "True",
        "KubeVirt reports podbridge-02 as live migratable",
    )

    await run_rejected(
        client, settings, kube, ledger, unplug(vm="default/podbridge-02", interface="default"), Reason.INTERFACE_ON_POD_NETWORK
    )


async def test_interface_already_absent(client, settings, worker, kube: KubeVirtClient, ledger: Ledger):
    # Without KubeVirt's automatic migrations nothing completes the unplug, so the interface
    # stays marked absent in the VM and VMI specs.
    kube.custom.patch_namespaced_custom_object(
        KUBEVIRT_GROUP, "v1", "harvester-system", "kubevirts", "kubevirt",
        {"spec": {"workloadUpdateStrategy": {"workloadUpdateMethods": []}}}, _content_type=MERGE_PATCH,
    )
    kube.patch_vm("default", "web-01", [
        {"op": "test", "path": "/spec/template/spec/domain/devices/interfaces/1/name", "value": "nic-vlan100"},
        {"op": "add", "path": "/spec/template/spec/domain/devices/interfaces/1/state", "value": "absent"},
    ])

    def absent_in_vmi() -> bool:
        vmi = kube.get_vmi("default", "web-01")
        interfaces = vmi["spec"]["domain"]["devices"]["interfaces"]
        return any(item["name"] == "nic-vlan100" and item.get("state") == "absent" for item in interfaces)

    await wait_until(absent_in_vmi, "KubeVirt copies state absent to the VMI of web-01")

    result = await run_rejected(client, settings, kube, ledger, unplug(), Reason.INTERFACE_ALREADY_ABSENT)

    assert "already registered for hot-unplugging" in result.message


async def test_interface_ordinal_pod_name(client, settings, worker, kube: KubeVirtClient, ledger: Ledger):
    result = await run_rejected(client, settings, kube, ledger, unplug(vm="default/legacy-01"), Reason.INTERFACE_ORDINAL_NAME)

    assert "net1" in result.message


async def test_last_interface(client, settings, worker, kube: KubeVirtClient, ledger: Ledger):
    await run_rejected(client, settings, kube, ledger, unplug(vm="default/single-01"), Reason.LAST_INTERFACE)


# --- Coverage -------------------------------------------------------------------------------


def test_every_reason_code_has_a_test():
    # A code passes when an e2e file names it, or when UNREACHABLE names the test that shows
    # why no workflow can get it.
    folder = Path(__file__).parent
    text = "".join((folder / name).read_text() for name in ("test_rejections_e2e.py", "test_rules_e2e.py"))
    text += Path(__file__).read_text().split("# --- Coverage")[0]
    untested = [
        code.value for code in Reason
        if code not in UNREACHABLE and f'"{code.value}"' not in text and not re.search(rf"Reason\.{code.name}\b", text)
    ]
    assert untested == []
    for test_name in UNREACHABLE.values():
        assert callable(globals().get(test_name)), test_name
