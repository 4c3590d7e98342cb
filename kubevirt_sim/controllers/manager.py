"""The controller manager: one work queue fed by store events and timers on the simulated clock."""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kubevirt_sim.errors import ApiError

if TYPE_CHECKING:
    from kubevirt_sim.simulator import Simulator

logger = logging.getLogger(__name__)

# A work item: (kind, namespace, name), e.g. ("vmi", "default", "web-01") or ("workload", "", "").
Key = tuple[str, str, str]

# Real-time back-off after a reconcile raised: doubles per consecutive failure of the same key.
_RETRY_FIRST_SECONDS = 0.05
_RETRY_MAX_SECONDS = 5.0


@dataclass
class VMIRuntime:
    """State that virt-controller and virt-handler keep about one VMI beyond its object.

    The start template is the VM template when the VMI started, which KubeVirt keeps in a
    ControllerRevision. The root-port counts describe the domain defined at start.
    """

    uid: str
    start_template: dict | None = None
    start_interfaces: int = 0
    reserved_ports: int = 0
    scheduling_since: float | None = None
    attached_at: dict[str, float] = field(default_factory=dict)


def delete_if_present(store, plural: str, namespace: str, name: str, actor: str) -> bool:
    """Delete an object; False when it was already gone (a 404 is no error for a controller)."""
    try:
        store.delete(plural, namespace, name, actor=actor)
    except ApiError as error:
        if error.code != 404:
            raise
        return False
    return True


class ControllerManager:
    """Run the simulated controllers on one worker thread until `stop()`.

    Store events and fault changes enqueue keys; a reconcile that needs to wake up later
    schedules its key on the simulated clock with `enqueue_after`.
    """

    def __init__(self, sim: "Simulator") -> None:
        from kubevirt_sim.controllers import handler, harvester, migration, node, vm, vmi, workload

        self.sim = sim
        self.store = sim.store
        self.clock = sim.clock
        self.faults = sim.faults
        self.runtime: dict[str, VMIRuntime] = {}

        self._condition = threading.Condition()
        self._queue: deque[Key] = deque()
        self._queued: set[Key] = set()
        self._timers: list[tuple[float, int, Key]] = []
        self._sequence = itertools.count()
        self._failures: dict[Key, int] = {}
        self._stopped = False
        self._thread: threading.Thread | None = None

        self.vm = vm.VMController(self)
        self.vmi = vmi.VMIController(self)
        self.handler = handler.VirtHandler(self)
        self.migration = migration.MigrationController(self)
        self.workload = workload.WorkloadUpdater(self)
        self.harvester = harvester.HarvesterController(self)
        self.node = node.NodeController(self)
        self._handlers: dict[str, Callable[[str, str], None]] = {
            "vm": self.vm.reconcile,
            "vmi": self.vmi.reconcile,
            "vmim": self.migration.reconcile,
            "gc": self.migration.collect_garbage,
            "workload": lambda namespace, name: self.workload.run_pass(),
            "node": self.node.reconcile,
        }

    # Life cycle.

    def start(self) -> None:
        """Remember the running VMIs, queue every object once and start the worker thread."""
        vmis, _ = self.store.list("virtualmachineinstances")
        for vmi in vmis:
            self.vmi.remember_loaded(vmi)

        self.store.subscribe(self._on_store_event)
        self.faults.add_listener(self._on_faults_changed)
        for plural, kind in (("virtualmachines", "vm"), ("virtualmachineinstances", "vmi"),
                             ("virtualmachineinstancemigrations", "vmim"), ("nodes", "node")):
            objects, _ = self.store.list(plural)
            for obj in objects:
                metadata = obj["metadata"]
                self.enqueue((kind, metadata.get("namespace", ""), metadata["name"]))
        self.enqueue(("workload", "", ""))

        self._thread = threading.Thread(target=self._run, name="kubevirt-sim-controllers", daemon=True)
        self._thread.start()
        logger.info("controllers started")

    def stop(self) -> None:
        """Stop the worker thread after its current reconcile; queued work is dropped."""
        with self._condition:
            if self._stopped:
                return
            self._stopped = True
            self._condition.notify_all()
        self.faults.remove_listener(self._on_faults_changed)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        logger.info("controllers stopped")

    # Queueing.

    def enqueue(self, key: Key) -> None:
        with self._condition:
            if self._stopped or key in self._queued:
                return
            self._queued.add(key)
            self._queue.append(key)
            self._condition.notify()

    def enqueue_after(self, sim_seconds: float, key: Key) -> None:
        """Queue `key` once `sim_seconds` of simulated time have passed."""
        self._enqueue_at(time.monotonic() + self.clock.real_seconds(max(sim_seconds, 0.0)), key)

    def _enqueue_at(self, deadline: float, key: Key) -> None:
        with self._condition:
            if self._stopped:
                return
            heapq.heappush(self._timers, (deadline, next(self._sequence), key))
            self._condition.notify()

    def vmi_runtime(self, vmi: dict) -> VMIRuntime:
        uid = vmi["metadata"]["uid"]
        runtime = self.runtime.get(uid)
        if runtime is None:
            runtime = self.vmi.remember_loaded(vmi)
        return runtime

    # Event sources.

    def _on_store_event(self, event_type: str, plural: str, old: dict | None, new: dict | None) -> None:
        obj = new if new is not None else old
        if obj is None or self._stopped:
            return
        metadata = obj.get("metadata", {})
        namespace, name = metadata.get("namespace", ""), metadata.get("name", "")

        if plural == "virtualmachines":
            self.enqueue(("vm", namespace, name))
            self.enqueue(("vmi", namespace, name))
        elif plural == "virtualmachineinstances":
            self.enqueue(("vmi", namespace, name))
            self.enqueue(("vm", namespace, name))
            self.enqueue(("workload", "", ""))
            for migration in self.migration.unfinished_for(namespace, name):
                self.enqueue(("vmim", namespace, migration))
        elif plural == "virtualmachineinstancemigrations":
            self.enqueue(("vmim", namespace, name))
            vmi_name = obj.get("spec", {}).get("vmiName", "")
            if vmi_name:
                self.enqueue(("vmi", namespace, vmi_name))
                self.enqueue(("gc", namespace, vmi_name))
            self.enqueue(("workload", "", ""))
            if event_type != "ADDED":
                # A finished migration frees a parallel-migration slot for the ones waiting.
                for waiting_namespace, waiting in self.migration.waiting():
                    self.enqueue(("vmim", waiting_namespace, waiting))
        elif plural == "pods":
            vmi_name = metadata.get("labels", {}).get("vm.kubevirt.io/name")
            if vmi_name:
                self.enqueue(("vmi", namespace, vmi_name))
        elif plural == "nodes":
            self.enqueue(("node", "", name))
            for waiting_namespace, waiting in self.migration.waiting():
                self.enqueue(("vmim", waiting_namespace, waiting))
            for vmi_namespace, vmi_name in self.vmi.scheduling():
                self.enqueue(("vmi", vmi_namespace, vmi_name))
        elif plural == "kubevirts":
            self.enqueue(("workload", "", ""))
            self._enqueue_all("virtualmachineinstances", "vmi")

    def _on_faults_changed(self) -> None:
        self._enqueue_all("virtualmachineinstances", "vmi")
        self._enqueue_all("virtualmachineinstancemigrations", "vmim")
        self._enqueue_all("nodes", "node")
        for node_name in self.faults.managed_nodes():
            self.enqueue(("node", "", node_name))

    def _enqueue_all(self, plural: str, kind: str) -> None:
        objects, _ = self.store.list(plural)
        for obj in objects:
            self.enqueue((kind, obj["metadata"].get("namespace", ""), obj["metadata"]["name"]))

    # Worker.

    def _next_key(self) -> Key | None:
        with self._condition:
            while not self._stopped:
                now = time.monotonic()
                while self._timers and self._timers[0][0] <= now:
                    _, _, key = heapq.heappop(self._timers)
                    if key not in self._queued:
                        self._queued.add(key)
                        self._queue.append(key)
                if self._queue:
                    key = self._queue.popleft()
                    self._queued.discard(key)
                    return key
                timeout = self._timers[0][0] - now if self._timers else None
                self._condition.wait(timeout)
            return None

    def _run(self) -> None:
        while True:
            key = self._next_key()
            if key is None:
                return
            kind, namespace, name = key
            try:
                self._handlers[kind](namespace, name)
            except ApiError as error:
                self._retry(key, f"{error.code} {error.reason}: {error.message}")
            except Exception:
                logger.exception("reconcile of %s %s/%s failed", kind, namespace, name)
                self._retry(key, "unexpected error")
            else:
                self._failures.pop(key, None)

    def _retry(self, key: Key, cause: str) -> None:
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        delay = min(_RETRY_FIRST_SECONDS * 2 ** (failures - 1), _RETRY_MAX_SECONDS)
        log = logger.warning if failures in (1, 5, 10) or failures % 50 == 0 else logger.debug
        log("reconcile of %s %s/%s failed (attempt %d), retrying in %.2f s: %s", key[0], key[1], key[2], failures, delay, cause)
        self._enqueue_at(time.monotonic() + delay, key)
