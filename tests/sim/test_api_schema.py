"""Schema validation of KubeVirt objects against the KubeVirt 1.6.6 Swagger document."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import kubernetes
import pytest
from kubernetes.client import CustomObjectsApi
from kubernetes.client.rest import ApiException

from kubevirt_sim import Simulator
from tests.conftest import HARVESTER_FIXTURES

KUBEVIRT = ("kubevirt.io", "v1")


@pytest.fixture
def checked(kubevirt_schema_path: Path, tmp_path: Path) -> Iterator[CustomObjectsApi]:
    """A client of a simulator that validates writes against the KubeVirt 1.6.6 schema."""
    with Simulator([HARVESTER_FIXTURES], controllers=False, admission=False, schema_path=kubevirt_schema_path) as sim:
        client = kubernetes.config.new_client_from_config(config_file=str(sim.write_kubeconfig(tmp_path / "kc")))
        try:
            yield CustomObjectsApi(client)
        finally:
            client.close()


def patch_vm(custom: CustomObjectsApi, operations: list[dict]) -> dict:
    return custom.patch_namespaced_custom_object(
        *KUBEVIRT, "default", "virtualmachines", "web-01", operations, _content_type="application/json-patch+json"
    )


def test_schema_type_violation_names_field(checked):
    path = "/spec/template/spec/domain/devices/interfaces/1/macAddress"
    with pytest.raises(ApiException) as raised:
        patch_vm(checked, [{"op": "replace", "path": path, "value": 42}])
    status = json.loads(raised.value.body)

    assert raised.value.status == 422
    assert status["reason"] == "Invalid"
    assert status["details"]["causes"][0]["field"] == "spec.template.spec.domain.devices.interfaces[1].macAddress"
    assert "must be of type string" in status["message"]


def test_schema_required_field_missing(checked):
    with pytest.raises(ApiException) as raised:
        patch_vm(checked, [{"op": "remove", "path": "/spec/template/spec/domain"}])
    status = json.loads(raised.value.body)

    assert raised.value.status == 422
    assert status["details"]["causes"][0]["field"] == "spec.template.spec.domain"
    assert status["details"]["causes"][0]["reason"] == "FieldValueRequired"


def test_schema_prunes_unknown_fields(checked):
    patched = patch_vm(checked, [{"op": "add", "path": "/spec/template/spec/notAField", "value": True}])

    assert "notAField" not in patched["spec"]["template"]["spec"]


def test_schema_drops_null_fields(checked):
    patched = patch_vm(checked, [{"op": "add", "path": "/spec/template/metadata/creationTimestamp", "value": None}])

    assert "creationTimestamp" not in patched["spec"]["template"]["metadata"]


def test_schema_accepts_quantity_numbers(checked):
    patched = patch_vm(checked, [{"op": "replace", "path": "/spec/template/spec/domain/resources/limits/cpu", "value": 2}])

    assert patched["spec"]["template"]["spec"]["domain"]["resources"]["limits"]["cpu"] == 2


def test_schema_checks_migrations(checked):
    body = {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstanceMigration",
        "metadata": {"name": "bad"},
        "spec": {"vmiName": ["web-01"]},
    }
    with pytest.raises(ApiException) as raised:
        checked.create_namespaced_custom_object(*KUBEVIRT, "default", "virtualmachineinstancemigrations", body)

    assert raised.value.status == 422
    assert json.loads(raised.value.body)["details"]["causes"][0]["field"] == "spec.vmiName"


def test_field_validation_strict_rejects_unknown(checked):
    body = {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstanceMigration",
        "metadata": {"name": "strict"},
        "spec": {"vmiName": "web-01", "vmName": "web-01"},
    }
    with pytest.raises(ApiException) as raised:
        checked.create_namespaced_custom_object(
            *KUBEVIRT, "default", "virtualmachineinstancemigrations", body, field_validation="Strict"
        )

    assert raised.value.status == 400
    assert 'unknown field "spec.vmName"' in json.loads(raised.value.body)["message"]


def test_field_validation_warn_sends_warning(checked):
    # This client version returns (data, status, headers) from the *_with_http_info methods.
    data, status, headers = checked.patch_namespaced_custom_object_with_http_info(
        *KUBEVIRT, "default", "virtualmachines", "web-01", {"spec": {"notAField": 1}}
    )

    assert status == 200
    assert headers["Warning"] == '299 - "unknown field \\"spec.notAField\\""'
    assert "notAField" not in data["spec"]
