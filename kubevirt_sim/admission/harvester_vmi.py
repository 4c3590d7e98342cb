"""Harvester v1.7's VMI mutator: MAC injection from the VM's `harvesterhci.io/mac-address` annotation."""

from __future__ import annotations

import copy
import json
import logging
from typing import Any

from kubevirt_sim.admission.harvester_vm import (
    MAC_ADDRESS_ANNOTATION,
    HarvesterWebhookError,
    template_interfaces,
    template_spec,
)
from kubevirt_sim.admission.reader import ObjectReader

logger = logging.getLogger(__name__)


def inject_annotated_macs(vm: dict[str, Any], vmi: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of `vmi` whose interfaces carry the MACs observed in the VM's annotation.

    Only an interface whose VM template MAC is empty gets one. The VM and VMI interfaces are paired
    by position, as in Harvester. This is how a pre-v1.7 VM keeps its MACs across restarts without
    a MAC in its spec. An annotation that is not a JSON object of strings injects nothing.

    A VMI with more interfaces than its VM template makes Harvester's handler panic, and the
    apiserver ignores the failed call (failurePolicy Ignore), so the VMI is returned unchanged.
    """
    mutated = copy.deepcopy(vmi)
    raw = ((vm.get("metadata") or {}).get("annotations") or {}).get(MAC_ADDRESS_ANNOTATION) or ""
    if not raw:
        return mutated
    try:
        observed = json.loads(raw)
    except ValueError:
        observed = None
    if not isinstance(observed, dict) or not all(isinstance(value, str) for value in observed.values()):
        logger.error("failed to unmarshal mac-address from VM annotation: %s", raw)
        return mutated

    vm_spec = template_spec(vm)
    vm_interfaces = template_interfaces(vm)
    vmi_interfaces = (((mutated.get("spec") or {}).get("domain") or {}).get("devices") or {}).get("interfaces") or []
    if vm_spec is None or len(vmi_interfaces) > len(vm_interfaces):
        return copy.deepcopy(vmi)

    for index, interface in enumerate(vmi_interfaces):
        if vm_interfaces[index].get("macAddress"):
            continue
        mac = observed.get(interface.get("name", ""), "")
        if mac:
            interface["macAddress"] = mac
    return mutated


def mutate_vmi(reader: ObjectReader, vmi: dict[str, Any]) -> dict[str, Any]:
    """Run Harvester's VMI mutator on a VMI create and return the mutated copy.

    Harvester v1.7.3 looks the VM up by the VMI's name and fails when it is missing, so a VMI
    without a VM is denied with 500. Later Harvester releases let such VMIs through.
    """
    metadata = vmi.get("metadata") or {}
    vm = reader.try_get("virtualmachines", metadata.get("namespace"), metadata.get("name", ""))
    if vm is None:
        raise HarvesterWebhookError(f'virtualmachines.kubevirt.io "{metadata.get("name")}" not found')
    return inject_annotated_macs(vm, vmi)
