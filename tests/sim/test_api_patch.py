"""JSON patch, JSON merge patch and strategic merge patch through the official client and over raw HTTP."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import kubernetes
import pytest
from kubernetes.client import CustomObjectsApi
from kubernetes.client.rest import ApiException

from kubevirt_sim import Simulator
from kubevirt_sim.errors import ApiError
from kubevirt_sim.patching import apply_json_patch, apply_merge_patch, apply_strategic_merge_patch
from tests.conftest import HARVESTER_FIXTURES

KUBEVIRT = ("kubevirt.io", "v1")
VM_PATH = "/apis/kubevirt.io/v1/namespaces/default/virtualmachines/web-01"
INTERFACES = "/spec/template/spec/domain/devices/interfaces"


def raw_patch(sim, path: str, content_type: str, body: bytes) -> tuple[int, dict]:
    """PATCH with an explicit content type, which the official client does not let a caller pick."""
    request = urllib.request.Request(
        sim.url + path, data=body, method="PATCH", headers={"Content-Type": content_type}
    )
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


@pytest.fixture
def lenient() -> Iterator[Simulator]:
    """A simulator that accepts strategic merge patches of custom resources, which a real apiserver rejects."""
    with Simulator(
        [HARVESTER_FIXTURES], controllers=False, admission=False, schema_path=None,
        strategic_merge_on_custom_resources=True,
    ) as simulator:
        yield simulator


def vm_interfaces(vm: dict) -> list[dict]:
    return vm["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"]


def test_json_patch_appends_interface(custom: CustomObjectsApi):
    patch = [
        {"op": "test", "path": "/spec/runStrategy", "value": "RerunOnFailure"},
        {"op": "add", "path": INTERFACES + "/-", "value": {"name": "nic-2", "bridge": {}, "model": "virtio"}},
    ]
    patched = custom.patch_namespaced_custom_object(
        *KUBEVIRT, "default", "virtualmachines", "web-01", patch, _content_type="application/json-patch+json"
    )

    assert [item["name"] for item in vm_interfaces(patched)] == ["default", "nic-vlan100", "nic-2"]
    assert patched["metadata"]["generation"] == 4


def test_json_patch_failed_test_is_422(sim):
    patch = [
        {"op": "test", "path": "/spec/runStrategy", "value": "Always"},
        {"op": "replace", "path": "/spec/runStrategy", "value": "Halted"},
    ]
    code, status = raw_patch(sim, VM_PATH, "application/json-patch+json", json.dumps(patch).encode())

    assert code == 422
    assert status["reason"] == "Invalid"
    assert "test failed" in status["details"]["causes"][0]["message"]


def test_json_patch_missing_path_is_422(sim):
    patch = [{"op": "remove", "path": "/spec/nothing/here"}]
    code, status = raw_patch(sim, VM_PATH, "application/json-patch+json", json.dumps(patch).encode())

    assert code == 422
    assert status["reason"] == "Invalid"


def test_json_patch_malformed_is_400(sim):
    code, status = raw_patch(sim, VM_PATH, "application/json-patch+json", b'{"op": "add"}')

    assert code == 400
    assert status["reason"] == "BadRequest"


def test_json_patch_invalid_json_is_400(sim):
    code, status = raw_patch(sim, VM_PATH, "application/json-patch+json", b"[{")

    assert code == 400


def test_json_patch_stale_resource_version_is_conflict(sim, custom):
    patch = [{"op": "replace", "path": "/metadata/resourceVersion", "value": "1"}]
    code, status = raw_patch(sim, VM_PATH, "application/json-patch+json", json.dumps(patch).encode())

    assert code == 409
    assert status["reason"] == "Conflict"


def test_merge_patch_sets_and_deletes(sim, custom):
    body = {"metadata": {"labels": {"harvesterhci.io/os": None, "team": "net"}}, "spec": {"runStrategy": "Always"}}
    code, patched = raw_patch(sim, VM_PATH, "application/merge-patch+json", json.dumps(body).encode())

    assert code == 200
    assert patched["metadata"]["labels"] == {"harvesterhci.io/creator": "harvester", "team": "net"}
    assert patched["spec"]["runStrategy"] == "Always"


def test_merge_patch_with_current_resource_version(sim, custom):
    current = custom.get_namespaced_custom_object(*KUBEVIRT, "default", "virtualmachines", "web-01")
    body = {"metadata": {"resourceVersion": current["metadata"]["resourceVersion"], "labels": {"a": "b"}}}
    code, patched = raw_patch(sim, VM_PATH, "application/merge-patch+json", json.dumps(body).encode())

    assert code == 200
    assert patched["metadata"]["labels"]["a"] == "b"


def test_merge_patch_stale_resource_version_is_conflict(sim):
    body = {"metadata": {"resourceVersion": "2", "labels": {"a": "b"}}}
    code, status = raw_patch(sim, VM_PATH, "application/merge-patch+json", json.dumps(body).encode())

    assert code == 409


def test_strategic_patch_merges_interfaces_by_name(lenient):
    body = {
        "spec": {"template": {"spec": {
            "domain": {"devices": {"interfaces": [{"name": "nic-vlan100", "state": "absent"}]}},
        }}}
    }
    code, patched = raw_patch(lenient, VM_PATH, "application/strategic-merge-patch+json", json.dumps(body).encode())
    interfaces = vm_interfaces(patched)

    assert code == 200
    assert [item["name"] for item in interfaces] == ["default", "nic-vlan100"]
    assert interfaces[1]["state"] == "absent"
    assert interfaces[1]["macAddress"] == "06:b2:19:c4:55:e1"


def test_strategic_patch_delete_directive(lenient):
    body = {
        "spec": {"template": {"spec": {
            "domain": {"devices": {"interfaces": [{"name": "nic-vlan100", "$patch": "delete"}]}},
            "networks": [{"name": "nic-vlan100", "$patch": "delete"}],
        }}}
    }
    code, patched = raw_patch(lenient, VM_PATH, "application/strategic-merge-patch+json", json.dumps(body).encode())

    assert code == 200
    assert [item["name"] for item in vm_interfaces(patched)] == ["default"]
    assert [item["name"] for item in patched["spec"]["template"]["spec"]["networks"]] == ["default"]


def test_merge_patch_through_client_replaces_lists(custom):
    # The official client (37.x) sends patch_namespaced_custom_object as a merge patch by default.
    body = {"spec": {"template": {"spec": {"networks": [{"name": "default", "pod": {}}]}}}}
    patched = custom.patch_namespaced_custom_object(*KUBEVIRT, "default", "virtualmachines", "web-01", body)

    assert [item["name"] for item in patched["spec"]["template"]["spec"]["networks"]] == ["default"]


def test_strategic_patch_through_client(lenient, tmp_path):
    client = kubernetes.config.new_client_from_config(config_file=str(lenient.write_kubeconfig(tmp_path / "kc")))
    custom = CustomObjectsApi(client)
    body = {"spec": {"template": {"spec": {"networks": [{"name": "nic-2", "multus": {"networkName": "default/vlan200"}}]}}}}
    patched = custom.patch_namespaced_custom_object(
        *KUBEVIRT, "default", "virtualmachines", "web-01", body,
        _content_type="application/strategic-merge-patch+json",
    )

    client.close()

    networks = [item["name"] for item in patched["spec"]["template"]["spec"]["networks"]]
    assert networks == ["default", "nic-vlan100", "nic-2"]


def test_unknown_patch_content_type_is_415(sim):
    code, status = raw_patch(sim, VM_PATH, "application/json", b"{}")

    assert code == 415


def test_status_patch_keeps_spec(sim):
    body = {"spec": {"runStrategy": "Halted"}, "status": {"printableStatus": "Stopping"}}
    code, patched = raw_patch(sim, VM_PATH + "/status", "application/merge-patch+json", json.dumps(body).encode())

    assert code == 200
    assert patched["status"]["printableStatus"] == "Stopping"
    assert patched["spec"]["runStrategy"] == "RerunOnFailure"


# --- the patch functions alone ---


def test_json_patch_move_copy_and_escapes():
    doc = {"a": {"b/c": 1, "d~e": 2}, "list": [1, 2]}
    result = apply_json_patch(doc, [
        {"op": "copy", "from": "/a/b~1c", "path": "/x"},
        {"op": "move", "from": "/a/d~0e", "path": "/list/0"},
    ])

    assert result == {"a": {"b/c": 1}, "list": [2, 1, 2], "x": 1}
    assert doc == {"a": {"b/c": 1, "d~e": 2}, "list": [1, 2]}


def test_json_patch_is_all_or_nothing():
    doc = {"a": 1}
    with pytest.raises(ApiError) as raised:
        apply_json_patch(doc, [{"op": "replace", "path": "/a", "value": 2}, {"op": "test", "path": "/a", "value": 1}])

    assert raised.value.code == 422
    assert doc == {"a": 1}


def test_json_patch_test_distinguishes_types():
    with pytest.raises(ApiError):
        apply_json_patch({"a": 1}, [{"op": "test", "path": "/a", "value": True}])


def test_merge_patch_replaces_lists():
    assert apply_merge_patch({"a": [1, 2], "b": {"c": 1}}, {"a": [3], "b": {"d": 2}}) == {"a": [3], "b": {"c": 1, "d": 2}}


def test_strategic_patch_replace_directive():
    doc = {"spec": {"networks": [{"name": "a"}, {"name": "b"}]}}
    result = apply_strategic_merge_patch(doc, {"spec": {"networks": [{"$patch": "replace"}, {"name": "c"}]}})

    assert result == {"spec": {"networks": [{"name": "c"}]}}


def test_strategic_patch_conditions_by_type():
    doc = {"status": {"conditions": [{"type": "Ready", "status": "True"}, {"type": "Paused", "status": "False"}]}}
    result = apply_strategic_merge_patch(doc, {"status": {"conditions": [{"type": "Ready", "status": "False"}]}})

    assert result["status"]["conditions"] == [{"type": "Ready", "status": "False"}, {"type": "Paused", "status": "False"}]


def test_strategic_patch_map_replace_directive():
    result = apply_strategic_merge_patch({"a": {"x": 1, "y": 2}}, {"a": {"$patch": "replace", "z": 3}})

    assert result == {"a": {"z": 3}}


def test_strategic_patch_requires_merge_key():
    with pytest.raises(ApiError) as raised:
        apply_strategic_merge_patch({"interfaces": []}, {"interfaces": [{"model": "virtio"}]})

    assert raised.value.code == 400


def test_strategic_patch_of_custom_resource_is_415(sim):
    code, status = raw_patch(sim, VM_PATH, "application/strategic-merge-patch+json", b"{}")
    node_code, _ = raw_patch(sim, "/api/v1/nodes/node-1", "application/strategic-merge-patch+json", b"{}")

    assert code == 415
    assert status["reason"] == "UnsupportedMediaType"
    assert node_code == 200
