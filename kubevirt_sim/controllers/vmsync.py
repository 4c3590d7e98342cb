"""Pure VM-to-VMI rules of KubeVirt's VM controller (network sync, clean-up, RestartRequired, status).

The functions edit the dicts they get in place and return what they changed. They read no
server, so each rule can be unit-tested on plain objects.
"""

from __future__ import annotations

import copy
import json

from kubevirt_sim import naming
from kubevirt_sim.controllers.network import is_migrating
from kubevirt_sim.controllers.objects import (
    STATE_ABSENT,
    binding_of,
    find_by_name,
    find_condition,
    find_status_interface,
    is_absent,
    is_deleting,
    remove_condition,
    set_condition,
    spec_interfaces,
    spec_networks,
)

RESTART_REQUIRED = "RestartRequired"
MESSAGE_RESTART_REQUIRED = "a non-live-updatable field was changed in the template spec"

# VMI conditions that KubeVirt mirrors onto the VM status.
MIRRORED_CONDITIONS = ("Ready", "LiveMigratable", "StorageLiveMigratable", "AgentConnected", "MigrationRequired")

# Run strategies under which the VM controller keeps a VMI running.
RUNNING_STRATEGIES = ("Always", "RerunOnFailure")

# Template fields that a LiveUpdate rollout applies to a running VMI without a restart. Networks
# and interfaces count as live-updatable only under the extra rule of network_change_is_live().
_LIVE_UPDATABLE_PATHS = (
    ("affinity",),
    ("nodeSelector",),
    ("tolerations",),
    ("volumes",),
    ("networks",),
    ("domain", "devices", "interfaces"),
    ("domain", "devices", "disks"),
    ("domain", "cpu", "sockets"),
    ("domain", "memory", "guest"),
)


def run_strategy(vm: dict) -> str:
    """Return the VM's run strategy, mapping the legacy spec.running field to Always or Halted."""
    spec = vm.get("spec", {})
    if spec.get("runStrategy"):
        return spec["runStrategy"]
    return "Always" if spec.get("running") else "Halted"


def _hot_pluggable(interface: dict) -> bool:
    return binding_of(interface) in ("bridge", "sriov") and not is_absent(interface)


def _uses_ordinal_pod_names(vmi: dict, interface_name: str) -> bool:
    entry = find_status_interface(vmi, interface_name)
    return entry is not None and naming.is_ordinal_pod_interface(entry.get("podInterfaceName", ""))


def propagate_interfaces(vm: dict, vmi: dict) -> list[str]:
    """Append the VM's new hot-pluggable interfaces and their networks to the VMI spec, and copy `state`.

    An interface is new when its name is missing from the VMI spec. It is hot-pluggable with
    bridge or SR-IOV binding and a state other than absent. `absent` is not copied onto
    interfaces whose pod uses ordinal names (net1, ...), because KubeVirt ignores unplug there.
    Returns the names of the interfaces added or changed.
    """
    template = vm.get("spec", {}).get("template", {}).get("spec", {})
    vmi_spec = vmi.setdefault("spec", {})
    devices = vmi_spec.setdefault("domain", {}).setdefault("devices", {})
    vmi_interfaces = devices.setdefault("interfaces", [])
    vmi_networks = vmi_spec.setdefault("networks", [])
    changed: list[str] = []

    for interface in spec_interfaces(template):
        name = interface.get("name", "")
        current = find_by_name(vmi_interfaces, name)

        if current is None:
            network = find_by_name(spec_networks(template), name)
            if not _hot_pluggable(interface) or network is None:
                continue
            vmi_interfaces.append(copy.deepcopy(interface))
            if find_by_name(vmi_networks, name) is None:
                vmi_networks.append(copy.deepcopy(network))
            changed.append(name)
            continue

        expected_state = interface.get("state", "")
        if current.get("state", "") == expected_state:
            continue
        if expected_state == STATE_ABSENT and _uses_ordinal_pod_names(vmi, name):
            continue
        if expected_state:
            current["state"] = expected_state
        else:
            current.pop("state", None)
        changed.append(name)

    return changed


def clear_detached_from_vmi(vmi: dict) -> list[str]:
    """Remove absent interfaces that have no status entry, with their networks, from the VMI spec."""
    spec = vmi.get("spec", {})
    interfaces = spec_interfaces(spec)
    removed = [
        i.get("name", "") for i in interfaces
        if is_absent(i) and find_status_interface(vmi, i.get("name", "")) is None
    ]
    if removed:
        spec["domain"]["devices"]["interfaces"] = [i for i in interfaces if i.get("name") not in removed]
        spec["networks"] = [n for n in spec_networks(spec) if n.get("name") not in removed]
    return removed


def clear_detached_from_vm(vm: dict, vmi: dict | None) -> list[str]:
    """Remove absent interfaces and their networks from the VM template spec.

    With a VMI, only the absent interfaces found in neither the VMI spec nor the VMI status go.
    With no VMI (VM stopped), every absent interface goes.
    """
    template = vm.get("spec", {}).get("template", {}).get("spec", {})
    interfaces = spec_interfaces(template)
    removed = []
    for interface in interfaces:
        name = interface.get("name", "")
        if not is_absent(interface):
            continue
        if vmi is not None:
            in_vmi_spec = find_by_name(spec_interfaces(vmi.get("spec", {})), name) is not None
            if in_vmi_spec or find_status_interface(vmi, name) is not None:
                continue
        removed.append(name)

    if removed:
        template["domain"]["devices"]["interfaces"] = [i for i in interfaces if i.get("name") not in removed]
        template["networks"] = [n for n in spec_networks(template) if n.get("name") not in removed]
    return removed


def _without_state(interface: dict) -> dict:
    return {key: value for key, value in interface.items() if key != "state"}


def network_change_is_live(template: dict, vmi_spec: dict) -> bool:
    """Tell whether the VM's interface changes can go live: every VMI interface is still in the VM, unchanged but for `state`."""
    for vmi_interface in spec_interfaces(vmi_spec):
        vm_interface = find_by_name(spec_interfaces(template), vmi_interface.get("name", ""))
        if vm_interface is None:
            return False
        if _without_state(vm_interface) != _without_state(vmi_interface):
            return False
    return True


def _strip_live_updatable(spec: dict) -> dict:
    stripped = copy.deepcopy(spec)
    for path in _LIVE_UPDATABLE_PATHS:
        parent = stripped
        for step in path[:-1]:
            parent = parent.get(step) if isinstance(parent, dict) else None
            if parent is None:
                break
        if isinstance(parent, dict):
            parent.pop(path[-1], None)
    return stripped


def restart_required(template: dict, start_template: dict | None, vmi_spec: dict) -> bool:
    """Tell whether the VM template differs from the VMI's start revision in a way that needs a restart.

    Nothing is required while the template equals the start revision. Otherwise a restart is
    required when a non-live-updatable field changed, or when the interface change cannot go
    live (an existing interface changed or was removed).
    """
    if start_template is None or template == start_template:
        return False
    if _strip_live_updatable(template) != _strip_live_updatable(start_template):
        return True
    return not network_change_is_live(template, vmi_spec)


def copy_scheduling(template: dict, vmi: dict) -> bool:
    """Copy affinity and nodeSelector from the VM template into the VMI spec, except while it migrates."""
    if is_migrating(vmi):
        return False
    spec = vmi.setdefault("spec", {})
    changed = False
    for field in ("affinity", "nodeSelector"):
        expected = template.get(field)
        if spec.get(field) == expected:
            continue
        if expected is None:
            spec.pop(field, None)
        else:
            spec[field] = copy.deepcopy(expected)
        changed = True
    return changed


def printable_status(vm: dict, vmi: dict | None) -> str:
    """Return the VM's printableStatus for its VMI as KubeVirt's `kubectl get vm` shows it."""
    if vmi is None:
        return "Starting" if run_strategy(vm) in RUNNING_STRATEGIES else "Stopped"
    if is_deleting(vmi):
        return "Stopping"
    phase = vmi.get("status", {}).get("phase", "")
    if phase in ("", "Pending", "Scheduling", "Scheduled"):
        unschedulable = find_condition(vmi, "PodScheduled")
        if unschedulable is not None and unschedulable.get("status") == "False":
            return "ErrorUnschedulable"
        return "Starting"
    if phase == "Running":
        return "Migrating" if is_migrating(vmi) else "Running"
    if phase == "Failed":
        return "Stopped" if run_strategy(vm) == "Halted" else "CrashLoopBackOff"
    return "Stopped"


def mirror_status(vm: dict, vmi: dict | None, template_matches_start: bool, timestamp: str) -> bool:
    """Set the VM status from its VMI: mirrored conditions, printableStatus, ready, created, generations.

    desiredGeneration always follows metadata.generation; observedGeneration does only while the
    template equals the VMI's start revision, as after a live hot-plug it keeps the old value.
    """
    before = json.dumps(vm.get("status") or {}, sort_keys=True)
    status = vm.setdefault("status", {})

    for condition_type in MIRRORED_CONDITIONS:
        source = find_condition(vmi, condition_type) if vmi is not None else None
        if source is None:
            remove_condition(vm, condition_type)
            continue
        set_condition(vm, condition_type, source.get("status", "Unknown"),
                      source.get("lastTransitionTime") or timestamp, source.get("reason"), source.get("message"))

    if vmi is None:
        set_condition(vm, "Ready", "False", timestamp, "VMINotExists", "VMI does not exist")

    status["printableStatus"] = printable_status(vm, vmi)
    ready = vmi is not None and find_condition(vmi, "Ready") is not None and find_condition(vmi, "Ready").get("status") == "True"
    if ready:
        status["ready"] = True
    else:
        status.pop("ready", None)
    if vmi is not None:
        status["created"] = True
    else:
        status.pop("created", None)

    generation = vm.get("metadata", {}).get("generation")
    if generation is not None:
        status["desiredGeneration"] = generation
        if template_matches_start or "observedGeneration" not in status:
            status["observedGeneration"] = generation

    return json.dumps(status, sort_keys=True) != before
