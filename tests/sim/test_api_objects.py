"""Reads and writes through the official kubernetes client over HTTP."""

from __future__ import annotations

import json
import time

import kubernetes
import pytest
from kubernetes.client import CoreV1Api, CustomObjectsApi
from kubernetes.client.rest import ApiException

from kubevirt_sim import Simulator
from tests.conftest import HARVESTER_FIXTURES

KUBEVIRT = ("kubevirt.io", "v1")


def get_vm(custom: CustomObjectsApi, name: str = "web-01") -> dict:
    return custom.get_namespaced_custom_object(*KUBEVIRT, "default", "virtualmachines", name)


def status_of(error: ApiException) -> dict:
    return json.loads(error.body)


def test_get_vm_keeps_loaded_fields(custom):
    vm = get_vm(custom)

    assert vm["metadata"]["uid"] == "5b0c9e1e-0000-4000-8000-000000000001"
    assert vm["metadata"]["generation"] == 3
    assert vm["status"]["printableStatus"] == "Running"
    assert int(vm["metadata"]["resourceVersion"]) > 0


def test_get_missing_vm_is_404(custom):
    with pytest.raises(ApiException) as raised:
        get_vm(custom, "nope")

    assert raised.value.status == 404
    assert status_of(raised.value)["reason"] == "NotFound"
    assert status_of(raised.value)["message"] == 'virtualmachines.kubevirt.io "nope" not found'


def test_list_label_selector(custom):
    listed = custom.list_namespaced_custom_object(
        *KUBEVIRT, "default", "virtualmachines", label_selector="harvesterhci.io/creator=harvester"
    )
    names = [item["metadata"]["name"] for item in listed["items"]]

    assert names == ["db-legacy", "web-01"]
    assert listed["kind"] == "VirtualMachineList"


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("harvesterhci.io/creator!=harvester", ["rke2-pool1-abcde"]),
        ("harvesterhci.io/creator in (harvester,other)", ["db-legacy", "web-01"]),
        ("harvesterhci.io/creator notin (harvester)", ["rke2-pool1-abcde"]),
        ("harvesterhci.io/os", ["db-legacy", "web-01"]),
        ("!harvesterhci.io/os", ["rke2-pool1-abcde"]),
        ("harvesterhci.io/creator==harvester,harvesterhci.io/os=ubuntu", ["db-legacy", "web-01"]),
    ],
)
def test_list_selector_operators(custom, selector, expected):
    listed = custom.list_namespaced_custom_object(*KUBEVIRT, "default", "virtualmachines", label_selector=selector)

    assert [item["metadata"]["name"] for item in listed["items"]] == expected


def test_list_field_selector(custom, core: CoreV1Api):
    by_name = custom.list_namespaced_custom_object(
        *KUBEVIRT, "default", "virtualmachineinstances", field_selector="metadata.name=web-01"
    )
    by_node = custom.list_namespaced_custom_object(
        *KUBEVIRT, "default", "virtualmachineinstances", field_selector="status.nodeName=node-1"
    )
    not_running = custom.list_namespaced_custom_object(
        *KUBEVIRT, "default", "virtualmachineinstances", field_selector="status.phase!=Running"
    )

    assert [item["metadata"]["name"] for item in by_name["items"]] == ["web-01"]
    assert "web-01" in [item["metadata"]["name"] for item in by_node["items"]]
    assert not_running["items"] == []


def test_list_unknown_field_selector_is_400(custom):
    with pytest.raises(ApiException) as raised:
        custom.list_namespaced_custom_object(*KUBEVIRT, "default", "virtualmachines", field_selector="spec.foo=1")

    assert raised.value.status == 400


def test_list_cluster_scoped_nodes(core: CoreV1Api):
    nodes = core.list_node(label_selector="network.harvesterhci.io/data=true")

    assert [node.metadata.name for node in nodes.items] == ["node-1", "node-2"]


def test_create_generate_name(custom):
    body = {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstanceMigration",
        "metadata": {"generateName": "web-01-hotplug-"},
        "spec": {"vmiName": "web-01"},
    }
    created = custom.create_namespaced_custom_object(*KUBEVIRT, "default", "virtualmachineinstancemigrations", body)
    name = created["metadata"]["name"]

    assert name.startswith("web-01-hotplug-")
    assert len(name) == len("web-01-hotplug-") + 5
    assert name[-5:].isalnum()
    assert name[-5:].islower()
    assert created["metadata"]["generation"] == 1
    assert created["metadata"]["uid"]
    assert created["metadata"]["creationTimestamp"].endswith("Z")


def test_create_duplicate_is_already_exists(custom):
    vm = get_vm(custom)
    vm["metadata"] = {"name": "web-01"}

    with pytest.raises(ApiException) as raised:
        custom.create_namespaced_custom_object(*KUBEVIRT, "default", "virtualmachines", vm)

    assert raised.value.status == 409
    assert status_of(raised.value)["reason"] == "AlreadyExists"


def test_create_drops_status_of_status_subresource(custom):
    body = {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstanceMigration",
        "metadata": {"name": "mig-1"},
        "spec": {"vmiName": "web-01"},
        "status": {"phase": "Succeeded"},
    }
    created = custom.create_namespaced_custom_object(*KUBEVIRT, "default", "virtualmachineinstancemigrations", body)

    assert "status" not in created


def test_update_stale_resource_version_is_conflict(custom):
    first = get_vm(custom)
    second = get_vm(custom)
    first["metadata"]["labels"]["team"] = "a"
    custom.replace_namespaced_custom_object(*KUBEVIRT, "default", "virtualmachines", "web-01", first)
    second["metadata"]["labels"]["team"] = "b"

    with pytest.raises(ApiException) as raised:
        custom.replace_namespaced_custom_object(*KUBEVIRT, "default", "virtualmachines", "web-01", second)

    assert raised.value.status == 409
    assert status_of(raised.value)["reason"] == "Conflict"
    assert "the object has been modified" in status_of(raised.value)["message"]
    assert get_vm(custom)["metadata"]["labels"]["team"] == "a"


def test_update_without_resource_version_is_invalid(custom):
    vm = get_vm(custom)
    del vm["metadata"]["resourceVersion"]

    with pytest.raises(ApiException) as raised:
        custom.replace_namespaced_custom_object(*KUBEVIRT, "default", "virtualmachines", "web-01", vm)

    assert raised.value.status == 422


def test_generation_bumps_on_spec_change_only(custom):
    vm = get_vm(custom)
    vm["metadata"]["labels"]["x"] = "y"
    relabelled = custom.replace_namespaced_custom_object(*KUBEVIRT, "default", "virtualmachines", "web-01", vm)
    relabelled["spec"]["runStrategy"] = "Always"
    respecced = custom.replace_namespaced_custom_object(*KUBEVIRT, "default", "virtualmachines", "web-01", relabelled)

    assert relabelled["metadata"]["generation"] == 3
    assert respecced["metadata"]["generation"] == 4
    assert int(respecced["metadata"]["resourceVersion"]) > int(relabelled["metadata"]["resourceVersion"])


def test_update_without_change_keeps_resource_version(custom):
    vm = get_vm(custom)
    again = custom.replace_namespaced_custom_object(*KUBEVIRT, "default", "virtualmachines", "web-01", vm)

    assert again["metadata"]["resourceVersion"] == vm["metadata"]["resourceVersion"]


def test_main_update_keeps_status(custom):
    vm = get_vm(custom)
    vm["status"]["printableStatus"] = "Stopped"
    updated = custom.replace_namespaced_custom_object(*KUBEVIRT, "default", "virtualmachines", "web-01", vm)

    assert updated["status"]["printableStatus"] == "Running"


def test_status_subresource_writes_status_only(custom):
    vm = get_vm(custom)
    vm["status"]["printableStatus"] = "Migrating"
    vm["spec"]["runStrategy"] = "Halted"
    updated = custom.replace_namespaced_custom_object_status(*KUBEVIRT, "default", "virtualmachines", "web-01", vm)

    assert updated["status"]["printableStatus"] == "Migrating"
    assert updated["spec"]["runStrategy"] == "RerunOnFailure"
    assert updated["metadata"]["generation"] == 3


def test_vmi_has_no_status_subresource(custom):
    vmi = custom.get_namespaced_custom_object(*KUBEVIRT, "default", "virtualmachineinstances", "web-01")
    vmi["status"]["phase"] = "Failed"
    updated = custom.replace_namespaced_custom_object(*KUBEVIRT, "default", "virtualmachineinstances", "web-01", vmi)

    assert updated["status"]["phase"] == "Failed"
    with pytest.raises(ApiException) as raised:
        custom.get_namespaced_custom_object_status(*KUBEVIRT, "default", "virtualmachineinstances", "web-01")
    assert raised.value.status == 404


def test_delete_with_finalizer_sets_deletion_timestamp(custom):
    vm = get_vm(custom)
    vm["metadata"]["finalizers"] = ["kubevirt.io/virtualMachineControllerFinalize"]
    custom.replace_namespaced_custom_object(*KUBEVIRT, "default", "virtualmachines", "web-01", vm)

    pending = custom.delete_namespaced_custom_object(*KUBEVIRT, "default", "virtualmachines", "web-01")
    still_there = get_vm(custom)

    assert pending["metadata"]["deletionTimestamp"]
    assert still_there["metadata"]["deletionTimestamp"] == pending["metadata"]["deletionTimestamp"]

    still_there["metadata"]["finalizers"] = []
    custom.replace_namespaced_custom_object(*KUBEVIRT, "default", "virtualmachines", "web-01", still_there)
    with pytest.raises(ApiException) as raised:
        get_vm(custom)
    assert raised.value.status == 404


def test_delete_without_finalizer_returns_status(custom):
    answer = custom.delete_namespaced_custom_object(*KUBEVIRT, "default", "virtualmachines", "db-legacy")

    assert answer["kind"] == "Status"
    assert answer["status"] == "Success"
    with pytest.raises(ApiException) as raised:
        get_vm(custom, "db-legacy")
    assert raised.value.status == 404


def test_delete_vm_collects_owned_vmi(custom):
    custom.delete_namespaced_custom_object(*KUBEVIRT, "default", "virtualmachines", "web-01")

    with pytest.raises(ApiException) as raised:
        custom.get_namespaced_custom_object(*KUBEVIRT, "default", "virtualmachineinstances", "web-01")
    assert raised.value.status == 404


def test_dry_run_create_stores_nothing(custom):
    body = {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstanceMigration",
        "metadata": {"name": "dry"},
        "spec": {"vmiName": "web-01"},
    }
    answer = custom.create_namespaced_custom_object(
        *KUBEVIRT, "default", "virtualmachineinstancemigrations", body, dry_run="All"
    )

    assert answer["metadata"]["name"] == "dry"
    with pytest.raises(ApiException) as raised:
        custom.get_namespaced_custom_object(*KUBEVIRT, "default", "virtualmachineinstancemigrations", "dry")
    assert raised.value.status == 404


def test_dry_run_patch_changes_nothing(custom):
    before = get_vm(custom)
    answer = custom.patch_namespaced_custom_object(
        *KUBEVIRT, "default", "virtualmachines", "web-01", {"spec": {"runStrategy": "Halted"}}, dry_run="All"
    )
    after = get_vm(custom)

    assert answer["spec"]["runStrategy"] == "Halted"
    assert after["spec"]["runStrategy"] == "RerunOnFailure"
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]


def vm_action(kube, action: str) -> tuple[int, str]:
    """PUT a KubeVirt VM subresource (the official client has no method for them)."""
    path = f"/apis/subresources.kubevirt.io/v1/namespaces/default/virtualmachines/web-01/{action}"
    response = kube.call_api(*kube.param_serialize("PUT", path))
    return response.status, response.read().decode()


def test_vm_subresource_stop_and_start(kube, sim):
    stop_status, _ = vm_action(kube, "stop")
    stopped = sim.store.get("virtualmachines", "default", "web-01")
    start_status, start_body = vm_action(kube, "start")

    assert stop_status == 202
    assert stopped["spec"]["runStrategy"] == "Halted"
    assert start_status == 409
    assert "VM is already running" in start_body


def test_vm_subresource_stop_when_halted_vm_stopped(kube, sim):
    sim.store.patch("virtualmachines", "default", "web-01", "merge", {"spec": {"runStrategy": "Halted"}}, actor="test")
    sim.store.delete("virtualmachineinstances", "default", "web-01", actor="test")
    status, body = vm_action(kube, "stop")

    assert status == 409
    assert "VM is not running" in body


def test_vm_subresource_start_halted_sets_always(kube, sim):
    sim.store.patch("virtualmachines", "default", "web-01", "merge", {"spec": {"runStrategy": "Halted"}}, actor="test")
    sim.store.delete("virtualmachineinstances", "default", "web-01", actor="test")
    status, _ = vm_action(kube, "start")

    assert status == 202
    assert sim.store.get("virtualmachines", "default", "web-01")["spec"]["runStrategy"] == "Always"


def test_vm_subresource_restart_queues_requests(kube, sim):
    vmi_uid = sim.store.get("virtualmachineinstances", "default", "web-01")["metadata"]["uid"]
    status, _ = vm_action(kube, "restart")
    vm = sim.store.get("virtualmachines", "default", "web-01")
    again_status, again_body = vm_action(kube, "restart")

    assert status == 202
    assert vm["status"]["stateChangeRequests"] == [{"action": "Stop", "uid": vmi_uid}, {"action": "Start"}]
    assert again_status == 500
    assert "stop/start already underway" in again_body


def test_vm_subresource_restart_recreates_vmi(tmp_path):
    with Simulator([HARVESTER_FIXTURES], speed=20) as running:
        client = kubernetes.config.new_client_from_config(config_file=str(running.write_kubeconfig(tmp_path / "kc")))
        old_uid = running.store.get("virtualmachineinstances", "default", "web-01")["metadata"]["uid"]
        status, _ = vm_action(client, "restart")

        # The VM controller works asynchronously: poll until it has replaced the VMI.
        new_uid = old_uid
        for _ in range(100):
            vmi = running.store.try_get("virtualmachineinstances", "default", "web-01")
            new_uid = vmi["metadata"]["uid"] if vmi else old_uid
            if new_uid != old_uid:
                break
            time.sleep(0.1)
        client.close()

    assert status == 202
    assert new_uid != old_uid


def test_list_limit_and_continue(core):
    first = core.list_node(limit=2)
    rest = core.list_node(limit=2, _continue=first.metadata._continue)

    assert [node.metadata.name for node in first.items] == ["node-1", "node-2"]
    assert [node.metadata.name for node in rest.items] == ["node-3"]
    assert rest.metadata._continue is None


@pytest.mark.parametrize("labels", [{"app": "bad value!"}, {"bad key!": "x"}, {"app": "x" * 64}])
def test_invalid_label_is_422(custom, labels):
    with pytest.raises(ApiException) as raised:
        custom.patch_namespaced_custom_object(
            *KUBEVIRT, "default", "virtualmachines", "web-01", {"metadata": {"labels": labels}}
        )

    assert raised.value.status == 422
    assert status_of(raised.value)["details"]["causes"][0]["field"] == "metadata.labels"


def test_non_string_label_is_400(custom):
    with pytest.raises(ApiException) as raised:
        custom.patch_namespaced_custom_object(
            *KUBEVIRT, "default", "virtualmachines", "web-01", {"metadata": {"labels": {"count": 3}}}
        )

    assert raised.value.status == 400


def test_pod_create_and_delete_return_pod(core):
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "virt-launcher-web-01-"},
        "spec": {"containers": [{"name": "compute", "image": "virt-launcher"}]},
    }
    created = core.create_namespaced_pod("default", body)
    deleted = core.delete_namespaced_pod(created.metadata.name, "default")

    assert created.status.phase == "Pending"
    assert created.metadata.generation is None
    assert deleted.metadata.name == created.metadata.name
    assert core.list_namespaced_pod("default").items == []
