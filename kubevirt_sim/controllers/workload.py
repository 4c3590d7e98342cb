"""virt-controller's workload updater: automatic migrations for VMIs whose MigrationRequired is True."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from kubevirt_sim.controllers import network
from kubevirt_sim.controllers.migration import (
    FINAL_PHASES,
    MIGRATION_FINALIZER,
    PLURAL,
    VMI_NAME_LABEL,
    migration_limits,
    sort_key_newest_first,
)
from kubevirt_sim.controllers.objects import condition_is_true, dig, is_deleting, seconds_since
from kubevirt_sim.errors import ApiError

if TYPE_CHECKING:
    from kubevirt_sim.controllers.manager import ControllerManager

logger = logging.getLogger(__name__)

ACTOR = "virt-controller"
WORKLOAD_UPDATE_ANNOTATION = "kubevirt.io/workloadUpdateMigration"
GENERATE_NAME = "kubevirt-workload-update-"

# At most one pass per this many simulated seconds.
PASS_INTERVAL_SECONDS = 5.0
# Back-off after a failed automatic migration of a VMI: 20 s, doubling per consecutive failure.
BACKOFF_FIRST_SECONDS = 20.0
# NOTE: the cap is an assumption; KubeVirt's exact maximum back-off was not checked.
BACKOFF_MAX_SECONDS = 300.0


def backoff_seconds(consecutive_failures: int) -> float:
    """Return the wait after `consecutive_failures` failed automatic migrations (0 for none)."""
    if consecutive_failures <= 0:
        return 0.0
    return min(BACKOFF_FIRST_SECONDS * 2 ** (consecutive_failures - 1), BACKOFF_MAX_SECONDS)


def _failed_at(migration: dict) -> str | None:
    for item in reversed(migration.get("status", {}).get("phaseTransitionTimestamps") or []):
        if item.get("phase") == "Failed":
            return item.get("phaseTransitionTimestamp")
    return None


class WorkloadUpdater:
    """Create `kubevirt-workload-update-*` VMIMs as KubeVirt does when LiveMigrate is configured."""

    def __init__(self, manager: "ControllerManager") -> None:
        self.manager = manager
        self.store = manager.store
        self.clock = manager.clock
        self._last_pass: float | None = None

    def run_pass(self) -> None:
        now = self.clock.monotonic()
        if self._last_pass is not None and now - self._last_pass < PASS_INTERVAL_SECONDS:
            self.manager.enqueue_after(PASS_INTERVAL_SECONDS - (now - self._last_pass) + 0.01, ("workload", "", ""))
            return
        self._last_pass = now

        kubevirts, _ = self.store.list("kubevirts")
        kubevirt = kubevirts[0] if kubevirts else {}
        methods = dig(kubevirt, "spec", "workloadUpdateStrategy", "workloadUpdateMethods", default=[]) or []
        if "LiveMigrate" not in methods:
            return
        per_cluster, _ = migration_limits(kubevirt)

        migrations, _ = self.store.list(PLURAL)
        unfinished = [m for m in migrations if m.get("status", {}).get("phase") not in FINAL_PHASES]
        busy = {(m["metadata"]["namespace"], m.get("spec", {}).get("vmiName")) for m in unfinished}
        slots = per_cluster - len(unfinished)
        wake: list[float] = []

        vmis, _ = self.store.list("virtualmachineinstances")
        for vmi in vmis:
            namespace, name = vmi["metadata"]["namespace"], vmi["metadata"]["name"]
            if (vmi.get("status", {}).get("phase") != "Running" or is_deleting(vmi)
                    or not condition_is_true(vmi, network.MIGRATION_REQUIRED)
                    or not condition_is_true(vmi, network.LIVE_MIGRATABLE)
                    or (namespace, name) in busy or network.is_migrating(vmi)):
                continue

            remaining = self._backoff_remaining(migrations, namespace, name)
            if remaining > 0:
                wake.append(remaining)
                continue
            if slots <= 0:
                logger.debug("workload updater: no migration slot for VMI %s/%s", namespace, name)
                break

            self._create_migration(namespace, name)
            slots -= 1

        if wake:
            self.manager.enqueue_after(min(wake) + 0.01, ("workload", "", ""))

    def _backoff_remaining(self, migrations: list[dict], namespace: str, name: str) -> float:
        automatic = [
            m for m in migrations
            if m["metadata"].get("namespace") == namespace and m.get("spec", {}).get("vmiName") == name
            and WORKLOAD_UPDATE_ANNOTATION in (m["metadata"].get("annotations") or {})
            and m.get("status", {}).get("phase") in FINAL_PHASES
        ]
        automatic.sort(key=sort_key_newest_first, reverse=True)
        failures = 0
        for migration in automatic:
            if migration["status"]["phase"] != "Failed":
                break
            failures += 1
        if failures == 0:
            return 0.0
        elapsed = seconds_since(_failed_at(automatic[0]), self.clock.now())
        if elapsed is None:
            return 0.0
        return max(backoff_seconds(failures) - elapsed, 0.0)

    def _create_migration(self, namespace: str, name: str) -> None:
        migration = {
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachineInstanceMigration",
            "metadata": {
                "generateName": GENERATE_NAME,
                "namespace": namespace,
                "annotations": {WORKLOAD_UPDATE_ANNOTATION: ""},
                "labels": {VMI_NAME_LABEL: name},
                "finalizers": [MIGRATION_FINALIZER],
            },
            "spec": {"vmiName": name},
        }
        try:
            created = self.store.create(PLURAL, namespace, migration, actor=ACTOR)
        except ApiError as error:
            logger.warning("workload updater: creating a migration for VMI %s/%s failed: %s", namespace, name, error.message)
            return
        logger.info("workload updater: created VMIM %s/%s for VMI %s (MigrationRequired)",
                    namespace, created["metadata"]["name"], name)
