"""The admission webhooks seen through the official kubernetes client over HTTP."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
from kubernetes.client import CustomObjectsApi
from kubernetes.client.exceptions import ApiException

from kubevirt_sim import Simulator

HARVESTER_FIXTURES = Path(__file__).resolve().parents[2] / "nicflow" / "manifests"
KUBEVIRT = ("kubevirt.io", "v1")
# The client sends a list body as a merge patch unless the content type is set.
JSON_PATCH = "application/json-patch+json"


@pytest.fixture
def api(kubevirt_schema_path: Path, tmp_path: Path) -> Iterator[CustomObjectsApi]:
    """A simulator with admission and schema validation on, controllers off, and a client for it."""
    simulator = Simulator([HARVESTER_FIXTURES], controllers=False, schema_path=kubevirt_schema_path)
    simulator.start()
    client = kubernetes.config.new_client_from_config(config_file=str(simulator.write_kubeconfig(tmp_path / "kubeconfig")))
    try:
        yield CustomObjectsApi(client)
    finally:
        client.close()
        simulator.stop()


def get_vm(api: CustomObjectsApi, name: str) -> dict[str, Any]:
    return api.get_namespaced_custom_object(*KUBEVIRT, "default", "virtualmachines", name)


def replace_vm(api: CustomObjectsApi, vm: dict[str, Any]) -> dict[str, Any]:
    return api.replace_namespaced_custom_object(*KUBEVIRT, "default", "virtualmachines", vm["metadata"]["name"], vm)


def add_nic(vm: dict[str, Any], name: str, network_name: str, mac: str = "", **fields: Any) -> dict[str, Any]:
    updated = copy.deepcopy(vm)
    template_spec = updated["spec"]["template"]["spec"]
    template_spec["domain"]["devices"]["interfaces"].append({"name": name, "macAddress": mac, "model": "virtio", "bridge": {}, **fields})
    template_spec["networks"].append({"name": name, "multus": {"networkName": network_name}})
    return updated


def create_migration(api: CustomObjectsApi, vmi_name: str) -> dict[str, Any]:
    body = {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstanceMigration",
        "metadata": {"generateName": f"{vmi_name}-"},
        "spec": {"vmiName": vmi_name},
    }
    return api.create_namespaced_custom_object(*KUBEVIRT, "default", "virtualmachineinstancemigrations", body)


def rejected(call: Any) -> tuple[int, dict[str, Any]]:
    """Run `call`, expecting an ApiException; return its HTTP status and Status body."""
    with pytest.raises(ApiException) as raised:
        call()
    return raised.value.status, json.loads(raised.value.body)


def test_put_vm_generates_mac(api: CustomObjectsApi) -> None:
    stored = replace_vm(api, add_nic(get_vm(api, "web-01"), "nic-2", "default/trunk-200-299"))
    interface = stored["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"][-1]
    assert interface["name"] == "nic-2"
    assert int(interface["macAddress"][:2], 16) & 0x03 == 0x02
    assert get_vm(api, "web-01")["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"][-1] == interface


def test_put_vm_bad_name_422(api: CustomObjectsApi) -> None:
    status, body = rejected(lambda: replace_vm(api, add_nic(get_vm(api, "web-01"), "nic.2", "default/vlan200")))
    assert status == 422
    assert body["reason"] == "Invalid"
    assert body["message"] == (
        'admission webhook "virtualmachine-validator.kubevirt.io" denied the request: '
        "Network interface name can only contain alphabetical characters, numbers, dashes (-) or underscores (_)"
    )
    assert body["details"]["causes"] == [
        {
            "reason": "FieldValueInvalid",
            "message": "Network interface name can only contain alphabetical characters, numbers, dashes (-) or underscores (_)",
            "field": "spec.template.spec.domain.devices.interfaces[2].name",
        }
    ]


def test_put_vm_repeated_nic_422(api: CustomObjectsApi) -> None:
    status, body = rejected(lambda: replace_vm(api, add_nic(get_vm(api, "web-01"), "nic-vlan100", "default/vlan200")))
    assert status == 422
    assert body["message"] == (
        'admission webhook "virtualmachine-validator.kubevirt.io" denied the request: '
        'Network with name "nic-vlan100" already exists, every network must have a unique name, '
        "Only one interface can be connected to one specific network"
    )


def test_put_vm_duplicate_mac_500(api: CustomObjectsApi) -> None:
    status, body = rejected(
        lambda: replace_vm(api, add_nic(get_vm(api, "db-legacy"), "nic-2", "default/untagged-data", mac="06:b2:19:c4:55:e1"))
    )
    assert status == 500
    assert body["reason"] == "InternalError"
    assert body["message"] == (
        'admission webhook "validator.harvesterhci.io" denied the request: '
        "duplicate mac address present for vm db-legacy for cluster network data"
    )


def test_put_vm_denied_leaves_vm(api: CustomObjectsApi) -> None:
    before = get_vm(api, "web-01")
    rejected(lambda: replace_vm(api, add_nic(before, "nic 2", "default/vlan200")))
    assert get_vm(api, "web-01") == before


def test_json_patch_absent_on_pod_network_422(api: CustomObjectsApi) -> None:
    patch = [{"op": "add", "path": "/spec/template/spec/domain/devices/interfaces/0/state", "value": "absent"}]
    status, body = rejected(
        lambda: api.patch_namespaced_custom_object(
            *KUBEVIRT, "default", "virtualmachines", "web-01", patch, _content_type=JSON_PATCH
        )
    )
    assert status == 422
    assert body["message"] == (
        'admission webhook "virtualmachine-validator.kubevirt.io" denied the request: '
        "\"default\" interface's state \"absent\" is supported only for bridge binding, "
        "\"default\" interface's state \"absent\" is not supported on default networks"
    )


def test_json_patch_absent_on_bridge_allowed(api: CustomObjectsApi) -> None:
    patch = [{"op": "add", "path": "/spec/template/spec/domain/devices/interfaces/1/state", "value": "absent"}]
    stored = api.patch_namespaced_custom_object(
            *KUBEVIRT, "default", "virtualmachines", "web-01", patch, _content_type=JSON_PATCH
        )
    assert stored["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"][1]["state"] == "absent"


def test_vm_status_write_not_admitted(api: CustomObjectsApi) -> None:
    vm = get_vm(api, "web-01")
    vm["status"]["printableStatus"] = "Migrating"
    stored = api.replace_namespaced_custom_object_status(*KUBEVIRT, "default", "virtualmachines", "web-01", vm)
    assert stored["status"]["printableStatus"] == "Migrating"


def test_migration_create_mutated(api: CustomObjectsApi) -> None:
    created = create_migration(api, "web-01")
    assert created["metadata"]["name"].startswith("web-01-")
    assert created["metadata"]["labels"] == {"kubevirt.io/vmi-name": "web-01"}
    assert created["metadata"]["finalizers"] == ["kubevirt.io/migrationJobFinalize"]


def test_migration_in_flight_400(api: CustomObjectsApi) -> None:
    first = create_migration(api, "web-01")
    status, body = rejected(lambda: create_migration(api, "web-01"))
    assert status == 400
    assert body.get("reason", "") == ""
    assert body["message"] == (
        'admission webhook "migration-create-validator.kubevirt.io" denied the request: '
        f"in-flight migration detected. Active migration job ({first['metadata']['uid']}) "
        "is currently already in progress for VMI web-01."
    )


def test_migration_missing_vmi_400(api: CustomObjectsApi) -> None:
    status, body = rejected(lambda: create_migration(api, "web-09"))
    assert status == 400
    assert body["message"] == (
        'admission webhook "migration-create-validator.kubevirt.io" denied the request: '
        'the VMI "default/web-09" does not exist'
    )


def test_migration_not_migratable_400(api: CustomObjectsApi) -> None:
    vmi = api.get_namespaced_custom_object(*KUBEVIRT, "default", "virtualmachineinstances", "web-01")
    vmi["status"]["conditions"] = [
        {
            "type": "LiveMigratable",
            "status": "False",
            "reason": "InterfaceNotLiveMigratable",
            "message": "cannot migrate VMI which does not use masquerade to connect to the pod network",
        }
    ]
    # The VMI has no status subresource in KubeVirt, so a plain update writes its status.
    api.replace_namespaced_custom_object(*KUBEVIRT, "default", "virtualmachineinstances", "web-01", vmi)
    status, body = rejected(lambda: create_migration(api, "web-01"))
    assert status == 400
    assert body["message"] == (
        'admission webhook "migration-create-validator.kubevirt.io" denied the request: '
        "Cannot migrate VMI, Reason: InterfaceNotLiveMigratable, "
        "Message: cannot migrate VMI which does not use masquerade to connect to the pod network"
    )


def test_migration_spec_update_422(api: CustomObjectsApi) -> None:
    created = create_migration(api, "web-01")
    created["spec"]["vmiName"] = "db-legacy"
    status, body = rejected(
        lambda: api.replace_namespaced_custom_object(
            *KUBEVIRT, "default", "virtualmachineinstancemigrations", created["metadata"]["name"], created
        )
    )
    assert status == 422
    assert body["message"] == (
        'admission webhook "migration-update-validator.kubevirt.io" denied the request: '
        "update of Migration object's spec is restricted"
    )


def test_vmi_create_gets_annotated_macs(api: CustomObjectsApi) -> None:
    vmi = api.get_namespaced_custom_object(*KUBEVIRT, "default", "virtualmachineinstances", "db-legacy")
    api.delete_namespaced_custom_object(*KUBEVIRT, "default", "virtualmachineinstances", "db-legacy")
    body = {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance", "metadata": {"name": "db-legacy"}, "spec": copy.deepcopy(vmi["spec"])}
    for interface in body["spec"]["domain"]["devices"]["interfaces"]:
        del interface["macAddress"]
    created = api.create_namespaced_custom_object(*KUBEVIRT, "default", "virtualmachineinstances", body)
    macs = [interface["macAddress"] for interface in created["spec"]["domain"]["devices"]["interfaces"]]
    assert macs == ["02:11:22:33:44:01", "02:11:22:33:44:02"]


def test_vmi_spec_patch_by_client_422(api: CustomObjectsApi) -> None:
    patch = [{"op": "add", "path": "/spec/domain/devices/interfaces/1/state", "value": "absent"}]
    status, body = rejected(
        lambda: api.patch_namespaced_custom_object(
            *KUBEVIRT, "default", "virtualmachineinstances", "web-01", patch, _content_type=JSON_PATCH
        )
    )
    assert status == 422
    assert body["reason"] == "Invalid"
    assert body["message"] == (
        'admission webhook "virtualmachineinstances-update-validator.kubevirt.io" denied the request: '
        "update of VMI object is restricted"
    )
