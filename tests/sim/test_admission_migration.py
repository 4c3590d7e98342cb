"""KubeVirt's VMIM mutator and create/update validators, as pure functions over a DictReader."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kubevirt_sim.admission import DictReader, kubevirt_migration


def vmi(name: str = "web-01", phase: str = "Running", conditions: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "metadata": {"name": name, "namespace": "default"},
        "status": {"phase": phase, "conditions": conditions or [{"type": "LiveMigratable", "status": "True"}]},
    }


def migration(vmi_name: str = "web-01", name: str = "web-01-abcde", uid: str = "", phase: str | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstanceMigration",
        "metadata": {"name": name, "namespace": "default", "uid": uid},
        "spec": {"vmiName": vmi_name},
    }
    if phase is not None:
        obj["status"] = {"phase": phase}
    return obj


def labelled(obj: dict[str, Any]) -> dict[str, Any]:
    return kubevirt_migration.mutate_migration(obj)


def test_mutator_adds_label_and_finalizer() -> None:
    mutated = kubevirt_migration.mutate_migration(migration())
    assert mutated["metadata"]["labels"] == {"kubevirt.io/vmi-name": "web-01"}
    assert mutated["metadata"]["finalizers"] == ["kubevirt.io/migrationJobFinalize"]


def test_mutator_keeps_labels_and_finalizers() -> None:
    obj = migration()
    obj["metadata"]["labels"] = {"team": "net", "kubevirt.io/vmi-name": "stale"}
    obj["metadata"]["finalizers"] = ["example.com/hold"]
    mutated = kubevirt_migration.mutate_migration(obj)
    assert mutated["metadata"]["labels"] == {"team": "net", "kubevirt.io/vmi-name": "web-01"}
    assert mutated["metadata"]["finalizers"] == ["example.com/hold", "kubevirt.io/migrationJobFinalize"]


def test_mutator_leaves_input() -> None:
    obj = migration()
    original = copy.deepcopy(obj)
    kubevirt_migration.mutate_migration(obj)
    assert obj == original


def test_create_allowed() -> None:
    reader = DictReader([("virtualmachineinstances", vmi())])
    assert kubevirt_migration.create_denial_message(reader, "default", labelled(migration())) is None


def test_create_missing_vmi() -> None:
    reader = DictReader([("virtualmachineinstances", vmi())])
    message = kubevirt_migration.create_denial_message(reader, "default", labelled(migration("db-01")))
    assert message == 'the VMI "default/db-01" does not exist'


@pytest.mark.parametrize("phase", ["Succeeded", "Failed"])
def test_create_final_vmi(phase: str) -> None:
    reader = DictReader([("virtualmachineinstances", vmi(phase=phase))])
    message = kubevirt_migration.create_denial_message(reader, "default", labelled(migration()))
    assert message == "Cannot migrate VMI in finalized state."


def test_create_not_migratable() -> None:
    condition = {
        "type": "LiveMigratable",
        "status": "False",
        "reason": "InterfaceNotLiveMigratable",
        "message": "cannot migrate VMI which does not use masquerade to connect to the pod network",
    }
    reader = DictReader([("virtualmachineinstances", vmi(conditions=[condition]))])
    message = kubevirt_migration.create_denial_message(reader, "default", labelled(migration()))
    assert message == (
        "Cannot migrate VMI, Reason: InterfaceNotLiveMigratable, "
        "Message: cannot migrate VMI which does not use masquerade to connect to the pod network"
    )


def test_create_in_flight() -> None:
    running = labelled(migration(name="web-01-first", uid="1d6d7273-275d-48e0-bb76-62e240b42aaf", phase="Running"))
    reader = DictReader([("virtualmachineinstances", vmi()), ("virtualmachineinstancemigrations", running)])
    message = kubevirt_migration.create_denial_message(reader, "default", labelled(migration()))
    assert message == (
        "in-flight migration detected. Active migration job (1d6d7273-275d-48e0-bb76-62e240b42aaf) "
        "is currently already in progress for VMI web-01."
    )


def test_create_in_flight_unset_phase() -> None:
    pending = labelled(migration(name="web-01-first", uid="uid-1"))
    reader = DictReader([("virtualmachineinstances", vmi()), ("virtualmachineinstancemigrations", pending)])
    message = kubevirt_migration.create_denial_message(reader, "default", labelled(migration()))
    assert message is not None
    assert "(uid-1)" in message


@pytest.mark.parametrize("phase", ["Succeeded", "Failed"])
def test_create_after_finished_migration(phase: str) -> None:
    finished = labelled(migration(name="web-01-first", uid="uid-1", phase=phase))
    reader = DictReader([("virtualmachineinstances", vmi()), ("virtualmachineinstancemigrations", finished)])
    assert kubevirt_migration.create_denial_message(reader, "default", labelled(migration())) is None


def test_create_ignores_unlabelled_migration() -> None:
    unlabelled = migration(name="web-01-first", uid="uid-1", phase="Running")
    reader = DictReader([("virtualmachineinstances", vmi()), ("virtualmachineinstancemigrations", unlabelled)])
    assert kubevirt_migration.create_denial_message(reader, "default", labelled(migration())) is None


def test_create_ignores_other_vmi_migration() -> None:
    other = labelled(migration("db-01", name="db-01-first", uid="uid-2", phase="Running"))
    reader = DictReader([("virtualmachineinstances", vmi()), ("virtualmachineinstancemigrations", other)])
    assert kubevirt_migration.create_denial_message(reader, "default", labelled(migration())) is None


def test_missing_vmi_name() -> None:
    causes = kubevirt_migration.missing_vmi_name_causes(migration(""))
    assert causes == [{"reason": "FieldValueRequired", "message": "vmiName is missing", "field": "spec.vmiName"}]


def test_vmi_name_present() -> None:
    assert kubevirt_migration.missing_vmi_name_causes(migration()) == []


def test_update_spec_change_rejected() -> None:
    old = labelled(migration())
    new = copy.deepcopy(old)
    new["spec"]["vmiName"] = "db-01"
    causes = kubevirt_migration.update_causes(old, new)
    assert [cause["message"] for cause in causes] == ["update of Migration object's spec is restricted"]


def test_update_metadata_change_allowed() -> None:
    old = labelled(migration())
    new = copy.deepcopy(old)
    new["metadata"]["finalizers"] = []
    new["metadata"]["annotations"] = {"note": "x"}
    assert kubevirt_migration.update_causes(old, new) == []


def test_update_label_removed_in_flight() -> None:
    old = labelled(migration(phase="Running"))
    new = copy.deepcopy(old)
    del new["metadata"]["labels"]
    causes = kubevirt_migration.update_causes(old, new)
    assert [cause["message"] for cause in causes] == ["selector label can't be removed from an in-flight migration"]


def test_update_label_changed_in_flight() -> None:
    old = labelled(migration(phase="Running"))
    new = copy.deepcopy(old)
    new["metadata"]["labels"]["kubevirt.io/vmi-name"] = "db-01"
    causes = kubevirt_migration.update_causes(old, new)
    assert [cause["message"] for cause in causes] == ["selector label can't be modified on an in-flight migration"]


def test_update_label_change_after_finish_allowed() -> None:
    old = labelled(migration(phase="Succeeded"))
    new = copy.deepcopy(old)
    del new["metadata"]["labels"]
    assert kubevirt_migration.update_causes(old, new) == []
