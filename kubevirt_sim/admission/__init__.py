"""Admission webhooks of a Harvester v1.7 / KubeVirt 1.6 cluster, as the simulator's store runs them.

`admit` is called by the store for every write and runs, for that write, the mutating webhooks
and then the validating webhooks that the real cluster runs:

| object | operation | mutating | validating |
|---|---|---|---|
| VM | CREATE, UPDATE | `mutator.harvesterhci.io` (MACs, affinity) | `virtualmachine-validator.kubevirt.io` (422), `validator.harvesterhci.io` (duplicate MACs, 500) |
| VMI | CREATE | Harvester VMI mutator (`mutator.harvesterhci.io`, MACs from the VM annotation) | `virtualmachineinstances-create-validator.kubevirt.io` (422) |
| VMI | UPDATE | none | `virtualmachineinstances-update-validator.kubevirt.io` (422: spec and reserved labels only by KubeVirt actors) |
| VMIM | CREATE | `migrations-mutator.kubevirt.io` (label, finalizer) | `migration-create-validator.kubevirt.io` (400; 422 for a missing vmiName) |
| VMIM | UPDATE | none | `migration-update-validator.kubevirt.io` (422) |

Status-subresource writes and writes of other kinds pass through unchanged. Each denial is an
`ApiError` whose message reads `admission webhook "<name>" denied the request: <message>`.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from kubevirt_sim.admission import harvester_vm, harvester_vmi, kubevirt_migration, kubevirt_vm, kubevirt_vmi
from kubevirt_sim.admission.reader import DictReader, ObjectReader
from kubevirt_sim.errors import ApiError, admission_denied

__all__ = ["admit", "DictReader", "ObjectReader"]

logger = logging.getLogger(__name__)

# Harvester's admission handler turns a plain Go error into 500 InternalError (harvester v1.7.3,
# pkg/webhook/types/admission.go), and the apiserver keeps a webhook's code when it is 400 or more.
HARVESTER_PLAIN_ERROR_CODE = 500

# KubeVirt's ToAdmissionResponseError sets code 400 and no reason, and the apiserver passes the
# empty reason on (k8s.io/apiserver webhook errors ToStatusErr).
KUBEVIRT_PLAIN_ERROR_CODE = 400
KUBEVIRT_PLAIN_ERROR_REASON = ""


def admit(
    store: ObjectReader,
    operation: str,
    plural: str,
    namespace: str,
    old: dict[str, Any] | None,
    new: dict[str, Any],
    subresource: str | None,
    actor: str,
) -> dict[str, Any]:
    """Run the mutating then validating webhooks for one write and return the object to store.

    `store` is only read (`try_get`, `list`), so calling this inside a store write is safe with the
    store's re-entrant lock. `operation` is "CREATE" or "UPDATE", and `old` is the stored object
    on UPDATE. Raises ApiError when a webhook denies the write. `new` itself is never modified.
    """
    if subresource is not None or operation not in ("CREATE", "UPDATE"):
        return new

    obj = copy.deepcopy(new)
    metadata = obj.setdefault("metadata", {})
    if namespace and not metadata.get("namespace"):
        metadata["namespace"] = namespace

    try:
        if plural == "virtualmachines":
            return _admit_vm(store, operation, old, obj, actor)
        if plural == "virtualmachineinstances" and operation == "CREATE":
            return _admit_vmi(store, obj, actor)
        if plural == "virtualmachineinstances":
            return _admit_vmi_update(old or {}, obj, actor)
        if plural == "virtualmachineinstancemigrations":
            return _admit_migration(store, operation, old, obj, actor)
    except (AttributeError, TypeError) as error:
        # A field has the wrong JSON type, such as a string where a list belongs. The real
        # apiserver rejects such an object with the CRD schema before any validating webhook
        # runs, so the object goes on unchanged and the store's schema check rejects it.
        logger.warning(
            "admission skipped for malformed %s %s/%s: %s", plural, namespace, metadata.get("name"), error
        )
    return new


def _admit_vm(
    store: ObjectReader, operation: str, old: dict[str, Any] | None, vm: dict[str, Any], actor: str
) -> dict[str, Any]:
    # Mutating webhooks run one after another in the order of their configuration names, and
    # "harvester-mutator" sorts before KubeVirt's "virt-api-mutator" (whose VM defaults are not
    # simulated).
    try:
        vm = harvester_vm.mutate_vm(store, operation, vm)
    except harvester_vm.HarvesterWebhookError as error:
        raise _denied(harvester_vm.MUTATOR, vm, actor, str(error), HARVESTER_PLAIN_ERROR_CODE) from None

    # NOTE: a real apiserver calls validating webhooks in parallel and reports the first denial
    # to arrive. Here KubeVirt's validator always runs first, so a write that both deny gets 422.
    if not (vm.get("metadata") or {}).get("deletionTimestamp"):
        causes = kubevirt_vm.vm_network_causes(operation, vm)
        if causes:
            message, reported = kubevirt_vm.denial_message(causes)
            raise _denied(kubevirt_vm.WEBHOOK, vm, actor, message, 422, causes=reported)

    message = harvester_vm.validate_vm(store, operation, old, vm)
    if message:
        raise _denied(harvester_vm.VALIDATOR, vm, actor, message, HARVESTER_PLAIN_ERROR_CODE)
    return vm


def _admit_vmi(store: ObjectReader, vmi: dict[str, Any], actor: str) -> dict[str, Any]:
    try:
        vmi = harvester_vmi.mutate_vmi(store, vmi)
    except harvester_vm.HarvesterWebhookError as error:
        raise _denied(harvester_vm.MUTATOR, vmi, actor, str(error), HARVESTER_PLAIN_ERROR_CODE) from None

    causes = kubevirt_vm.vmi_create_network_causes(vmi)
    if causes:
        message, reported = kubevirt_vm.denial_message(causes)
        raise _denied(kubevirt_vm.VMI_CREATE_WEBHOOK, vmi, actor, message, 422, causes=reported)
    return vmi


def _admit_vmi_update(old: dict[str, Any], vmi: dict[str, Any], actor: str) -> dict[str, Any]:
    causes = kubevirt_vmi.update_causes(old, vmi, actor)
    if causes:
        message, reported = kubevirt_vm.denial_message(causes)
        raise _denied(kubevirt_vmi.WEBHOOK, vmi, actor, message, 422, causes=reported)
    return vmi


def _admit_migration(
    store: ObjectReader, operation: str, old: dict[str, Any] | None, migration: dict[str, Any], actor: str
) -> dict[str, Any]:
    if operation == "UPDATE":
        causes = kubevirt_migration.update_causes(old or {}, migration)
        if causes:
            message, reported = kubevirt_vm.denial_message(causes)
            raise _denied(kubevirt_migration.UPDATE_VALIDATOR, migration, actor, message, 422, causes=reported)
        return migration

    migration = kubevirt_migration.mutate_migration(migration)

    causes = kubevirt_migration.missing_vmi_name_causes(migration)
    if causes:
        message, reported = kubevirt_vm.denial_message(causes)
        raise _denied(kubevirt_migration.CREATE_VALIDATOR, migration, actor, message, 422, causes=reported)

    namespace = migration["metadata"].get("namespace") or ""
    message = kubevirt_migration.create_denial_message(store, namespace, migration)
    if message:
        raise _denied(
            kubevirt_migration.CREATE_VALIDATOR,
            migration,
            actor,
            message,
            KUBEVIRT_PLAIN_ERROR_CODE,
            reason=KUBEVIRT_PLAIN_ERROR_REASON,
        )
    return migration


def _denied(
    webhook: str,
    obj: dict[str, Any],
    actor: str,
    message: str,
    code: int,
    causes: list[dict[str, str]] | None = None,
    reason: str | None = None,
) -> ApiError:
    """Build the client-facing error for a webhook denial and log it."""
    metadata = obj.get("metadata") or {}
    logger.info(
        "admission webhook %s denied %s %s/%s written by %s: %s",
        webhook,
        obj.get("kind", "object"),
        metadata.get("namespace"),
        metadata.get("name") or metadata.get("generateName"),
        actor,
        message,
    )
    error = admission_denied(webhook, message, code, causes)
    if reason is not None:
        error.reason = reason
    return error
