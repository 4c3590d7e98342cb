"""HTTP faults returned to API clients, and the /sim control endpoint."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import kubernetes
import pytest
import urllib3
from kubernetes.client import CustomObjectsApi
from kubernetes.client.rest import ApiException

from kubevirt_sim import Simulator
from tests.conftest import HARVESTER_FIXTURES

KUBEVIRT = ("kubevirt.io", "v1")


def get_vm(custom: CustomObjectsApi, **kwargs) -> dict:
    return custom.get_namespaced_custom_object(*KUBEVIRT, "default", "virtualmachines", "web-01", **kwargs)


def control(sim: Simulator, method: str, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(sim.url + path, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request) as response:
        text = response.read()
    return json.loads(text) if text.startswith(b"{") else {"text": text.decode()}


def test_fault_429_with_retry_after(sim):
    sim.http_faults.add(code=429, method="GET", plural="virtualmachines", count=1)
    request = urllib.request.Request(sim.url + "/apis/kubevirt.io/v1/namespaces/default/virtualmachines/web-01")

    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request)

    assert raised.value.code == 429
    assert raised.value.headers["Retry-After"] == "1"
    assert json.load(raised.value)["reason"] == "TooManyRequests"


def test_fault_429_retried_by_client(sim, custom):
    # urllib3 under the official client retries a 429 that carries Retry-After, as it would
    # against a real apiserver, so one throttled request is invisible to the caller.
    fault_id = sim.http_faults.add(code=429, method="GET", plural="virtualmachines", count=1)

    vm = get_vm(custom)

    assert vm["metadata"]["name"] == "web-01"
    assert [rule["fired"] for rule in sim.http_faults.list() if rule["id"] == fault_id] == [1]


def test_fault_429_persistent_reaches_caller(sim, custom):
    fault_id = sim.http_faults.add(code=429, method="GET", plural="virtualmachines")

    with pytest.raises(ApiException) as raised:
        get_vm(custom)
    fired = [rule["fired"] for rule in sim.http_faults.list() if rule["id"] == fault_id]

    assert raised.value.status == 429
    assert raised.value.headers["Retry-After"] == "1"
    assert fired[0] > 1


def test_fault_500(sim, custom):
    sim.http_faults.add(code=500, plural="virtualmachines", count=1)

    with pytest.raises(ApiException) as raised:
        get_vm(custom)

    assert raised.value.status == 500
    assert json.loads(raised.value.body)["reason"] == "InternalError"


def test_fault_409_on_named_patch(sim, custom):
    sim.http_faults.add(code=409, method="PATCH", name="web-01")

    with pytest.raises(ApiException) as raised:
        custom.patch_namespaced_custom_object(
            *KUBEVIRT, "default", "virtualmachines", "web-01", {"metadata": {"labels": {"a": "b"}}}
        )
    other = custom.patch_namespaced_custom_object(
        *KUBEVIRT, "default", "virtualmachines", "db-legacy", {"metadata": {"labels": {"a": "b"}}}
    )

    assert raised.value.status == 409
    assert json.loads(raised.value.body)["reason"] == "Conflict"
    assert "a" not in get_vm(custom)["metadata"]["labels"]
    assert other["metadata"]["labels"]["a"] == "b"


def test_fault_after_commit_applies_write(sim, custom):
    sim.http_faults.add(code=500, method="PATCH", after_commit=True, count=1)

    with pytest.raises(ApiException) as raised:
        custom.patch_namespaced_custom_object(
            *KUBEVIRT, "default", "virtualmachines", "web-01", {"metadata": {"labels": {"a": "b"}}}
        )

    assert raised.value.status == 500
    assert get_vm(custom)["metadata"]["labels"]["a"] == "b"


def outcomes(tmp_path: Path, seed: int) -> list[int]:
    """Status codes of 30 GETs against a fresh simulator where half the requests fail."""
    with Simulator([HARVESTER_FIXTURES], controllers=False, admission=False, schema_path=None, seed=seed) as sim:
        sim.http_faults.add(code=500, share=0.5, method="GET")
        client = kubernetes.config.new_client_from_config(config_file=str(sim.write_kubeconfig(tmp_path / f"kc{seed}")))
        custom = CustomObjectsApi(client)
        codes = []
        for _ in range(30):
            try:
                get_vm(custom)
                codes.append(200)
            except ApiException as error:
                codes.append(error.status)
        client.close()
    return codes


def test_fault_share_repeats_with_seed(tmp_path):
    first = outcomes(tmp_path, seed=7)
    second = outcomes(tmp_path, seed=7)

    assert first == second
    assert 500 in first
    assert 200 in first


def test_fault_timeout_holds_request(sim, custom):
    sim.http_faults.add(timeout=True, method="GET", name="web-01", hold_seconds=5)

    with pytest.raises((urllib3.exceptions.MaxRetryError, urllib3.exceptions.ReadTimeoutError)):
        get_vm(custom, _request_timeout=0.2)
    sim.http_faults.clear()

    assert get_vm(custom)["metadata"]["name"] == "web-01"


def test_control_endpoint_adds_and_clears_faults(sim, custom):
    added = control(sim, "POST", "/sim/faults", {"target": "http", "kind": "add", "args": {"code": 503, "count": 1}})

    with pytest.raises(ApiException) as raised:
        get_vm(custom)

    assert added["result"].startswith("http-")
    assert raised.value.status == 503

    control(sim, "POST", "/sim/faults", {"target": "http", "kind": "add", "args": {"code": 500}})
    control(sim, "DELETE", "/sim/faults")
    assert get_vm(custom)["metadata"]["name"] == "web-01"


def test_control_endpoint_healthz(sim):
    assert control(sim, "GET", "/sim/healthz") == {"text": "ok"}


def test_control_endpoint_record(sim, custom):
    custom.patch_namespaced_custom_object(
        *KUBEVIRT, "default", "virtualmachines", "web-01", {"spec": {"runStrategy": "Always"}}
    )
    record = control(sim, "GET", "/sim/record?plural=virtualmachines&name=web-01&field_prefix=spec")

    assert [(item["field"], item["old"], item["new"], item["actor"]) for item in record["items"]] == [
        ("spec.runStrategy", "RerunOnFailure", "Always", "client")
    ]


def test_recorder_names_list_elements(sim):
    sim.store.patch(
        "virtualmachineinstances", "default", "web-01", "json",
        [{"op": "replace", "path": "/status/interfaces/1/linkState", "value": "down"}],
        actor="virt-handler",
    )
    changes = sim.recorder.query(plural="virtualmachineinstances", actor="virt-handler")

    fields = {change.field: (change.old, change.new) for change in changes}

    assert fields["status.interfaces[name=nic-vlan100].linkState"] == ("up", "down")
    # The VMI CRD has no status subresource, so a status change bumps the generation too.
    assert fields["metadata.generation"] == (1, 2)


def test_control_endpoint_reaches_cluster_faults(sim):
    result = control(sim, "POST", "/sim/faults", {"target": "cluster", "kind": "snapshot", "args": {}})

    assert result["result"] == sim.faults.snapshot()


def test_control_endpoint_unknown_fault_is_400(sim):
    request = urllib.request.Request(
        sim.url + "/sim/faults", data=json.dumps({"kind": "nope"}).encode(), method="POST",
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request)

    assert raised.value.code == 400
    assert "no fault method 'nope'" in json.load(raised.value)["message"]
