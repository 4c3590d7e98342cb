"""Harvester's VM and migration controllers: migration annotations, observed MACs, MAC backfill."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from kubevirt_sim.controllers.migration import FINAL_PHASES, PLURAL, sort_key_newest_first
from kubevirt_sim.controllers.objects import (
    add_finalizer,
    is_deleting,
    remove_finalizer,
    spec_interfaces,
)

if TYPE_CHECKING:
    from kubevirt_sim.controllers.manager import ControllerManager

logger = logging.getLogger(__name__)

ACTOR = "harvester"
MIGRATION_UID_ANNOTATION = "harvesterhci.io/migrationUID"
MIGRATION_STATE_ANNOTATION = "harvesterhci.io/migrationState"
MAC_ADDRESS_ANNOTATION = "harvesterhci.io/mac-address"
BACKFILL_FINALIZER = "wrangler.cattle.io/VMController.BackfillObservedNetworkMacAddress"

STATE_PENDING = "Pending migration"
STATE_MIGRATING = "Migrating"
STATE_ABORTING = "Aborting migration"

# Kubernetes rejects objects whose annotations exceed 256 KiB in total; Harvester skips the write then.
ANNOTATIONS_SIZE_LIMIT = 256 * 1024


def migration_state_annotation(migration: dict) -> str:
    """Return Harvester's migrationState annotation value for an unfinished VMIM."""
    if is_deleting(migration):
        return STATE_ABORTING
    if migration.get("status", {}).get("phase", "") in ("", "Pending"):
        return STATE_PENDING
    return STATE_MIGRATING


def observed_macs(vmi: dict) -> str:
    """Return the VM annotation value Harvester writes from the VMI status: a sorted JSON map of name to MAC."""
    macs = {
        entry["name"]: entry["mac"]
        for entry in vmi.get("status", {}).get("interfaces") or []
        if entry.get("name") and entry.get("mac")
    }
    return json.dumps(macs, sort_keys=True, separators=(",", ":"))


def backfill_macs(vm: dict, macs: dict[str, str]) -> list[str]:
    """Write observed MACs into template interfaces that have none. Returns the names filled in."""
    filled = []
    name = vm.get("metadata", {}).get("name", "")
    for interface in spec_interfaces(vm.get("spec", {}).get("template", {}).get("spec", {})):
        interface_name = interface.get("name", "")
        observed = macs.get(interface_name)
        if interface.get("macAddress"):
            if observed and observed != interface["macAddress"]:
                logger.warning("VM %s: interface %s keeps spec MAC %s, observed %s", name, interface_name,
                               interface["macAddress"], observed)
            continue
        if observed:
            interface["macAddress"] = observed
            filled.append(interface_name)
        else:
            logger.info("VM %s: MAC address of interface '%s' hasn't been observed yet", name, interface_name)
    return filled


class HarvesterController:
    """Harvester's reactions to VMIs and VMIMs."""

    def __init__(self, manager: "ControllerManager") -> None:
        self.manager = manager
        self.store = manager.store

    def ensure_finalizer(self, namespace: str, name: str) -> None:
        """Put the backfill finalizer on a live VMI, as wrangler does for an OnRemove handler."""
        def edit(current: dict) -> bool:
            if is_deleting(current):
                return False
            return add_finalizer(current, BACKFILL_FINALIZER)

        self.store.mutate("virtualmachineinstances", namespace, name, edit, actor=ACTOR, admit=False)

    def reconcile_vmi(self, namespace: str, name: str) -> None:
        vmi = self.store.try_get("virtualmachineinstances", namespace, name)
        if vmi is None or is_deleting(vmi):
            return
        self._sync_migration_annotations(vmi)
        if vmi.get("status", {}).get("phase") == "Running":
            self._sync_observed_macs(vmi)

    def _sync_migration_annotations(self, vmi: dict) -> None:
        """Mark the VMI with the unfinished VMIM that targets it, or clear the marks when none does."""
        namespace, name = vmi["metadata"]["namespace"], vmi["metadata"]["name"]
        state = vmi.get("status", {}).get("migrationState") or {}
        migrations, _ = self.store.list(PLURAL, namespace)
        unfinished = [
            m for m in migrations
            if m.get("spec", {}).get("vmiName") == name
            and m.get("status", {}).get("phase") not in FINAL_PHASES
            and not (state.get("migrationUid") == m["metadata"]["uid"] and state.get("completed"))
        ]
        unfinished.sort(key=sort_key_newest_first)
        active = unfinished[0] if unfinished else None
        expected = None if active is None else {
            MIGRATION_UID_ANNOTATION: active["metadata"]["uid"],
            MIGRATION_STATE_ANNOTATION: migration_state_annotation(active),
        }

        def edit(current: dict) -> bool:
            annotations = current.setdefault("metadata", {}).setdefault("annotations", {})
            changed = False
            for key in (MIGRATION_UID_ANNOTATION, MIGRATION_STATE_ANNOTATION):
                if expected is None:
                    if key in annotations:
                        del annotations[key]
                        changed = True
                elif annotations.get(key) != expected[key]:
                    annotations[key] = expected[key]
                    changed = True
            return changed

        self.store.mutate("virtualmachineinstances", namespace, name, edit, actor=ACTOR, admit=False)

    def _sync_observed_macs(self, vmi: dict) -> None:
        namespace, name = vmi["metadata"]["namespace"], vmi["metadata"]["name"]
        expected = observed_macs(vmi)

        def edit(current: dict) -> bool:
            annotations = current.setdefault("metadata", {}).setdefault("annotations", {})
            if annotations.get(MAC_ADDRESS_ANNOTATION) == expected:
                return False
            size = sum(len(k) + len(v) for k, v in annotations.items() if k != MAC_ADDRESS_ANNOTATION)
            if size + len(MAC_ADDRESS_ANNOTATION) + len(expected) > ANNOTATIONS_SIZE_LIMIT:
                return False
            annotations[MAC_ADDRESS_ANNOTATION] = expected
            return True

        if self.store.try_get("virtualmachines", namespace, name) is not None:
            self.store.mutate("virtualmachines", namespace, name, edit, actor=ACTOR)

    def finalize_vmi(self, namespace: str, name: str) -> None:
        """Backfill observed MACs into the VM spec when its VMI is deleted, then release the VMI.

        The VM update always runs (through admission) when the VM has the annotation. If admission
        rejects it, the finalizer stays and the reconcile is retried, so the VMI deletion is
        blocked as in Harvester.
        """
        vmi = self.store.try_get("virtualmachineinstances", namespace, name)
        if vmi is None or BACKFILL_FINALIZER not in (vmi["metadata"].get("finalizers") or []):
            return

        vm = self.store.try_get("virtualmachines", namespace, name)
        annotation = (vm or {}).get("metadata", {}).get("annotations", {}).get(MAC_ADDRESS_ANNOTATION)
        if vm is not None and not is_deleting(vm) and annotation:
            try:
                macs = json.loads(annotation)
            except ValueError as error:
                logger.warning("VM %s/%s: invalid %s annotation, no backfill: %s", namespace, name, MAC_ADDRESS_ANNOTATION, error)
                macs = None
            if isinstance(macs, dict):
                filled = backfill_macs(vm, macs)
                self.store.update("virtualmachines", namespace, name, vm, actor=ACTOR)
                logger.info("VM %s/%s: backfilled observed MACs for interfaces %s", namespace, name, filled)

        def release(current: dict) -> bool:
            return remove_finalizer(current, BACKFILL_FINALIZER)

        self.store.mutate("virtualmachineinstances", namespace, name, release, actor=ACTOR, admit=False)
