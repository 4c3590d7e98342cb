"""Node Ready conditions forced by cluster faults."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from kubevirt_sim.controllers.objects import set_condition

if TYPE_CHECKING:
    from kubevirt_sim.controllers.manager import ControllerManager

logger = logging.getLogger(__name__)

ACTOR = "node-lifecycle-controller"


class NodeController:
    """Write the Ready condition that `ClusterFaults.set_node_ready` forces on a node."""

    def __init__(self, manager: "ControllerManager") -> None:
        self.manager = manager

    def reconcile(self, namespace: str, name: str) -> None:
        ready = self.manager.faults.node_ready_override(name)
        if ready is None:
            return
        status = "True" if ready else "False"
        reason = "KubeletReady" if ready else "NodeStatusUnknown"
        message = "kubelet is posting ready status" if ready else "Kubelet stopped posting node status."
        timestamp = self.manager.clock.timestamp()

        def edit(current: dict) -> bool:
            return set_condition(current, "Ready", status, timestamp, reason, message)

        if self.manager.store.mutate("nodes", "", name, edit, actor=ACTOR, subresource="status", admit=False) is None:
            logger.warning("node %s named by a fault does not exist", name)
