"""KubeVirt's VMI update validator: who may change a VMI spec and its reserved labels."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kubevirt_sim.admission import kubevirt_vmi


def vmi() -> dict[str, Any]:
    return {
        "metadata": {
            "name": "web-01",
            "namespace": "default",
            "labels": {"kubevirt.io/nodeName": "node-1", "harvesterhci.io/vmName": "web-01"},
            "annotations": {"kubevirt.io/vm-generation": "3"},
        },
        "spec": {"domain": {"devices": {"interfaces": [{"name": "default", "masquerade": {}}]}}, "networks": [{"name": "default", "pod": {}}]},
        "status": {"phase": "Running"},
    }


def messages(causes: list[dict[str, str]]) -> list[str]:
    return [cause["message"] for cause in causes]


@pytest.mark.parametrize("actor", sorted(kubevirt_vmi.KUBEVIRT_ACTORS))
def test_spec_change_by_kubevirt(actor: str) -> None:
    old = vmi()
    new = copy.deepcopy(old)
    new["spec"]["domain"]["devices"]["interfaces"][0]["state"] = "down"
    new["metadata"]["labels"]["kubevirt.io/nodeName"] = "node-2"
    assert kubevirt_vmi.update_causes(old, new, actor) == []


@pytest.mark.parametrize("actor", ["client", "harvester"])
def test_spec_change_by_others(actor: str) -> None:
    old = vmi()
    new = copy.deepcopy(old)
    new["spec"]["domain"]["devices"]["interfaces"][0]["state"] = "down"
    assert messages(kubevirt_vmi.update_causes(old, new, actor)) == ["update of VMI object is restricted"]


def test_reserved_label_by_client() -> None:
    old = vmi()
    new = copy.deepcopy(old)
    new["metadata"]["labels"]["kubevirt.io/nodeName"] = "node-2"
    assert messages(kubevirt_vmi.update_causes(old, new, "client")) == [
        "modification of the following reserved kubevirt.io/ labels on a VMI object is prohibited"
    ]


def test_reserved_label_removed_by_client() -> None:
    old = vmi()
    new = copy.deepcopy(old)
    del new["metadata"]["labels"]
    assert len(kubevirt_vmi.update_causes(old, new, "client")) == 1


def test_metadata_and_status_by_client() -> None:
    old = vmi()
    new = copy.deepcopy(old)
    new["metadata"]["labels"]["team"] = "net"
    new["metadata"]["annotations"]["harvesterhci.io/migrationState"] = "Migrating"
    new["status"]["phase"] = "Failed"
    assert kubevirt_vmi.update_causes(old, new, "client") == []
