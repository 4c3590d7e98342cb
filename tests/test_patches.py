"""Patch builders on the bundled Harvester VM, applied with a real RFC 6902 implementation."""

from __future__ import annotations

import copy

import pytest
import yaml

from nicflow import patches
from tests.conftest import HARVESTER_FIXTURES


def apply_patch(document: dict, operations: list[dict]) -> dict:
    """Apply add, remove, replace and test operations as RFC 6902 defines them."""
    result = copy.deepcopy(document)
    for operation in operations:
        *parents, last = [part.replace("~1", "/").replace("~0", "~") for part in operation["path"].split("/")[1:]]
        target = result
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        if operation["op"] == "test":
            current = target[int(last)] if isinstance(target, list) else target[last]
            if current != operation["value"]:
                raise AssertionError(f"test failed at {operation['path']}")
        elif operation["op"] in ("add", "replace"):
            if isinstance(target, list):
                index = len(target) if last == "-" else int(last)
                target.insert(index, operation["value"]) if operation["op"] == "add" else target.__setitem__(index, operation["value"])
            else:
                target[last] = operation["value"]
        elif operation["op"] == "remove":
            del target[int(last) if isinstance(target, list) else last]
    return result


@pytest.fixture
def web01() -> dict:
    documents = yaml.safe_load_all((HARVESTER_FIXTURES / "vm-web-01.yaml").read_text())
    vm = next(d for d in documents if d["kind"] == "VirtualMachine")
    vm["metadata"]["resourceVersion"] = "41"
    return vm


def test_hotplug_patch_appends_interface_and_network(web01):
    patched = apply_patch(web01, patches.hotplug_patch(web01, "nic-2", "default/vlan200", "02:00:00:00:00:01"))

    assert patches.template_interfaces(patched)[-1] == {
        "name": "nic-2", "model": "virtio", "bridge": {}, "macAddress": "02:00:00:00:00:01",
    }
    assert patches.template_networks(patched)[-1] == {"name": "nic-2", "multus": {"networkName": "default/vlan200"}}
    assert patches.template_interfaces(patched)[:-1] == patches.template_interfaces(web01)


def test_hotplug_patch_is_conditional_on_resource_version(web01):
    operations = patches.hotplug_patch(web01, "nic-2", "default/vlan200", "02:00:00:00:00:01")

    assert operations[0] == {"op": "replace", "path": "/metadata/resourceVersion", "value": "41"}


def test_hotplug_state_detects_applied_change(web01):
    patched = apply_patch(web01, patches.hotplug_patch(web01, "nic-2", "default/vlan200", "02:00:00:00:00:01"))

    assert patches.hotplug_state(web01, "nic-2", "default/vlan200", "02:00:00:00:00:01") == "absent"
    assert patches.hotplug_state(patched, "nic-2", "default/vlan200", "02:00:00:00:00:01") == "applied"


def test_hotplug_state_rejects_name_on_other_network(web01):
    with pytest.raises(patches.PatchError, match="nic-vlan100"):
        patches.hotplug_state(web01, "nic-vlan100", "default/vlan200", "02:00:00:00:00:01")


def test_mark_absent_then_clear_restores_spec(web01):
    absent = apply_patch(web01, patches.mark_absent_patch(web01, "nic-vlan100"))
    cleared = apply_patch(absent, patches.clear_absent_patch(absent, "nic-vlan100"))

    assert patches.find_interface(absent, "nic-vlan100")[1]["state"] == "absent"
    assert cleared["spec"] == web01["spec"]


def test_mark_absent_tests_interface_name(web01):
    operations = patches.mark_absent_patch(web01, "nic-vlan100")

    assert {"op": "test", "path": f"{patches.INTERFACES_PATH}/1/name", "value": "nic-vlan100"} in operations


def test_mark_absent_of_missing_interface_fails(web01):
    with pytest.raises(patches.PatchError, match="nic-9"):
        patches.mark_absent_patch(web01, "nic-9")


def test_backfill_patch_writes_only_missing_macs(web01):
    del patches.template_interfaces(web01)[1]["macAddress"]

    patched = apply_patch(web01, patches.backfill_patch(web01, {"default": "02:ff:00:00:00:01", "nic-vlan100": "06:b2:19:c4:55:e1"}))

    assert [i["macAddress"] for i in patches.template_interfaces(patched)] == ["02:3c:8e:41:7a:10", "06:b2:19:c4:55:e1"]


def test_backfill_patch_empty_when_nothing_missing(web01):
    assert patches.backfill_patch(web01, {"default": "02:ff:00:00:00:01"}) == []


def test_readd_interface_goes_to_end_without_state(web01):
    interface = dict(patches.template_interfaces(web01)[1], state="absent")
    network = patches.template_networks(web01)[1]
    stripped = copy.deepcopy(web01)
    del patches.template_interfaces(stripped)[1]
    del patches.template_networks(stripped)[1]

    restored = apply_patch(stripped, patches.readd_interface_patch(stripped, interface, network))

    assert restored["spec"] == web01["spec"]


def test_webhook_denial_is_final_even_as_500():
    from kubernetes.client.exceptions import ApiException

    from nicflow.kube import classify

    denied = ApiException(status=500, reason="Internal Server Error")
    denied.body = '{"message": "admission webhook \\"validator.harvesterhci.io\\" denied the request: duplicate mac address present for vm web-01 for cluster network data", "code": 500}'
    overloaded = ApiException(status=500, reason="Internal Server Error")
    overloaded.body = '{"message": "etcdserver: request timed out", "code": 500}'

    assert classify(denied).retryable is False
    assert classify(overloaded).retryable is True
