"""virt-controller's VM controller: start and stop, VM-to-VMI network sync, clean-up, VM status."""

from __future__ import annotations

import copy
import logging
from typing import TYPE_CHECKING

from kubevirt_sim.controllers import vmsync
from kubevirt_sim.controllers.manager import VMIRuntime, delete_if_present
from kubevirt_sim.controllers.objects import (
    is_absent,
    is_deleting,
    remove_condition,
    set_condition,
    spec_interfaces,
    spec_networks,
)

if TYPE_CHECKING:
    from kubevirt_sim.controllers.manager import ControllerManager

logger = logging.getLogger(__name__)

ACTOR = "virt-controller"
VM_GENERATION_ANNOTATION = "kubevirt.io/vm-generation"
VMI_CONTROLLER_FINALIZER = "kubevirt.io/virtualMachineControllerFinalize"


def _template_spec(vm: dict) -> dict:
    return vm.get("spec", {}).get("template", {}).get("spec", {})


def _owned_by(vmi: dict, vm: dict | None) -> bool:
    references = vmi.get("metadata", {}).get("ownerReferences") or []
    if vm is None:
        return any(ref.get("kind") == "VirtualMachine" for ref in references)
    return any(ref.get("kind") == "VirtualMachine" and ref.get("uid") == vm["metadata"].get("uid") for ref in references)


class VMController:
    """Reconcile one VM with its VMI, as KubeVirt 1.6's VM controller does under LiveUpdate."""

    def __init__(self, manager: "ControllerManager") -> None:
        self.manager = manager
        self.store = manager.store

    def reconcile(self, namespace: str, name: str) -> None:
        vm = self.store.try_get("virtualmachines", namespace, name)
        vmi = self.store.try_get("virtualmachineinstances", namespace, name)

        if vm is None or is_deleting(vm):
            if vmi is not None and _owned_by(vmi, vm) and not is_deleting(vmi):
                logger.info("deleting VMI %s/%s because its VM is gone", namespace, name)
                delete_if_present(self.store, "virtualmachineinstances", namespace, name, ACTOR)
            return

        if self._handle_state_change_request(vm, vmi):
            self._update_status(namespace, name)
            return

        strategy = vmsync.run_strategy(vm)
        if vmi is None:
            self._clear_absent(namespace, name, None)
            if strategy in vmsync.RUNNING_STRATEGIES:
                self._start(namespace, name)
            self._update_status(namespace, name)
            return

        if self._should_stop(vmi, strategy):
            if not is_deleting(vmi):
                logger.info("stopping VM %s/%s (runStrategy %s, VMI phase %s)", namespace, name, strategy,
                            vmi.get("status", {}).get("phase"))
                delete_if_present(self.store, "virtualmachineinstances", namespace, name, ACTOR)
        elif not is_deleting(vmi):
            self._sync_vmi(vm, vmi)
            self._clear_absent(namespace, name, self.store.try_get("virtualmachineinstances", namespace, name))

        self._update_status(namespace, name)

    # Start and stop.

    def _handle_state_change_request(self, vm: dict, vmi: dict | None) -> bool:
        """Carry out the first of status.stateChangeRequests (virt-api's start, stop and restart).

        A Stop deletes the VMI it names and stays queued until that VMI is gone; a Start creates
        the VMI once none exists. Returns True while a request is being handled.
        """
        requests = vm.get("status", {}).get("stateChangeRequests") or []
        if not requests:
            return False
        namespace, name = vm["metadata"]["namespace"], vm["metadata"]["name"]
        request = requests[0]
        action = request.get("action")

        if action == "Stop" and vmi is not None and request.get("uid") in (None, vmi["metadata"].get("uid")):
            if not is_deleting(vmi):
                logger.info("VM %s/%s: stop requested, deleting VMI uid %s", namespace, name, vmi["metadata"].get("uid"))
                delete_if_present(self.store, "virtualmachineinstances", namespace, name, ACTOR)
            return True
        if action == "Start" and vmi is not None:
            return True
        if action == "Start":
            self._clear_absent(namespace, name, None)
            self._start(namespace, name)

        def pop_request(current: dict) -> bool:
            pending = current.get("status", {}).get("stateChangeRequests") or []
            if not pending or pending[0] != request:
                return False
            remaining = pending[1:]
            if remaining:
                current["status"]["stateChangeRequests"] = remaining
            else:
                del current["status"]["stateChangeRequests"]
            return True

        self.store.mutate("virtualmachines", namespace, name, pop_request, actor=ACTOR, subresource="status", admit=False)
        return True

    @staticmethod
    def _should_stop(vmi: dict, strategy: str) -> bool:
        phase = vmi.get("status", {}).get("phase", "")
        if strategy == "Halted":
            return True
        if phase == "Succeeded":
            return strategy == "Always"
        if phase == "Failed":
            return strategy in vmsync.RUNNING_STRATEGIES
        return False

    def _start(self, namespace: str, name: str) -> None:
        """Create the VMI from the VM template; the VMI controller then schedules and boots it."""
        vm = self.store.get("virtualmachines", namespace, name)
        template = vm.get("spec", {}).get("template", {})
        spec = copy.deepcopy(template.get("spec", {}))
        absent = {i.get("name") for i in spec_interfaces(spec) if is_absent(i)}
        if absent:
            spec["domain"]["devices"]["interfaces"] = [i for i in spec_interfaces(spec) if i.get("name") not in absent]
            spec["networks"] = [n for n in spec_networks(spec) if n.get("name") not in absent]

        annotations = dict(template.get("metadata", {}).get("annotations") or {})
        annotations[VM_GENERATION_ANNOTATION] = str(vm["metadata"].get("generation", 1))
        vmi = {
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachineInstance",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": dict(template.get("metadata", {}).get("labels") or {}),
                "annotations": annotations,
                "ownerReferences": [{
                    "apiVersion": "kubevirt.io/v1",
                    "kind": "VirtualMachine",
                    "name": name,
                    "uid": vm["metadata"]["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }],
                "finalizers": [VMI_CONTROLLER_FINALIZER],
            },
            "spec": spec,
            "status": {"phase": "Pending"},
        }
        created = self.store.create("virtualmachineinstances", namespace, vmi, actor=ACTOR)
        self.manager.runtime[created["metadata"]["uid"]] = VMIRuntime(
            uid=created["metadata"]["uid"], start_template=copy.deepcopy(template.get("spec", {}))
        )
        logger.info("started VM %s/%s: created VMI uid %s", namespace, name, created["metadata"]["uid"])

        def clear_restart_required(current: dict) -> bool:
            return remove_condition(current, vmsync.RESTART_REQUIRED)

        self.store.mutate("virtualmachines", namespace, name, clear_restart_required,
                          actor=ACTOR, subresource="status", admit=False)

    # Network sync.

    def _sync_vmi(self, vm: dict, vmi: dict) -> None:
        """Propagate interfaces, states, affinity and nodeSelector to the VMI and drop its detached interfaces."""
        namespace, name = vm["metadata"]["namespace"], vm["metadata"]["name"]
        template = _template_spec(vm)
        runtime = self.manager.vmi_runtime(vmi)
        generation = str(vm["metadata"].get("generation", ""))
        changes: dict[str, list[str]] = {}

        def edit(current: dict) -> bool:
            changes["propagated"] = vmsync.propagate_interfaces(vm, current)
            changes["cleared"] = vmsync.clear_detached_from_vmi(current)
            changed = bool(changes["propagated"] or changes["cleared"])
            changed |= vmsync.copy_scheduling(template, current)

            annotations = current.setdefault("metadata", {}).setdefault("annotations", {})
            if template == runtime.start_template and annotations.get(VM_GENERATION_ANNOTATION) != generation:
                annotations[VM_GENERATION_ANNOTATION] = generation
                changed = True
            return changed

        self.store.mutate("virtualmachineinstances", namespace, name, edit, actor=ACTOR)
        if changes.get("propagated"):
            logger.info("VMI %s/%s: propagated interfaces %s from the VM", namespace, name, changes["propagated"])
        if changes.get("cleared"):
            logger.info("VMI %s/%s: removed detached interfaces %s from the spec", namespace, name, changes["cleared"])

    def _clear_absent(self, namespace: str, name: str, vmi: dict | None) -> None:
        removed: list[str] = []

        def edit(current: dict) -> bool:
            removed[:] = vmsync.clear_detached_from_vm(current, vmi)
            return bool(removed)

        self.store.mutate("virtualmachines", namespace, name, edit, actor=ACTOR)
        if removed:
            logger.info("VM %s/%s: removed detached interfaces %s from the spec", namespace, name, removed)

    # Status.

    def _update_status(self, namespace: str, name: str) -> None:
        if self.store.try_get("virtualmachines", namespace, name) is None:
            return
        vmi = self.store.try_get("virtualmachineinstances", namespace, name)
        start_template = None
        if vmi is not None:
            start_template = self.manager.vmi_runtime(vmi).start_template
        timestamp = self.manager.clock.timestamp()

        def edit(current: dict) -> bool:
            # Compare the template of the VM being written, not of an earlier read: a client
            # update between the two would otherwise move observedGeneration to its generation.
            template = _template_spec(current)
            matches_start = vmi is None or start_template is None or template == start_template
            needs_restart = vmi is not None and not is_deleting(vmi) and vmsync.restart_required(
                template, start_template, vmi.get("spec", {}))
            changed = vmsync.mirror_status(current, vmi, matches_start, timestamp)
            if needs_restart:
                changed |= set_condition(current, vmsync.RESTART_REQUIRED, "True", timestamp,
                                         message=vmsync.MESSAGE_RESTART_REQUIRED)
            return changed

        self.store.mutate("virtualmachines", namespace, name, edit, actor=ACTOR, subresource="status", admit=False)
