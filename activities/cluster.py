"""Activities that read and change the cluster: validate, backfill, patch, migrate, verify, undo.

Each is written to be re-run safely: a retry after a crash first reads the cluster and detects
what the earlier attempt already did.
"""

from __future__ import annotations

import functools
import logging
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

from kubernetes.client.exceptions import ApiException
from temporalio import activity
from temporalio.exceptions import ApplicationError

from nicflow import patches, rules
from nicflow.clusterview import gather_view
from nicflow.status import agent_connected, vmi_running_and_ready
from nicflow.contracts import (
    BackfillInput,
    MigrateInput,
    MigrateResult,
    OperationRef,
    StepResult,
    UndoInput,
    ValidateResult,
    Verdict,
    VerifyInput,
    VerifyResult,
)
from nicflow.kube import KubeVirtClient, classify
from nicflow.ledger import Ledger
from nicflow.macs import generate_laa_mac, normalize_mac
from nicflow.models import Mode, OperationKind, Outcome

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Attempts of one write when the VM keeps changing under it (409 Conflict each time).
MAX_CONFLICT_RETRIES = 8

# A read that fails with 429, 5xx or a dropped connection is tried again inside the activity,
# after 0.2 s, 0.4 s, ... at most 5 s (or the server's Retry-After when longer), up to 6 times in
# all. A poll loop then survives a short API outage without losing its place. Longer outages
# fail the attempt, so the activity's retry policy takes over.
READ_ATTEMPTS = 6
READ_BACKOFF_SECONDS = 0.2
READ_BACKOFF_MAX_SECONDS = 5.0


def migration_phase(migration: dict | None) -> str:
    """Return a VMIM's phase, or "" while it has none."""
    return ((migration or {}).get("status") or {}).get("phase") or ""


def migration_finished(migration: dict) -> bool:
    return migration_phase(migration) in ("Succeeded", "Failed")


def first_unfinished(migrations: list[dict]) -> dict | None:
    """Return the first VMIM that has not reached Succeeded or Failed, or None."""
    return next((migration for migration in migrations if not migration_finished(migration)), None)


def migration_name(operation_id: str, attempt: int) -> str:
    """Name of the VMIM an operation creates, derived from its id so that a retry finds its own."""
    return f"nicflow-{operation_id}-{attempt}"


def _context(ref: OperationRef) -> str:
    return f"operation={ref.operation_id} vm={ref.vm_namespace}/{ref.vm_name} interface={ref.interface}"


def log_attempt(step: str) -> None:
    """Log a retried attempt of an activity, with the workflow (and so the VM) it belongs to."""
    info = activity.info()
    if info.attempt > 1:
        logger.warning("retrying %s for %s: attempt %d", step, info.workflow_id, info.attempt)


def cluster_call(function: Callable[..., T]) -> Callable[..., T]:
    """Map API errors onto Temporal's retry model: 409, 429, 5xx and timeouts retry; 400, 404, 422 end the step."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        log_attempt(function.__name__)
        try:
            return function(*args, **kwargs)
        except ApplicationError:
            raise
        except Exception as error:  # noqa: BLE001 - classify() re-raises what it does not know
            cluster_error = classify(error)
            if cluster_error.retryable:
                logger.warning("cluster call %s failed, will retry: %s", function.__name__, cluster_error)
                raise ApplicationError(str(cluster_error), type="ClusterUnavailable") from error
            logger.error("cluster call %s failed, not retrying: %s", function.__name__, cluster_error)
            raise ApplicationError(
                str(cluster_error),
                {"code": cluster_error.code, "reason": cluster_error.reason},
                type="ClusterRejected",
                non_retryable=True,
            ) from error

    return wrapper


def _creator(migration: dict, adopted: bool) -> str:
    """Name who created a VMIM: nicflow, or the generateName prefix of the controller that did."""
    if not adopted:
        return "nicflow"
    return (migration["metadata"].get("generateName") or "other").rstrip("-")


def _migratable_besides_migrations(vmi: dict) -> bool:
    """Apply the live-migratable rule to a VMI, disregarding Harvester's mark of a migration in flight.

    Another migration in flight, such as the workload updater's, is adopted by the next attempt,
    so it is no reason to stop retrying.
    """
    metadata = vmi.get("metadata", {})
    annotations = {
        key: value for key, value in (metadata.get("annotations") or {}).items()
        if key not in (rules.MIGRATION_UID_ANNOTATION, rules.MIGRATION_STATE_ANNOTATION)
    }
    return rules.is_live_migratable({**vmi, "metadata": {**metadata, "annotations": annotations}}).passed


def _retry_after(error: Exception) -> float:
    """Return the seconds a 429 or 503 response asks the client to wait (Retry-After), or 0."""
    if not isinstance(error, ApiException) or not error.headers:
        return 0.0
    try:
        return max(float(error.headers.get("Retry-After") or 0), 0.0)
    except ValueError:
        return 0.0


class RetryingReads:
    """A KubeVirtClient whose get_* and list_* calls retry transient API errors with back-off.

    Writes pass through unchanged: a write that timed out may have landed, so only the caller
    can tell whether sending it again is safe.
    """

    def __init__(self, client: KubeVirtClient) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute) or not name.startswith(("get_", "list_")):
            return attribute
        return functools.partial(self._read, name, attribute)

    def _read(self, name: str, read: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        attempt = 1
        delay = READ_BACKOFF_SECONDS
        while True:
            try:
                return read(*args, **kwargs)
            except Exception as error:  # noqa: BLE001 - classify() re-raises what it does not know
                cluster_error = classify(error)
                if not cluster_error.retryable or attempt >= READ_ATTEMPTS:
                    raise
                wait = max(delay, _retry_after(error))
                logger.warning("%s%s failed (attempt %d of %d), retrying in %.1f s: %s",
                               name, args, attempt, READ_ATTEMPTS, wait, cluster_error)
                if activity.in_activity():
                    activity.heartbeat({"retrying": name})
                time.sleep(wait)
                attempt += 1
                delay = min(delay * 2, READ_BACKOFF_MAX_SECONDS)


class ClusterActivities:
    """The cluster steps, bound to one API client factory and the ledger (for MAC reservations)."""

    def __init__(self, client_factory: Callable[[], KubeVirtClient], ledger: Ledger, poll_seconds: float = 1.0) -> None:
        self._client_factory = client_factory
        self._client: KubeVirtClient | None = None
        self._ledger = ledger
        self._poll_seconds = poll_seconds

    @property
    def kube(self) -> KubeVirtClient:
        """The API client; its reads retry transient errors (see RetryingReads)."""
        if self._client is None:
            self._client = cast(KubeVirtClient, RetryingReads(self._client_factory()))
        return self._client

    def _sleep(self, details: Any = None) -> None:
        """Heartbeat and wait one poll interval; on worker shutdown, end the attempt for a retry elsewhere."""
        if activity.is_worker_shutdown():
            raise ApplicationError("the worker is shutting down; another worker resumes this step", type="WorkerShutdown")
        activity.heartbeat(details)
        time.sleep(self._poll_seconds)

    # Step 1: validate

    def _gather(self, ref: OperationRef) -> rules.ClusterView:
        reserved: dict[str, dict[str, str]] = {}
        for reservation in self._ledger.active_reservations():
            if reservation.operation_id != ref.operation_id:
                reserved.setdefault(reservation.cluster_network, {})[reservation.mac] = reservation.operation_id
        view = gather_view(self.kube, ref.vm_namespace, ref.vm_name, ref.network, reserved, on_progress=activity.heartbeat)
        view.hotplugged_since_start = self._hotplugged_since_start(ref, view.vmi)
        return view

    def _hotplugged_since_start(self, ref: OperationRef, vmi: dict | None) -> int:
        """Count the interfaces nicflow hot-plugged into this VMI, net of unplugs, from the ledger.

        Each takes one of the PCIe root ports reserved when the domain started.
        """
        uid = (vmi or {}).get("metadata", {}).get("uid")
        if not uid:
            return 0
        count = 0
        for row in self._ledger.list_operations(limit=1000, vm=f"{ref.vm_namespace}/{ref.vm_name}", status="succeeded"):
            if row.mode != "live":
                continue
            # The VMI uid recorded by validate ties the operation to one domain start; comparing
            # timestamps instead would mix the worker's clock with the API server's.
            validated = [e for e in self._ledger.list_events(row.operation_id) if e.step == "validate"]
            if validated and validated[-1].details.get("vmi_uid") == uid:
                count += 1 if row.kind == "hotplug" else -1
        return max(count, 0)

    @activity.defn(name="validate")
    @cluster_call
    def validate(self, ref: OperationRef) -> ValidateResult:
        """Read the VM and its surroundings, apply every rule, and reserve the MAC of a hot-plug."""
        view = self._gather(ref)
        if ref.kind == OperationKind.HOTPLUG:
            verdicts = rules.check_hotplug(
                view, interface=ref.interface, network=ref.network or "", mac=ref.mac, allow_restart=ref.allow_restart
            )
        else:
            verdicts = rules.check_unplug(view, interface=ref.interface, allow_restart=ref.allow_restart)
        report = [Verdict(rule=v.rule, passed=v.passed, reason=str(v.reason) if v.reason else None, message=v.message) for v in verdicts]

        failure = rules.first_failure(verdicts)
        if failure is not None:
            logger.info("validate rejected %s: %s %s", _context(ref), failure.reason, failure.message)
            self._ledger.release_macs(ref.operation_id)
            return ValidateResult(rejected=True, reason_code=str(failure.reason), message=failure.message, verdicts=report)

        mode = Mode.COLD if rules.is_cold(view) else Mode.LIVE
        result = ValidateResult(
            rejected=False,
            message=f"all {len(report)} rules passed" + (" (VM stopped: cold change)" if mode == Mode.COLD else ""),
            verdicts=report,
            mode=mode,
            missing_macs=rules.missing_macs(view.vm),
            vmi_uid=(view.vmi or {}).get("metadata", {}).get("uid"),
        )

        if ref.kind == OperationKind.UNPLUG:
            found_interface = patches.find_interface(view.vm, ref.interface)
            found_network = patches.find_network(view.vm, ref.interface)
            result.interface_spec = found_interface[1] if found_interface else None
            result.network_spec = found_network[1] if found_network else None
            result.mac = (result.interface_spec or {}).get("macAddress")
            return result

        cluster_network = rules.cluster_network_of(view.nad) if view.nad else None
        result.cluster_network = cluster_network
        if ref.mac:
            result.mac = normalize_mac(ref.mac)
            if cluster_network and not self._ledger.reserve_mac(cluster_network, result.mac, ref.operation_id):
                if not self._holds_reservation(ref.operation_id, cluster_network, result.mac):
                    return ValidateResult(
                        rejected=True,
                        reason_code="MAC_IN_USE",
                        message=f"MAC {result.mac} is reserved by another running operation on cluster network "
                        f"{cluster_network}; choose another MAC or leave --mac out to have one allocated",
                        verdicts=report,
                    )
        else:
            result.mac = self._allocate_mac(ref, cluster_network or "", view)
            result.mac_generated = True
        logger.info("validate passed %s mac=%s mode=%s", _context(ref), result.mac, mode)
        return result

    def _holds_reservation(self, operation_id: str, cluster_network: str, mac: str) -> bool:
        return any(
            r.operation_id == operation_id and r.mac == mac for r in self._ledger.active_reservations(cluster_network)
        )

    def _allocate_mac(self, ref: OperationRef, cluster_network: str, view: rules.ClusterView) -> str:
        """Reserve a fresh locally administered MAC, or return the one this operation reserved before a retry."""
        for reservation in self._ledger.active_reservations(cluster_network):
            if reservation.operation_id == ref.operation_id:
                return reservation.mac

        taken = set(view.macs_in_use.get(cluster_network, {})) | set(view.reserved_macs.get(cluster_network, {}))
        generator = random.SystemRandom()
        for _ in range(64):
            candidate = generate_laa_mac(generator)
            if candidate in taken:
                continue
            if self._ledger.reserve_mac(cluster_network, candidate, ref.operation_id):
                return candidate
        raise ApplicationError(
            f"no free MAC found on cluster network {cluster_network!r} after 64 tries", type="MacAllocationFailed"
        )

    # Step 2: backfill

    @activity.defn(name="backfill")
    @cluster_call
    def backfill(self, request: BackfillInput) -> StepResult:
        """Write observed MACs into the VM spec; restart a running VM when the request allows it.

        The ledger events of earlier attempts tell a retry how far the backfill got, so a retry
        after a crash neither skips the restart nor restarts the VM twice.
        """
        ref = request.ref
        recorded = {event.outcome: event for event in self._ledger.list_events(ref.operation_id) if event.step == "backfill"}
        vm = self.kube.get_vm(ref.vm_namespace, ref.vm_name)
        missing = rules.missing_macs(vm)
        if not missing and "macs-written" not in recorded:
            return StepResult(outcome=Outcome.SKIPPED, message="every interface has a MAC in the VM spec")

        vmi = self.kube.get_vmi(ref.vm_namespace, ref.vm_name)
        if missing:
            observed = rules.observed_macs(vmi, vm)
            unknown = [name for name in missing if name not in observed]
            if unknown:
                raise ApplicationError(
                    f"no observed MAC for interfaces {', '.join(unknown)} of VM {ref.vm_namespace}/{ref.vm_name}; "
                    "start the VM once so that KubeVirt reports them, then run the operation again",
                    type="BackfillImpossible",
                    non_retryable=True,
                )
            macs = {name: observed[name] for name in missing}
            written = self._write_with_retry(ref, lambda current: patches.backfill_patch(current, macs))
            self._backfill_event(ref, "macs-written", {"macs": macs, "patch": written["patch"]})
        else:
            macs = recorded["macs-written"].details["macs"]
        details: dict[str, Any] = {"macs": macs}
        names = ", ".join(macs)

        if vmi is None and "restart-requested" not in recorded:
            logger.info("backfill wrote MACs into stopped VM %s: %s", _context(ref), macs)
            return StepResult(outcome=Outcome.SUCCEEDED, message=f"wrote MACs of {names} into the VM spec", details=details)

        if "restart-requested" in recorded:
            old_uid = recorded["restart-requested"].details["vmi_uid"]
        else:
            old_uid = vmi["metadata"]["uid"]
            # Recorded before the call, so that a retry can tell that a restart may be under way already.
            self._backfill_event(ref, "restart-requested", {"vmi_uid": old_uid})
        if self._restart_needed(ref, old_uid):
            logger.info("backfill restarting VM %s to apply MACs %s", _context(ref), macs)
            self._restart(ref)
        details["restarted"] = True
        new_vmi = self._wait_until_running_again(ref, old_uid)
        self._backfill_event(ref, "running-ready", {"vmi_uid": new_vmi["metadata"]["uid"], "node": new_vmi.get("status", {}).get("nodeName")})
        return StepResult(
            outcome=Outcome.SUCCEEDED,
            message=f"wrote MACs of {names} into the VM spec, restarted the VM, and it is Running and Ready",
            details=details,
        )

    def _restart_needed(self, ref: OperationRef, old_uid: str) -> bool:
        """Return whether the VMI that had `old_uid` still runs with no stop or restart under way."""
        vmi = self.kube.get_vmi(ref.vm_namespace, ref.vm_name)
        if vmi is None or vmi["metadata"]["uid"] != old_uid or vmi["metadata"].get("deletionTimestamp"):
            return False
        vm = self.kube.get_vm(ref.vm_namespace, ref.vm_name) or {}
        return not (vm.get("status") or {}).get("stateChangeRequests")

    def _restart(self, ref: OperationRef) -> None:
        """Call the VM's restart subresource, trying again when the VM changed at the same moment (409)."""
        for attempt in range(1, MAX_CONFLICT_RETRIES + 1):
            try:
                self.kube.vm_action(ref.vm_namespace, ref.vm_name, "restart")
                return
            except Exception as error:  # noqa: BLE001 - classify() re-raises what it does not know
                if classify(error).code != 409 or attempt == MAX_CONFLICT_RETRIES:
                    raise
                logger.info("restart of %s conflicted (attempt %d), trying again", _context(ref), attempt)
                self._sleep({"waiting": "restart-conflict"})

    def _backfill_event(self, ref: OperationRef, outcome: str, details: dict[str, Any]) -> None:
        """Record one part of a backfill at once, so the ledger shows a restart even if the step later fails."""
        self._ledger.append_event(
            ref.operation_id, "backfill", outcome, details, idempotency_key=f"{ref.operation_id}:backfill:{outcome}"
        )

    def _wait_until_running_again(self, ref: OperationRef, old_uid: str) -> dict:
        """Wait for a new VMI to be Running and Ready; the activity's timeout bounds the wait."""
        while True:
            vmi = self.kube.get_vmi(ref.vm_namespace, ref.vm_name)
            if vmi and vmi["metadata"]["uid"] != old_uid and vmi_running_and_ready(vmi):
                return vmi
            self._sleep({"waiting": "vm-restart"})

    # Step 3: patch spec

    def _write_with_retry(self, ref: OperationRef, build: Callable[[dict], list[dict]]) -> dict:
        """Read the VM, build the patch against that version and send it; on 409 read again and rebuild."""
        for attempt in range(1, MAX_CONFLICT_RETRIES + 1):
            activity.heartbeat({"writing": "vm-spec", "attempt": attempt})
            vm = self.kube.get_vm(ref.vm_namespace, ref.vm_name)
            if vm is None:
                raise ApplicationError(
                    f"VM {ref.vm_namespace}/{ref.vm_name} was deleted during the operation",
                    type="VmGone",
                    non_retryable=True,
                )
            body = build(vm)
            if not body:
                return {"patch": [], "vm": vm}
            try:
                updated = self.kube.patch_vm(ref.vm_namespace, ref.vm_name, body)
                return {"patch": body, "vm": updated}
            except Exception as error:  # noqa: BLE001 - classify() re-raises what it does not know
                cluster_error = classify(error)
                if cluster_error.code != 409:
                    raise
                logger.info("VM changed under %s (attempt %d), reading it again: %s", _context(ref), attempt, cluster_error)
        raise ApplicationError(
            f"VM {ref.vm_namespace}/{ref.vm_name} changed {MAX_CONFLICT_RETRIES} times while nicflow was writing it",
            type="ClusterUnavailable",
        )

    @activity.defn(name="patch_spec")
    @cluster_call
    def patch_spec(self, ref: OperationRef) -> StepResult:
        """Apply the spec change once: a re-run after a crash finds it already there and sends nothing."""
        written: dict[str, Any] = {}

        def build(vm: dict) -> list[dict]:
            written.clear()
            try:
                if ref.kind == OperationKind.HOTPLUG:
                    state = patches.hotplug_state(vm, ref.interface, ref.network or "", ref.mac or "")
                    if state == "absent":
                        return patches.hotplug_patch(vm, ref.interface, ref.network or "", ref.mac or "")
                    written["already"] = state
                    return []
                found = patches.find_interface(vm, ref.interface)
                if found is None:
                    written["already"] = "removed"
                    return []
                if found[1].get("state") == "absent":
                    written["already"] = "absent"
                    return []
                return patches.mark_absent_patch(vm, ref.interface)
            except patches.PatchError as error:
                raise ApplicationError(str(error), type="PatchImpossible", non_retryable=True) from error

        outcome = self._write_with_retry(ref, build)
        vm = outcome["vm"]
        details = {
            "patch": outcome["patch"],
            "resourceVersion": vm["metadata"].get("resourceVersion"),
            "generation": vm["metadata"].get("generation"),
        }
        if written.get("already"):
            details["already_applied"] = written["already"]
            logger.info("patch found the change already applied %s (%s)", _context(ref), written["already"])
            return StepResult(outcome=Outcome.SUCCEEDED, message="the VM spec already contains the change", details=details)
        logger.info("patch applied %s generation=%s", _context(ref), details["generation"])
        change = f"added interface {ref.interface} on {ref.network}" if ref.kind == OperationKind.HOTPLUG else f"marked interface {ref.interface} absent"
        return StepResult(outcome=Outcome.SUCCEEDED, message=f"{change} in the VM spec", details=details)

    # Step 4: migrate

    def _vmi_shows_change(self, ref: OperationRef, vmi: dict) -> bool:
        entry = patches.vmi_has_interface(vmi, ref.interface)
        if ref.kind == OperationKind.HOTPLUG:
            return entry is not None
        return entry is None or entry.get("state") == "absent"

    def _change_done(self, ref: OperationRef, vmi: dict) -> bool:
        """Return whether the VMI already shows the end state, so that no migration is needed (a restart did it)."""
        status = patches.status_interface(vmi, ref.interface)
        if ref.kind == OperationKind.HOTPLUG:
            return "domain" in patches.info_sources(status)
        return status is None and patches.vmi_has_interface(vmi, ref.interface) is None

    @activity.defn(name="migrate")
    @cluster_call
    def migrate(self, request: MigrateInput) -> MigrateResult:
        """Wait for the VMI spec to show the change, then run (or adopt) a live migration to its end."""
        ref = request.ref
        own_name = migration_name(ref.operation_id, request.attempt)

        # A migration created before the VMI spec has the change would carry the old networks to the
        # target, and a second migration would be needed, so wait for the VM controller first.
        while True:
            vmi = self.kube.get_vmi(ref.vm_namespace, ref.vm_name)
            if vmi is None:
                raise ApplicationError(
                    f"VM {ref.vm_namespace}/{ref.vm_name} stopped during the operation",
                    type="VmStopped",
                    non_retryable=True,
                )
            if self._vmi_shows_change(ref, vmi):
                break
            self._sleep({"waiting": "vmi-spec"})

        migration = self._find_or_create_migration(ref, own_name, vmi)
        name = migration["metadata"]["name"]
        adopted = name != own_name
        if migration.get("_done_without_migration"):
            return MigrateResult(migration_name="", phase="NotNeeded", adopted=False, created_by="none")
        if adopted:
            logger.info("migrate adopted %s for %s", name, _context(ref))
        else:
            logger.info("migrate started %s for %s", name, _context(ref))

        source_uid = vmi["metadata"]["uid"]
        source_node = vmi.get("status", {}).get("nodeName")
        seen_phase = None
        while True:
            current = self.kube.get_migration(ref.vm_namespace, name)
            if current is None:
                raise ApplicationError(f"VMIM {name} was deleted while it ran", type="MigrationFailed", non_retryable=True)
            phase = migration_phase(current)
            if phase != seen_phase:
                logger.info("migration %s phase %s for %s", name, phase or "(unset)", _context(ref))
                seen_phase = phase
            if phase != "Succeeded" and self._restarted_with_change(ref, source_uid):
                return self._migration_overtaken(ref, current, adopted)
            if migration_finished(current):
                return self._migration_result(ref, current, adopted, source_uid, source_node)
            self._sleep({"migration": name, "phase": phase})

    def _restarted_with_change(self, ref: OperationRef, source_uid: str) -> bool:
        """Tell whether the VM restarted since the migration began and its new VMI already shows the change.

        A restarted VM starts with the VM spec as it is, so the change needs no migration any more.
        """
        vmi = self.kube.get_vmi(ref.vm_namespace, ref.vm_name)
        if vmi is None or vmi["metadata"]["uid"] == source_uid:
            return False
        return self._change_done(ref, vmi)

    def _migration_overtaken(self, ref: OperationRef, migration: dict, adopted: bool) -> MigrateResult:
        """Stop following a migration of a VMI that restarted with the change, aborting it when it is ours."""
        name = migration["metadata"]["name"]
        phase = migration_phase(migration)
        if not adopted and not migration_finished(migration):
            # The VMIM belongs to the VMI that was deleted; KubeVirt fails it, and the delete
            # makes sure that it never migrates the new VMI.
            self.kube.delete_migration(ref.vm_namespace, name)
        logger.info("VM restarted during migration %s (phase %s) and its new VMI has the change, for %s",
                    name, phase or "(unset)", _context(ref))
        return MigrateResult(migration_name=name, phase="NotNeeded", adopted=adopted, created_by=_creator(migration, adopted))

    def _find_or_create_migration(self, ref: OperationRef, own_name: str, vmi: dict) -> dict:
        existing = self.kube.list_migrations(ref.vm_namespace, ref.vm_name)
        for migration in existing:
            if migration["metadata"]["name"] == own_name:
                return migration
        in_flight = first_unfinished(existing)
        if in_flight is not None:
            # KubeVirt's workload updater (or Harvester) already migrates this VMI for the
            # same change; a second VMIM would be refused as an in-flight migration.
            return in_flight
        if self._change_done(ref, vmi):
            carried = self._migration_that_carried(existing, vmi)
            if carried is not None:
                logger.info("migration %s already carried the change for %s", carried["metadata"]["name"], _context(ref))
                return carried
            return {"metadata": {"name": ""}, "_done_without_migration": True}

        body = {
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachineInstanceMigration",
            "metadata": {
                "name": own_name,
                "namespace": ref.vm_namespace,
                "labels": {"nicflow.io/operation-id": ref.operation_id},
                "annotations": {"nicflow.io/interface": ref.interface, "nicflow.io/kind": str(ref.kind)},
            },
            "spec": {"vmiName": ref.vm_name},
        }
        try:
            return self.kube.create_migration(ref.vm_namespace, body)
        except Exception as error:  # noqa: BLE001 - classify() re-raises what it does not know
            cluster_error = classify(error)
            if cluster_error.code == 409:
                found = self.kube.get_migration(ref.vm_namespace, own_name)
                if found is not None:
                    return found
            if cluster_error.code == 400 and "in-flight migration" in cluster_error.message:
                # KubeVirt's workload updater started its own migration between the list and
                # the create; that migration carries the same change, so follow it.
                in_flight = first_unfinished(self.kube.list_migrations(ref.vm_namespace, ref.vm_name))
                if in_flight is not None:
                    logger.info("migration %s started first for %s; adopting it", in_flight["metadata"]["name"], _context(ref))
                    return in_flight
            raise

    def _migration_that_carried(self, migrations: list[dict], vmi: dict) -> dict | None:
        """Return the succeeded VMIM that brought the change to a VMI that already shows it, if any.

        A change reaches the domain only through a migration after the patch or through a restart.
        A restarted VMI has no migrationState, so a completed one names the migration, typically
        the workload updater's when it finished before this step looked.
        """
        state = vmi.get("status", {}).get("migrationState") or {}
        if not state.get("completed") or state.get("failed"):
            return None
        for migration in migrations:
            succeeded = migration_phase(migration) == "Succeeded"
            if succeeded and migration["metadata"].get("uid") == state.get("migrationUid"):
                return migration
        return None

    def _migration_result(self, ref: OperationRef, migration: dict, adopted: bool, source_uid: str,
                          source_node: str | None) -> MigrateResult:
        """Summarize a finished migration; after a failure, say whether a retry may run.

        A retry makes sense only while the same VMI still runs, Ready, on the node it was
        migrating from, and is still live migratable.
        """
        status = migration.get("status", {})
        state = status.get("migrationState") or {}
        vmi = self.kube.get_vmi(ref.vm_namespace, ref.vm_name)
        vmi_state = (vmi or {}).get("status", {}).get("migrationState") or {}
        if vmi_state.get("migrationUid") != migration["metadata"].get("uid"):
            vmi_state = {}  # the VMI reports another migration, or none
        failure_reason = None
        if status.get("phase") == "Failed":
            failure_reason = state.get("failureReason") or vmi_state.get("failureReason")
        phases = [
            {"phase": entry.get("phase", ""), "at": entry.get("phaseTransitionTimestamp", "")}
            for entry in status.get("phaseTransitionTimestamps") or []
        ]
        result = MigrateResult(
            migration_name=migration["metadata"]["name"],
            phase=status.get("phase", ""),
            adopted=adopted,
            created_by=_creator(migration, adopted),
            source_node=state.get("sourceNode") or vmi_state.get("sourceNode") or source_node,
            target_node=state.get("targetNode") or vmi_state.get("targetNode"),
            phases=phases,
            failure_reason=failure_reason,
            vm_still_on_source=(
                vmi is not None
                and vmi_running_and_ready(vmi)
                and vmi["metadata"]["uid"] == source_uid
                and vmi.get("status", {}).get("nodeName") == source_node
            ),
            migratable=vmi is not None and _migratable_besides_migrations(vmi),
        )
        logger.info("migration %s ended %s for %s", result.migration_name, result.phase, _context(ref))
        return result

    # Step 5: verify

    @activity.defn(name="verify")
    @cluster_call
    def verify(self, request: VerifyInput) -> VerifyResult:
        """Check the VMI status for the interface: attached with its MAC, or gone after an unplug."""
        ref = request.ref
        deadline = time.monotonic() + request.timeout_seconds
        while True:
            vmi = self.kube.get_vmi(ref.vm_namespace, ref.vm_name)
            if vmi is None:
                raise ApplicationError(
                    f"VM {ref.vm_namespace}/{ref.vm_name} has no VMI: it stopped during verification",
                    type="VmStopped",
                    non_retryable=True,
                )
            outcome = self._check_guest(ref, vmi)
            if outcome is not None:
                return outcome
            if time.monotonic() >= deadline:
                return self._verify_timed_out(ref, vmi, request.timeout_seconds)
            self._sleep({"waiting": "guest-interface"})

    def _check_guest(self, ref: OperationRef, vmi: dict) -> VerifyResult | None:
        entry = patches.status_interface(vmi, ref.interface)
        sources = patches.info_sources(entry)
        if ref.kind == OperationKind.UNPLUG:
            vm = self.kube.get_vm(ref.vm_namespace, ref.vm_name)
            in_vm = vm is not None and patches.find_interface(vm, ref.interface) is not None
            if entry is None and patches.vmi_has_interface(vmi, ref.interface) is None and not in_vm:
                return VerifyResult(verified=True, message=f"interface {ref.interface} is gone from the VMI status, the VMI spec and the VM spec")
            return None

        if entry is None or "domain" not in sources:
            return None
        if (entry.get("mac") or "").lower() != (ref.mac or "").lower():
            raise ApplicationError(
                f"interface {ref.interface} is attached with MAC {entry.get('mac')} instead of {ref.mac}",
                type="VerifyMismatch",
                non_retryable=True,
            )
        if not agent_connected(vmi):
            return None  # the timeout decides: without an agent the domain entry is all there is
        if "guest-agent" in sources and entry.get("interfaceName"):
            return VerifyResult(
                verified=True,
                message=f"the guest sees interface {ref.interface} as {entry['interfaceName']} with MAC {entry.get('mac')}",
                guest_interface_name=entry["interfaceName"],
                info_source=entry.get("infoSource"),
                details={"status": entry},
            )
        return None

    def _verify_timed_out(self, ref: OperationRef, vmi: dict, timeout: float) -> VerifyResult:
        entry = patches.status_interface(vmi, ref.interface)
        sources = patches.info_sources(entry)
        if ref.kind == OperationKind.HOTPLUG and "domain" in sources and not agent_connected(vmi):
            warning = (
                f"interface {ref.interface} is attached to the domain with MAC {entry.get('mac')}, but the guest agent "
                "is not connected, so nicflow cannot confirm that the guest sees it"
            )
            logger.warning("verify %s: %s", _context(ref), warning)
            return VerifyResult(verified=True, message=warning, info_source=entry.get("infoSource"), warning=warning, details={"status": entry})
        state = f"status entry {entry}" if entry else "no status entry"
        raise ApplicationError(
            f"interface {ref.interface} not verified in the guest within {timeout:.0f} s ({state})",
            {"status": entry},
            type="VerifyTimeout",
            non_retryable=True,
        )

    # Undo

    @activity.defn(name="undo")
    @cluster_call
    def undo(self, request: UndoInput) -> StepResult:
        """Put the VM spec back as it was before the operation and wait until KubeVirt has caught up."""
        ref = request.ref
        aborted = self._abort_own_migrations(ref)
        result = self._undo_hotplug(ref) if ref.kind == OperationKind.HOTPLUG else self._undo_unplug(ref, request)
        if aborted:
            result.details["aborted_migrations"] = aborted
        return result

    def _abort_own_migrations(self, ref: OperationRef) -> list[str]:
        """Abort (delete) this operation's unfinished VMIMs and wait until KubeVirt has let go of them."""
        aborted = []
        for migration in self.kube.list_migrations(ref.vm_namespace, ref.vm_name):
            labels = migration["metadata"].get("labels") or {}
            if labels.get("nicflow.io/operation-id") != ref.operation_id:
                continue
            if migration_finished(migration):
                continue
            name = migration["metadata"]["name"]
            self.kube.delete_migration(ref.vm_namespace, name)
            aborted.append(name)
            logger.info("undo aborted migration %s for %s", name, _context(ref))
        for name in aborted:
            while True:
                current = self.kube.get_migration(ref.vm_namespace, name)
                if current is None or migration_finished(current):
                    break
                self._sleep({"waiting": "migration-abort", "migration": name})
        return aborted

    def _undo_hotplug(self, ref: OperationRef) -> StepResult:
        def build(vm: dict) -> list[dict]:
            found = patches.find_interface(vm, ref.interface)
            if found is None or found[1].get("state") == "absent":
                return []
            return patches.mark_absent_patch(vm, ref.interface)

        written = self._write_with_retry(ref, build)
        migration = None
        while True:
            vm = self.kube.get_vm(ref.vm_namespace, ref.vm_name)
            if vm is None or patches.find_interface(vm, ref.interface) is None:
                break
            vmi = self.kube.get_vmi(ref.vm_namespace, ref.vm_name)
            entry = patches.status_interface(vmi, ref.interface) if vmi else None
            if entry is not None and "domain" not in patches.info_sources(entry) and migration is None:
                # The pod carries the network since a migration, so only another migration drops it.
                migration = self._find_or_create_migration(ref, migration_name(ref.operation_id, 99), vmi)
            self._sleep({"waiting": "undo-cleanup"})
        self._ledger.release_macs(ref.operation_id)
        details = {"patch": written["patch"], "migration": (migration or {}).get("metadata", {}).get("name")}
        logger.info("undo removed interface %s", _context(ref))
        return StepResult(outcome=Outcome.UNDONE, message=f"interface {ref.interface} removed again; the VM spec is as before", details=details)

    def _undo_unplug(self, ref: OperationRef, request: UndoInput) -> StepResult:
        vm = self.kube.get_vm(ref.vm_namespace, ref.vm_name)
        if vm is not None and patches.find_interface(vm, ref.interface) is not None:
            written = self._write_with_retry(ref, lambda current: patches.clear_absent_patch(current, ref.interface))
            logger.info("undo cleared state absent %s", _context(ref))
            return StepResult(outcome=Outcome.UNDONE, message=f"cleared state absent on interface {ref.interface}", details={"patch": written["patch"]})
        if request.interface_spec is None or request.network_spec is None:
            raise ApplicationError("the interface is gone and its spec was not recorded, so it cannot be restored", type="UndoImpossible", non_retryable=True)
        written = self._write_with_retry(
            ref,
            lambda current: []
            if patches.find_interface(current, ref.interface)
            else patches.readd_interface_patch(current, request.interface_spec or {}, request.network_spec or {}),
        )
        logger.info("undo re-added interface %s", _context(ref))
        return StepResult(
            outcome=Outcome.UNDONE,
            message=f"re-added interface {ref.interface} to the VM spec; it returns to the guest after the next migration",
            details={"patch": written["patch"]},
        )
