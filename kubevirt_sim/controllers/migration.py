"""virt-controller's migration controller: VMIM phases, target pods, VMI migrationState, garbage collection."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from kubevirt_sim import naming
from kubevirt_sim.controllers import network, pods, scheduling
from kubevirt_sim.controllers.objects import (
    condition_is_true,
    dig,
    is_deleting,
    remove_finalizer,
    set_condition,
)

from kubevirt_sim.controllers.manager import delete_if_present

if TYPE_CHECKING:
    from kubevirt_sim.controllers.manager import ControllerManager

logger = logging.getLogger(__name__)

ACTOR = "virt-controller"
PLURAL = "virtualmachineinstancemigrations"
MIGRATION_FINALIZER = "kubevirt.io/migrationJobFinalize"
VMI_NAME_LABEL = "kubevirt.io/vmi-name"
NODE_NAME_LABEL = "kubevirt.io/nodeName"

FINAL_PHASES = ("Succeeded", "Failed")
# Phases in which a migration takes a parallel-migration slot (KubeVirt counts running migrations).
RUNNING_PHASES = ("Scheduling", "Scheduled", "PreparingTarget", "TargetReady", "Running")

# Share of Simulator.migration_seconds spent in each phase before the next one; they sum to 1.
# The split follows the timestamps of a real 26 s Harvester migration: a few seconds to schedule
# and prepare the target, the rest in memory transfer.
PHASE_SHARE = {
    "Pending": 0.05,
    "Scheduling": 0.10,
    "Scheduled": 0.05,
    "PreparingTarget": 0.05,
    "TargetReady": 0.05,
    "Running": 0.70,
}
NEXT_PHASE = {
    "Pending": "Scheduling",
    "Scheduling": "Scheduled",
    "Scheduled": "PreparingTarget",
    "PreparingTarget": "TargetReady",
    "TargetReady": "Running",
}

# KubeVirt fails a migration whose target pod stays unschedulable this long (simulated seconds).
UNSCHEDULABLE_TIMEOUT_SECONDS = 300.0
# Simulated seconds an abort takes between the request and the Failed phase.
ABORT_SECONDS = 1.0
# KubeVirt keeps this many finalized VMIMs per VMI and garbage-collects older ones.
KEEP_FINALIZED = 5

DEFAULT_PARALLEL_PER_CLUSTER = 5
DEFAULT_PARALLEL_OUTBOUND_PER_NODE = 2

MESSAGE_ANOTHER_MIGRATION = "VMI is not eligible for migration because another migration job is in progress."
MESSAGE_ABORTED = "Live migration aborted"


@dataclass
class MigrationRecord:
    """State the controller keeps for one unfinished VMIM between reconciles."""

    uid: str
    namespace: str
    name: str
    vmi: str
    phase: str = ""
    entered: float = 0.0
    source_node: str | None = None
    source_pod: str | None = None
    target_pod: str | None = None
    target_node: str | None = None
    abort_since: float | None = None


def migration_limits(kubevirt: dict) -> tuple[int, int]:
    """Return (parallelMigrationsPerCluster, parallelOutboundMigrationsPerNode) from the KubeVirt CR."""
    config = dig(kubevirt, "spec", "configuration", "migrations", default={}) or {}
    return (int(config.get("parallelMigrationsPerCluster", DEFAULT_PARALLEL_PER_CLUSTER)),
            int(config.get("parallelOutboundMigrationsPerNode", DEFAULT_PARALLEL_OUTBOUND_PER_NODE)))


def sort_key_newest_first(migration: dict) -> tuple[str, str, str]:
    timestamps = migration.get("status", {}).get("phaseTransitionTimestamps") or [{}]
    return (migration["metadata"].get("creationTimestamp", ""),
            timestamps[0].get("phaseTransitionTimestamp", ""),
            migration["metadata"]["name"])


def target_spec(vmi: dict, migration: dict) -> dict:
    """Return the scheduling constraints of a migration's target pod: the VMI's, narrowed by spec.addedNodeSelector.

    The added selector only restricts the target; a key the VMI already selects keeps the VMI's value.
    """
    spec = copy.deepcopy(vmi.get("spec", {}))
    added = migration.get("spec", {}).get("addedNodeSelector") or {}
    if added:
        selector = dict(added)
        selector.update(spec.get("nodeSelector") or {})
        spec["nodeSelector"] = selector
    return spec


class MigrationController:
    """Drive every VMIM from creation to Succeeded or Failed on the simulated clock."""

    def __init__(self, manager: "ControllerManager") -> None:
        self.manager = manager
        self.store = manager.store
        self.clock = manager.clock
        self.faults = manager.faults
        self.records: dict[tuple[str, str], MigrationRecord] = {}

    # Queries used by the manager and the other controllers.

    def unfinished_for(self, namespace: str, vmi_name: str) -> list[str]:
        return [r.name for r in list(self.records.values()) if r.namespace == namespace and r.vmi == vmi_name]

    def waiting(self) -> list[tuple[str, str]]:
        """Return the migrations that wait for a slot or a node."""
        return [(r.namespace, r.name) for r in list(self.records.values()) if r.phase in ("", "Pending", "Scheduling")]

    # Reconcile.

    def reconcile(self, namespace: str, name: str) -> None:
        migration = self.store.try_get(PLURAL, namespace, name)
        record = self.records.get((namespace, name))

        if migration is None:
            if record is not None:
                self.records.pop((namespace, name), None)
                logger.info("VMIM %s/%s deleted in phase %s: aborting", namespace, name, record.phase or "unset")
                self._abandon(record, MESSAGE_ABORTED, aborted=True)
            return

        uid = migration["metadata"]["uid"]
        phase = migration.get("status", {}).get("phase", "")
        if record is not None and record.uid != uid:
            self.records.pop((namespace, name), None)
            record = None

        if phase in FINAL_PHASES:
            self.records.pop((namespace, name), None)
            if is_deleting(migration):
                self._release(namespace, name)
            return

        if record is None:
            record = MigrationRecord(uid=uid, namespace=namespace, name=name,
                                     vmi=migration.get("spec", {}).get("vmiName", ""),
                                     phase=phase, entered=self.clock.monotonic())
            self._restore_record(record, migration)
            self.records[(namespace, name)] = record

        if is_deleting(migration):
            self._abort(migration, record)
            return

        handler: dict[str, Callable[[dict, MigrationRecord], None]] = {
            "": self._accept,
            "Pending": self._pending,
            "Scheduling": self._scheduling,
            "Scheduled": self._advance_simple,
            "PreparingTarget": self._advance_simple,
            "TargetReady": self._advance_simple,
            "Running": self._running,
        }
        step = handler.get(phase)
        if step is None:
            logger.warning("VMIM %s/%s has unknown phase %r; leaving it alone", namespace, name, phase)
            return
        step(migration, record)

    def _restore_record(self, record: MigrationRecord, migration: dict) -> None:
        """Fill a record for a VMIM found in flight (after a restart) from the VMI's migrationState."""
        vmi = self.store.try_get("virtualmachineinstances", record.namespace, record.vmi)
        state = (vmi or {}).get("status", {}).get("migrationState") or {}
        if state.get("migrationUid") == record.uid:
            record.source_node = state.get("sourceNode")
            record.source_pod = state.get("sourcePod")
            record.target_pod = state.get("targetPod")
            record.target_node = state.get("targetNode")

    # Phase steps.

    def _accept(self, migration: dict, record: MigrationRecord) -> None:
        vmi = self.store.try_get("virtualmachineinstances", record.namespace, record.vmi)
        if vmi is None:
            self._set_phase(record, "Pending")
            self._fail(record, f'the VMI "{record.namespace}/{record.vmi}" does not exist')
            return

        # Records exist only for unfinished VMIMs. One that left the unset phase owns the VMI's migration.
        others = [r for r in self.records.values()
                  if r.vmi == record.vmi and r.namespace == record.namespace and r.uid != record.uid and r.phase]
        if others:
            self._set_phase(record, "Pending")
            self._fail(record, MESSAGE_ANOTHER_MIGRATION, touch_vmi=False)
            return

        self._set_phase(record, "Pending")

    def _pending(self, migration: dict, record: MigrationRecord) -> None:
        if self._faulted(record):
            return
        if not self._waited(record):
            return

        vmi = self.store.try_get("virtualmachineinstances", record.namespace, record.vmi)
        if vmi is None or vmi.get("status", {}).get("phase") != "Running" or is_deleting(vmi):
            self._fail(record, f"VMI {record.namespace}/{record.vmi} is not running", touch_vmi=False)
            return

        kubevirts, _ = self.store.list("kubevirts")
        per_cluster, per_node = migration_limits(kubevirts[0] if kubevirts else {})
        source_node = vmi.get("status", {}).get("nodeName")
        running = [r for r in self.records.values() if r.phase in RUNNING_PHASES]
        if len(running) >= per_cluster or sum(1 for r in running if r.source_node == source_node) >= per_node:
            logger.debug("VMIM %s/%s waits for a migration slot", record.namespace, record.name)
            return

        self._create_target_pod(vmi, migration, record)
        self._set_phase(record, "Scheduling")

    def _create_target_pod(self, vmi: dict, migration: dict, record: MigrationRecord) -> None:
        """Create the pending target pod; its Multus networks come from the VMI spec as it is now."""
        namespace = record.namespace
        existing, _ = self.store.list("pods", namespace, label_selector=f"{pods.CREATED_BY_LABEL}={vmi['metadata']['uid']}")
        source = pods.current_pod(existing, vmi)
        record.source_node = vmi.get("status", {}).get("nodeName")
        record.source_pod = source["metadata"]["name"] if source else None

        # The pod gets its IP and Multus network-status when it is scheduled.
        constrained = dict(vmi, spec=target_spec(vmi, migration))
        pod = pods.launcher_pod(constrained, network.pod_networks_annotation(vmi), "", "", None,
                                migration_uid=record.uid)
        created = self.store.create("pods", namespace, pod, actor=ACTOR, admit=False, keep_status=True)
        record.target_pod = created["metadata"]["name"]

        def start_state(current: dict) -> bool:
            current.setdefault("status", {})["migrationState"] = {
                "migrationUid": record.uid,
                "sourceNode": record.source_node,
                "sourcePod": record.source_pod,
                "targetPod": record.target_pod,
            }
            return True

        self.store.mutate("virtualmachineinstances", namespace, record.vmi, start_state, actor=ACTOR)
        logger.info("VMIM %s/%s: target pod %s created for VMI %s", namespace, record.name, record.target_pod, record.vmi)

    def _scheduling(self, migration: dict, record: MigrationRecord) -> None:
        if self._faulted(record):
            return
        vmi = self.store.try_get("virtualmachineinstances", record.namespace, record.vmi)
        if vmi is None or is_deleting(vmi):
            self._fail(record, f"VMI {record.namespace}/{record.vmi} is gone")
            return

        nodes, _ = self.store.list("nodes")
        candidates: list[str] = []
        if not self.faults.targets_unschedulable:
            overrides = {n["metadata"]["name"]: self.faults.node_ready_override(n["metadata"]["name"]) for n in nodes}
            candidates = scheduling.candidate_nodes(target_spec(vmi, migration), nodes, exclude=record.source_node,
                                                    ready_overrides=overrides)

        waited = self.clock.monotonic() - record.entered
        if not candidates:
            if waited >= UNSCHEDULABLE_TIMEOUT_SECONDS:
                message = f"Migration target pod for VMI [{record.namespace}/{record.vmi}] is currently unschedulable."
                logger.warning("VMIM %s/%s: %s", record.namespace, record.name, message)
                self._fail(record, message)
                return
            self._mark_target_unschedulable(record, len(nodes))
            self.manager.enqueue_after(UNSCHEDULABLE_TIMEOUT_SECONDS - waited + 0.01, ("vmim", record.namespace, record.name))
            return
        if not self._waited(record):
            return

        target = candidates[0]
        record.target_node = target
        pod_address = naming.random_ip(scheduling.node_subnet(target, nodes))
        self._schedule_target_pod(record, target, pod_address)
        self._set_phase(record, "Scheduled")

    def _mark_target_unschedulable(self, record: MigrationRecord, node_count: int) -> None:
        message = (f"0/{node_count} nodes are available: the target pod's node affinity and pod "
                   f"anti-affinity rules match no schedulable node.")

        def edit(current: dict) -> bool:
            expected = pods.pending_pod_status(message)
            if current.get("status") == expected:
                return False
            current["status"] = expected
            return True

        if record.target_pod:
            self.store.mutate("pods", record.namespace, record.target_pod, edit, actor="default-scheduler",
                              subresource="status", admit=False)

    def _schedule_target_pod(self, record: MigrationRecord, node: str, pod_address: str) -> None:
        """Bind the target pod to `node`, let thin Multus write its network-status and run it."""
        if not record.target_pod:
            return
        vmi = self.store.try_get("virtualmachineinstances", record.namespace, record.vmi) or {}
        primary_mac = next((e.get("mac") for e in vmi.get("status", {}).get("interfaces") or []
                            if e.get("podInterfaceName") == naming.PRIMARY_POD_INTERFACE and e.get("mac")),
                           naming.generate_mac())

        def bind(current: dict) -> bool:
            current.setdefault("spec", {})["nodeName"] = node
            annotations = current.setdefault("metadata", {}).setdefault("annotations", {})
            annotations[network.NETWORK_STATUS_ANNOTATION] = pods.network_status_annotation(
                pods.networks_of(current), pod_address, primary_mac)
            return True

        def run(current: dict) -> bool:
            current["status"] = pods.running_pod_status(pod_address)
            return True

        self.store.mutate("pods", record.namespace, record.target_pod, bind, actor="default-scheduler", admit=False)
        self.store.mutate("pods", record.namespace, record.target_pod, run, actor="kubelet",
                          subresource="status", admit=False)

    def _advance_simple(self, migration: dict, record: MigrationRecord) -> None:
        """Scheduled, PreparingTarget, TargetReady: wait the phase's share, update the VMI, move on."""
        if self._faulted(record) or not self._waited(record):
            return
        phase = record.phase
        timestamp = self.clock.timestamp()
        nodes, _ = self.store.list("nodes")
        target = next((n for n in nodes if n["metadata"]["name"] == record.target_node), {"metadata": {"name": record.target_node}})

        def edit(current: dict) -> bool:
            state = current.setdefault("status", {}).setdefault("migrationState", {})
            if state.get("migrationUid") != record.uid:
                return False
            if phase == "Scheduled":
                state["targetNode"] = record.target_node
            elif phase == "PreparingTarget":
                state["targetNodeAddress"] = scheduling.node_address(target, nodes)
                state["targetNodeDomainDetected"] = True
                state["targetNodeDomainReadyTimestamp"] = timestamp
            elif phase == "TargetReady":
                state["startTimestamp"] = timestamp
                state["mode"] = "PreCopy"
            return True

        self.store.mutate("virtualmachineinstances", record.namespace, record.vmi, edit, actor=ACTOR)
        self._set_phase(record, NEXT_PHASE[phase])

    def _running(self, migration: dict, record: MigrationRecord) -> None:
        vmi = self.store.try_get("virtualmachineinstances", record.namespace, record.vmi)
        if vmi is None or is_deleting(vmi):
            self._fail(record, f"VMI {record.namespace}/{record.vmi} is gone")
            return
        state = vmi.get("status", {}).get("migrationState") or {}
        completed = state.get("migrationUid") == record.uid and state.get("completed")

        if not completed:
            if self._faulted(record) or not self._waited(record):
                return
            self._complete(record)
            return

        # NOTE: if the target pod missed an interface hot-plugged after Scheduling and MigrationRequired
        # is True, this VMIM stays Running. Whether KubeVirt 1.6 ends such a VMIM was not checked.
        if condition_is_true(vmi, network.MIGRATION_REQUIRED):
            logger.debug("VMIM %s/%s completed but MigrationRequired is True; waiting", record.namespace, record.name)
            return
        self._set_phase(record, "Succeeded")
        self.records.pop((record.namespace, record.name), None)
        logger.info("VMIM %s/%s succeeded: VMI %s now on %s", record.namespace, record.name, record.vmi, record.target_node)

    def _complete(self, record: MigrationRecord) -> None:
        """Hand the VMI over to the target: node, label, active pod; delete the source pod."""
        namespace = record.namespace
        target_pod = self.store.try_get("pods", namespace, record.target_pod) if record.target_pod else None
        timestamp = self.clock.timestamp()

        def edit(current: dict) -> bool:
            status = current.setdefault("status", {})
            state = status.setdefault("migrationState", {})
            if state.get("migrationUid") != record.uid:
                return False
            state["endTimestamp"] = timestamp
            state["completed"] = True
            status["nodeName"] = record.target_node
            if target_pod is not None:
                status["activePods"] = {target_pod["metadata"]["uid"]: record.target_node}
            current.setdefault("metadata", {}).setdefault("labels", {})[NODE_NAME_LABEL] = record.target_node
            return True

        self.store.mutate("virtualmachineinstances", namespace, record.vmi, edit, actor=ACTOR)
        if record.source_pod:
            self._delete_pod(namespace, record.source_pod)
        logger.info("VMIM %s/%s: VMI %s migrated from %s to %s", namespace, record.name, record.vmi,
                    record.source_node, record.target_node)
        self._copy_state_to_migration(record)
        self.manager.enqueue(("vmim", namespace, record.name))

    # Abort, failure and clean-up.

    def _abort(self, migration: dict, record: MigrationRecord) -> None:
        """Abort a deleted, unfinished VMIM: request, wait ABORT_SECONDS, then fail it and release the finalizer."""
        now = self.clock.monotonic()
        if record.abort_since is None:
            record.abort_since = now
            timestamp = self.clock.timestamp()
            logger.info("VMIM %s/%s: abort requested in phase %s", record.namespace, record.name, record.phase or "unset")

            def request(current: dict) -> bool:
                return set_condition(current, "migrationAbortRequested", "True", timestamp,
                                     "AbortRequested", "Migration abort requested")

            self.store.mutate(PLURAL, record.namespace, record.name, request, actor=ACTOR, subresource="status", admit=False)
            self._edit_vmi_state(record, {"abortRequested": True, "abortStatus": "Aborting"})
            self.manager.enqueue(("vmi", record.namespace, record.vmi))

        waited = now - record.abort_since
        if record.phase not in ("", "Pending") and waited < ABORT_SECONDS:
            self.manager.enqueue_after(ABORT_SECONDS - waited + 0.01, ("vmim", record.namespace, record.name))
            return

        self._fail(record, MESSAGE_ABORTED, abort_status="Succeeded")
        self._release(record.namespace, record.name)

    def _abandon(self, record: MigrationRecord, reason: str, aborted: bool) -> None:
        """Clean up after a VMIM that vanished unfinished (deleted with no finalizer)."""
        if record.target_pod:
            self._delete_pod(record.namespace, record.target_pod)
        updates = {"failed": True, "failureReason": reason, "endTimestamp": self.clock.timestamp()}
        if aborted:
            updates.update({"abortRequested": True, "abortStatus": "Succeeded"})
        self._edit_vmi_state(record, updates)

    def _fail(self, record: MigrationRecord, reason: str, touch_vmi: bool = True, abort_status: str | None = None) -> None:
        if record.target_pod:
            self._delete_pod(record.namespace, record.target_pod)
        if touch_vmi:
            updates: dict = {"failed": True, "failureReason": reason, "endTimestamp": self.clock.timestamp()}
            if abort_status:
                updates["abortStatus"] = abort_status
            self._edit_vmi_state(record, updates)
        self._copy_state_to_migration(record, failure=reason)
        self._set_phase(record, "Failed")
        self.records.pop((record.namespace, record.name), None)
        logger.warning("VMIM %s/%s failed: %s", record.namespace, record.name, reason)

    def _release(self, namespace: str, name: str) -> None:
        def edit(current: dict) -> bool:
            return remove_finalizer(current, MIGRATION_FINALIZER)

        self.store.mutate(PLURAL, namespace, name, edit, actor=ACTOR)

    def _delete_pod(self, namespace: str, name: str) -> None:
        delete_if_present(self.store, "pods", namespace, name, ACTOR)

    def _edit_vmi_state(self, record: MigrationRecord, updates: dict) -> None:
        def edit(current: dict) -> bool:
            state = current.setdefault("status", {}).get("migrationState")
            if not state or state.get("migrationUid") != record.uid:
                return False
            state.update(updates)
            return True

        self.store.mutate("virtualmachineinstances", record.namespace, record.vmi, edit, actor=ACTOR)

    def _copy_state_to_migration(self, record: MigrationRecord, failure: str | None = None) -> None:
        """Mirror the VMI's migrationState for this migration onto the VMIM status."""
        vmi = self.store.try_get("virtualmachineinstances", record.namespace, record.vmi)
        state = copy.deepcopy((vmi or {}).get("status", {}).get("migrationState") or {})
        if state.get("migrationUid") != record.uid:
            state = {"migrationUid": record.uid}
        if failure and not state.get("failed"):
            state.update({"failed": True, "failureReason": failure})

        def edit(current: dict) -> bool:
            status = current.setdefault("status", {})
            if status.get("migrationState") == state:
                return False
            status["migrationState"] = state
            return True

        self.store.mutate(PLURAL, record.namespace, record.name, edit, actor=ACTOR, subresource="status", admit=False)

    # Timing and faults.

    def _set_phase(self, record: MigrationRecord, phase: str) -> None:
        """Move the VMIM to `phase`, stamping the transition and copying the VMI's migrationState for it."""
        timestamp = self.clock.timestamp()
        vmi = self.store.try_get("virtualmachineinstances", record.namespace, record.vmi)
        state = (vmi or {}).get("status", {}).get("migrationState") or {}
        if state.get("migrationUid") != record.uid:
            state = None

        def edit(current: dict) -> bool:
            status = current.setdefault("status", {})
            if status.get("phase") == phase:
                return False
            status["phase"] = phase
            status.setdefault("phaseTransitionTimestamps", []).append(
                {"phase": phase, "phaseTransitionTimestamp": timestamp})
            if state is not None:
                status["migrationState"] = copy.deepcopy(state)
            return True

        self.store.mutate(PLURAL, record.namespace, record.name, edit, actor=ACTOR, subresource="status", admit=False)
        record.phase = phase
        record.entered = self.clock.monotonic()
        logger.debug("VMIM %s/%s entered phase %s", record.namespace, record.name, phase)
        self.manager.enqueue(("vmim", record.namespace, record.name))

    def _waited(self, record: MigrationRecord) -> bool:
        """Tell whether the current phase has lasted its share; otherwise schedule a wake-up."""
        duration = PHASE_SHARE.get(record.phase, 0.0) * self.manager.sim.migration_seconds
        waited = self.clock.monotonic() - record.entered
        if waited >= duration:
            return True
        self.manager.enqueue_after(duration - waited + 0.001, ("vmim", record.namespace, record.name))
        return False

    def _faulted(self, record: MigrationRecord) -> bool:
        """Apply the faults for the current phase: fail the migration, or hold it. Returns True when one applied."""
        if self.faults.migration_fails_in(record.phase, record.namespace, record.vmi):
            self._fail(record, f"migration failed in phase {record.phase} (injected fault)")
            return True
        return self.faults.migration_stalls_in(record.phase, record.namespace, record.vmi)

    # Garbage collection.

    def collect_garbage(self, namespace: str, vmi_name: str) -> None:
        """Delete all but the newest KEEP_FINALIZED finished VMIMs of a VMI, removing their finalizer first."""
        migrations, _ = self.store.list(PLURAL, namespace)
        finished = [m for m in migrations
                    if m.get("spec", {}).get("vmiName") == vmi_name
                    and m.get("status", {}).get("phase") in FINAL_PHASES]
        finished.sort(key=sort_key_newest_first, reverse=True)
        for migration in finished[KEEP_FINALIZED:]:
            name = migration["metadata"]["name"]
            self._release(namespace, name)
            delete_if_present(self.store, PLURAL, namespace, name, ACTOR)
            logger.info("garbage-collected VMIM %s/%s of VMI %s", namespace, name, vmi_name)
