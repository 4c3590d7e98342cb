"""KubeVirt 1.6's VirtualMachineInstanceMigration (VMIM) webhooks.

- `migrations-mutator.kubevirt.io` (create): label `kubevirt.io/vmi-name` and finalizer
  `kubevirt.io/migrationJobFinalize`.
- `migration-create-validator.kubevirt.io` (create): the VMI must exist, not be final, not be
  `LiveMigratable=False`, and have no unfinished VMIM. Its denials are HTTP 400.
- `migration-update-validator.kubevirt.io` (update): the spec is immutable, and the selector label
  stays while the migration is unfinished. Its denials are HTTP 422.
"""

from __future__ import annotations

import copy
from typing import Any

from kubevirt_sim.admission.reader import ObjectReader

MUTATOR = "migrations-mutator.kubevirt.io"
CREATE_VALIDATOR = "migration-create-validator.kubevirt.io"
UPDATE_VALIDATOR = "migration-update-validator.kubevirt.io"

VMI_NAME_LABEL = "kubevirt.io/vmi-name"
MIGRATION_FINALIZER = "kubevirt.io/migrationJobFinalize"
FINAL_MIGRATION_PHASES = frozenset({"Succeeded", "Failed"})
FINAL_VMI_PHASES = frozenset({"Succeeded", "Failed"})


def mutate_migration(migration: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of `migration` with the VMI-name label set and the migration finalizer appended.

    KubeVirt appends the finalizer even when it is already listed, so a client that sends it gets
    it twice, as on a real cluster.
    """
    mutated = copy.deepcopy(migration)
    metadata = mutated.setdefault("metadata", {})
    vmi_name = (mutated.get("spec") or {}).get("vmiName") or ""

    labels = metadata.get("labels") or {}
    labels[VMI_NAME_LABEL] = vmi_name
    metadata["labels"] = labels

    finalizers = list(metadata.get("finalizers") or [])
    finalizers.append(MIGRATION_FINALIZER)
    metadata["finalizers"] = finalizers
    return mutated


def missing_vmi_name_causes(migration: dict[str, Any]) -> list[dict[str, str]]:
    """Require `spec.vmiName`, the one create check that KubeVirt reports as 422 Invalid instead of 400."""
    if (migration.get("spec") or {}).get("vmiName"):
        return []
    return [{"reason": "FieldValueRequired", "message": "vmiName is missing", "field": "spec.vmiName"}]


def not_migratable_message(vmi: dict[str, Any]) -> str | None:
    """Return the denial for a VMI whose `LiveMigratable` condition is False, or None.

    KubeVirt lets decentralized migrations (`sendTo`/`receive`) past `DisksNotLiveMigratable`.
    Harvester does not use them, so this check does not make that exception.
    """
    for condition in (vmi.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "LiveMigratable" and condition.get("status") == "False":
            return (
                f"Cannot migrate VMI, Reason: {condition.get('reason', '')}, "
                f"Message: {condition.get('message', '')}"
            )
    return None


def in_flight_message(reader: ObjectReader, namespace: str, vmi_name: str) -> str | None:
    """Return the denial when an unfinished VMIM labelled for the same VMI exists, or None.

    Like KubeVirt, this finds VMIMs by their `kubevirt.io/vmi-name` label, so a VMIM whose label was
    removed does not count.
    """
    migrations, _ = reader.list(
        "virtualmachineinstancemigrations", namespace, label_selector=f"{VMI_NAME_LABEL}={vmi_name}"
    )
    for migration in migrations:
        if (migration.get("status") or {}).get("phase") in FINAL_MIGRATION_PHASES:
            continue
        uid = (migration.get("metadata") or {}).get("uid", "")
        name = (migration.get("spec") or {}).get("vmiName", "")
        return (
            f"in-flight migration detected. Active migration job ({uid}) "
            f"is currently already in progress for VMI {name}."
        )
    return None


def create_denial_message(reader: ObjectReader, namespace: str, migration: dict[str, Any]) -> str | None:
    """Run the create validator's VMI checks in KubeVirt's order and return the first denial, or None."""
    vmi_name = (migration.get("spec") or {}).get("vmiName") or ""
    vmi = reader.try_get("virtualmachineinstances", namespace, vmi_name)
    if vmi is None:
        return f'the VMI "{namespace}/{vmi_name}" does not exist'

    if (vmi.get("status") or {}).get("phase") in FINAL_VMI_PHASES:
        return "Cannot migrate VMI in finalized state."

    message = not_migratable_message(vmi)
    if message:
        return message

    return in_flight_message(reader, namespace, vmi_name)


def update_causes(old: dict[str, Any], new: dict[str, Any]) -> list[dict[str, str]]:
    """Return the update validator's cause: a changed spec, or a selector label dropped or changed in flight.

    KubeVirt sends these causes without a field.
    """
    if (old.get("spec") or {}) != (new.get("spec") or {}):
        return [{"reason": "FieldValueNotSupported", "message": "update of Migration object's spec is restricted"}]

    if (new.get("status") or {}).get("phase") in FINAL_MIGRATION_PHASES:
        return []
    old_labels = (old.get("metadata") or {}).get("labels")
    if old_labels is None or VMI_NAME_LABEL not in old_labels:
        return []
    new_labels = (new.get("metadata") or {}).get("labels")
    if new_labels is None:
        return [{"reason": "FieldValueNotSupported", "message": "selector label can't be removed from an in-flight migration"}]
    if new_labels.get(VMI_NAME_LABEL) != old_labels[VMI_NAME_LABEL]:
        return [{"reason": "FieldValueNotSupported", "message": "selector label can't be modified on an in-flight migration"}]
    return []
