"""Simulated KubeVirt and Harvester controllers.

`start_controllers(sim)` subscribes to the simulator's store and runs, on one worker thread:
virt-controller (VM, VMI, migration controllers and the workload updater), virt-handler,
Harvester's VM and migration controllers, and the node Ready faults. They write through
`sim.store` as 'virt-controller', 'virt-handler' and 'harvester', and read `sim.faults`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kubevirt_sim.controllers.manager import ControllerManager

if TYPE_CHECKING:
    from kubevirt_sim.simulator import Simulator

__all__ = ["ControllerManager", "start_controllers"]


def start_controllers(sim: "Simulator") -> ControllerManager:
    """Start the controllers for `sim` and return their manager; call `.stop()` to end them."""
    manager = ControllerManager(sim)
    manager.start()
    return manager
