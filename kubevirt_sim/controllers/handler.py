"""virt-handler: live attach and detach of interfaces in the domain, and the guest agent's reports."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from kubevirt_sim import naming
from kubevirt_sim.controllers import handlersync, network
from kubevirt_sim.controllers.objects import condition_is_true, find_by_name, is_deleting, spec_interfaces

if TYPE_CHECKING:
    from kubevirt_sim.controllers.manager import ControllerManager

logger = logging.getLogger(__name__)

ACTOR = "virt-handler"

# Simulated seconds between a live attach and the guest agent reporting the new interface.
AGENT_REPORT_SECONDS = 2.0


class VirtHandler:
    """Apply the domain side of hot-plug and unplug for one running VMI."""

    def __init__(self, manager: "ControllerManager") -> None:
        self.manager = manager
        self.store = manager.store
        self.faults = manager.faults
        # (VMI uid, interface) pairs whose failed attach was already logged, to log each once.
        self._attach_failures_logged: set[tuple[str, str]] = set()

    def reconcile(self, namespace: str, name: str) -> None:
        vmi = self.store.try_get("virtualmachineinstances", namespace, name)
        if vmi is None or is_deleting(vmi) or vmi.get("status", {}).get("phase") != "Running":
            return
        runtime = self.manager.vmi_runtime(vmi)
        uid = runtime.uid
        exhausted = self.faults.root_ports_exhausted(namespace, name)
        agent_fault = self.faults.agent_disconnected(namespace, name)
        clock = self.manager.clock
        detached: list[str] = []
        attached: list[str] = []
        blocked: list[str] = []
        reported: list[str] = []
        waits: list[float] = []

        def edit(current: dict) -> bool:
            detached[:] = handlersync.detach_absent(current)
            attached.clear()
            blocked.clear()
            reported.clear()
            waits.clear()
            now = clock.monotonic()

            for interface_name in handlersync.attach_candidates(current):
                free = 0 if exhausted else network.free_root_ports(current, runtime.start_interfaces, runtime.reserved_ports)
                if free <= 0:
                    blocked.append(interface_name)
                    continue
                interface = find_by_name(spec_interfaces(current.get("spec", {})), interface_name) or {}
                mac = interface.get("macAddress") or naming.generate_mac()
                handlersync.attach_interface(current, interface_name, mac)
                runtime.attached_at[interface_name] = now
                attached.append(interface_name)

            # NOTE: entries that already carry guest-agent data keep it while the agent is
            # disconnected; whether virt-handler drops it then was not checked.
            if condition_is_true(current, "AgentConnected") and not agent_fault:
                for interface_name in handlersync.agent_report_candidates(current):
                    if self.faults.hidden_from_agent(namespace, name, interface_name):
                        continue
                    since = runtime.attached_at.get(interface_name)
                    if since is not None and now - since < AGENT_REPORT_SECONDS:
                        waits.append(AGENT_REPORT_SECONDS - (now - since))
                        continue
                    if handlersync.report_guest_agent(current, interface_name):
                        reported.append(interface_name)

            return bool(detached or attached or reported)

        self.store.mutate("virtualmachineinstances", namespace, name, edit, actor=ACTOR)

        if detached:
            logger.info("VMI %s/%s: detached interfaces %s from the domain", namespace, name, detached)
        if attached:
            logger.info("VMI %s/%s: attached interfaces %s to the domain", namespace, name, attached)
        if reported:
            logger.info("VMI %s/%s: guest agent reports interfaces %s", namespace, name, reported)
        for interface_name in blocked:
            if (uid, interface_name) not in self._attach_failures_logged:
                self._attach_failures_logged.add((uid, interface_name))
                logger.warning("VMI %s/%s: libvirt failed to attach interface %s: no free PCIe root port",
                               namespace, name, interface_name)
        if waits:
            self.manager.enqueue_after(min(waits) + 0.01, ("vmi", namespace, name))
