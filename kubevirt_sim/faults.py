"""Cluster faults that tests inject into the simulated KubeVirt and Harvester controllers.

Each public method takes plain JSON values, so the control endpoint (`POST /sim/faults` with
`{"kind": "<method>", "args": {...}}`) can call it directly. The faults only record state; the
controllers read it on their next reconcile and are woken through the listeners.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)

# Phases a migration fault may name, in the order the migration controller drives them.
MIGRATION_PHASES = ("Pending", "Scheduling", "Scheduled", "PreparingTarget", "TargetReady", "Running")


@dataclass(frozen=True)
class MigrationFault:
    """A migration fault: fail or stall every migration of the matching VMIs when it reaches `phase`."""

    phase: str
    vmi: str | None


def vmi_matches(selector: str | None, namespace: str, name: str) -> bool:
    """Tell whether a VMI selector ('name', 'namespace/name' or None for all) selects a VMI."""
    if selector is None:
        return True
    if "/" in selector:
        return selector == f"{namespace}/{name}"
    return selector == name


class ClusterFaults:
    """The set of cluster faults in force, shared by the control endpoint and the controllers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []
        self._failures: list[MigrationFault] = []
        self._stalls: list[MigrationFault] = []
        self._targets_unschedulable = False
        self._agents_disconnected: set[str] = set()
        self._hidden_from_agent: set[tuple[str, str]] = set()
        self._ports_exhausted: set[str] = set()
        self._node_ready: dict[str, bool] = {}

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call `callback` (no arguments, outside the lock) after every change of the faults."""
        with self._lock:
            self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[], None]) -> None:
        with self._lock:
            if callback in self._listeners:
                self._listeners.remove(callback)

    # Faults set by tests.

    def fail_migration(self, phase: str, vmi: str | None = None) -> None:
        """Fail every migration of the selected VMIs (all when `vmi` is None) when it reaches `phase`."""
        self._check_phase(phase)
        with self._lock:
            self._failures.append(MigrationFault(phase, vmi))
        logger.info("fault set: migrations of %s fail in phase %s", vmi or "every VMI", phase)
        self._notify()

    def stall_migration(self, phase: str, vmi: str | None = None) -> None:
        """Hold every migration of the selected VMIs in `phase` until the fault is cleared."""
        self._check_phase(phase)
        with self._lock:
            self._stalls.append(MigrationFault(phase, vmi))
        logger.info("fault set: migrations of %s stall in phase %s", vmi or "every VMI", phase)
        self._notify()

    def make_targets_unschedulable(self, on: bool = True) -> None:
        """Make every migration target pod unschedulable, so migrations stay in Scheduling."""
        with self._lock:
            self._targets_unschedulable = bool(on)
        logger.info("fault %s: migration targets unschedulable", "set" if on else "cleared")
        self._notify()

    def disconnect_agent(self, vmi: str, on: bool = True) -> None:
        """Disconnect the guest agent of a VMI ('name' or 'namespace/name'), or reconnect it.

        The VMI controller then sets the condition AgentConnected to False (True again when
        reconnected), and virt-handler reports no guest-agent data for newly attached interfaces.
        """
        with self._lock:
            if on:
                self._agents_disconnected.add(vmi)
            else:
                self._agents_disconnected.discard(vmi)
        logger.info("fault %s: guest agent of VMI %s disconnected", "set" if on else "cleared", vmi)
        self._notify()

    def hide_from_agent(self, vmi: str, interface: str, on: bool = True) -> None:
        """Keep a VMI's ('name' or 'namespace/name') guest agent connected but silent about one interface.

        virt-handler then never adds guest-agent data or a guest interface name to that
        interface's status entry, as when the guest has no driver for the device.
        """
        with self._lock:
            if on:
                self._hidden_from_agent.add((vmi, interface))
            else:
                self._hidden_from_agent.discard((vmi, interface))
        logger.info("fault %s: guest agent of VMI %s does not report interface %s", "set" if on else "cleared", vmi, interface)
        self._notify()

    def exhaust_root_ports(self, vmi: str, on: bool = True) -> None:
        """Leave a VMI ('name' or 'namespace/name') no free PCIe root port, so attaches stall."""
        with self._lock:
            if on:
                self._ports_exhausted.add(vmi)
            else:
                self._ports_exhausted.discard(vmi)
        logger.info("fault %s: PCIe root ports of VMI %s exhausted", "set" if on else "cleared", vmi)
        self._notify()

    def set_node_ready(self, node: str, ready: bool) -> None:
        """Set a node's Ready condition; a node that is not Ready is never a migration target."""
        with self._lock:
            self._node_ready[node] = bool(ready)
        logger.info("fault set: node %s Ready=%s", node, bool(ready))
        self._notify()

    def clear(self) -> None:
        """Remove every cluster fault; nodes made not Ready become Ready again."""
        with self._lock:
            self._failures.clear()
            self._stalls.clear()
            self._targets_unschedulable = False
            self._agents_disconnected.clear()
            self._hidden_from_agent.clear()
            self._ports_exhausted.clear()
            self._node_ready = {node: True for node in self._node_ready}
        logger.info("cluster faults cleared")
        self._notify()

    # Queries made by the controllers.

    def migration_fails_in(self, phase: str, namespace: str, vmi: str) -> bool:
        with self._lock:
            return any(f.phase == phase and vmi_matches(f.vmi, namespace, vmi) for f in self._failures)

    def migration_stalls_in(self, phase: str, namespace: str, vmi: str) -> bool:
        with self._lock:
            return any(f.phase == phase and vmi_matches(f.vmi, namespace, vmi) for f in self._stalls)

    @property
    def targets_unschedulable(self) -> bool:
        with self._lock:
            return self._targets_unschedulable

    def agent_disconnected(self, namespace: str, vmi: str) -> bool:
        with self._lock:
            return any(vmi_matches(s, namespace, vmi) for s in self._agents_disconnected)

    def hidden_from_agent(self, namespace: str, vmi: str, interface: str) -> bool:
        with self._lock:
            return any(
                hidden == interface and vmi_matches(selector, namespace, vmi) for selector, hidden in self._hidden_from_agent
            )

    def root_ports_exhausted(self, namespace: str, vmi: str) -> bool:
        with self._lock:
            return any(vmi_matches(s, namespace, vmi) for s in self._ports_exhausted)

    def node_ready_override(self, node: str) -> bool | None:
        """Return the Ready value a fault forces on `node`, or None when no fault ever named it."""
        with self._lock:
            return self._node_ready.get(node)

    def managed_nodes(self) -> list[str]:
        """Return the nodes whose Ready condition a fault set (kept after clear() to restore them)."""
        with self._lock:
            return list(self._node_ready)

    def snapshot(self) -> dict:
        """Return the faults in force as a JSON-able dict."""
        with self._lock:
            return {
                "fail_migration": [{"phase": f.phase, "vmi": f.vmi} for f in self._failures],
                "stall_migration": [{"phase": f.phase, "vmi": f.vmi} for f in self._stalls],
                "targets_unschedulable": self._targets_unschedulable,
                "agents_disconnected": sorted(self._agents_disconnected),
                "hidden_from_agent": [
                    {"vmi": selector, "interface": hidden} for selector, hidden in sorted(self._hidden_from_agent)
                ],
                "root_ports_exhausted": sorted(self._ports_exhausted),
                "node_ready": dict(self._node_ready),
            }

    @staticmethod
    def _check_phase(phase: str) -> None:
        if phase not in MIGRATION_PHASES:
            raise ValueError(f"invalid migration phase {phase!r}: expected one of {', '.join(MIGRATION_PHASES)}")

    def _notify(self) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for callback in listeners:
            callback()
