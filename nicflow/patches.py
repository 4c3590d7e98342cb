"""JSON patches for the VM spec changes of one operation, as pure functions over plain dicts.

Every patch starts by replacing `metadata.resourceVersion` with the version that was read, so the
API server applies it only to that version and returns 409 Conflict otherwise. The caller then
reads again and rebuilds the patch instead of overwriting a concurrent change.
"""

from __future__ import annotations

from typing import Any

INTERFACES_PATH = "/spec/template/spec/domain/devices/interfaces"
NETWORKS_PATH = "/spec/template/spec/networks"

JsonPatch = list[dict[str, Any]]


class PatchError(ValueError):
    """The VM spec is in a state the requested change cannot be applied to."""


def template_interfaces(vm: dict) -> list[dict]:
    return vm.get("spec", {}).get("template", {}).get("spec", {}).get("domain", {}).get("devices", {}).get("interfaces") or []


def template_networks(vm: dict) -> list[dict]:
    return vm.get("spec", {}).get("template", {}).get("spec", {}).get("networks") or []


def find_interface(vm: dict, name: str) -> tuple[int, dict] | None:
    for index, interface in enumerate(template_interfaces(vm)):
        if interface.get("name") == name:
            return index, interface
    return None


def find_network(vm: dict, name: str) -> tuple[int, dict] | None:
    for index, network in enumerate(template_networks(vm)):
        if network.get("name") == name:
            return index, network
    return None


def _precondition(vm: dict) -> dict:
    return {"op": "replace", "path": "/metadata/resourceVersion", "value": vm["metadata"]["resourceVersion"]}


def _name_test(index: int, name: str) -> dict:
    return {"op": "test", "path": f"{INTERFACES_PATH}/{index}/name", "value": name}


def new_interface(interface: str, mac: str) -> dict:
    """Return the interface entry that Harvester's addNic appends: virtio model, bridge binding."""
    return {"name": interface, "model": "virtio", "bridge": {}, "macAddress": mac}


def new_network(interface: str, network: str) -> dict:
    """Return the network entry for a NAD, always fully qualified as `ns/name`.

    A bare name would be resolved in the VM's namespace by KubeVirt but in `default` by
    Harvester's duplicate-MAC validator, so the two could check different NADs.
    """
    return {"name": interface, "multus": {"networkName": network}}


def hotplug_state(vm: dict, interface: str, network: str, mac: str) -> str:
    """Return how far a hot-plug has been applied to the VM spec: 'absent', 'applied' or 'cancelled'.

    'cancelled' means the interface is there but marked `state: absent`, as an undo leaves it.
    Raises PatchError when the name is taken by a different interface or network.
    """
    found_interface = find_interface(vm, interface)
    found_network = find_network(vm, interface)
    if found_interface is None and found_network is None:
        return "absent"
    if found_interface is None or found_network is None:
        raise PatchError(
            f"VM spec has an interface or a network named {interface!r} but not both; "
            f"fix the VM spec before hot-plugging an interface of that name"
        )

    _, existing = found_interface
    multus = found_network[1].get("multus") or {}
    same_network = multus.get("networkName") == network
    same_mac = (existing.get("macAddress") or "").lower() == mac.lower()
    if not (same_network and same_mac and "bridge" in existing):
        raise PatchError(
            f"interface {interface!r} already exists in the VM spec with network "
            f"{multus.get('networkName')!r} and MAC {existing.get('macAddress')!r}; choose another interface name"
        )
    return "cancelled" if existing.get("state") == "absent" else "applied"


def hotplug_patch(vm: dict, interface: str, network: str, mac: str) -> JsonPatch:
    """Build the patch that appends the interface and its network, as Harvester's addNic does."""
    interfaces_exist = bool(template_interfaces(vm))
    networks_exist = bool(template_networks(vm))
    return [
        _precondition(vm),
        {
            "op": "add",
            "path": f"{INTERFACES_PATH}/-" if interfaces_exist else INTERFACES_PATH,
            "value": new_interface(interface, mac) if interfaces_exist else [new_interface(interface, mac)],
        },
        {
            "op": "add",
            "path": f"{NETWORKS_PATH}/-" if networks_exist else NETWORKS_PATH,
            "value": new_network(interface, network) if networks_exist else [new_network(interface, network)],
        },
    ]


def mark_absent_patch(vm: dict, interface: str) -> JsonPatch:
    """Build the patch that sets `state: absent` on an interface: an unplug, or the undo of a hot-plug."""
    found = find_interface(vm, interface)
    if found is None:
        raise PatchError(f"interface {interface!r} is not in the VM spec")
    index, _ = found
    return [
        _precondition(vm),
        _name_test(index, interface),
        {"op": "add", "path": f"{INTERFACES_PATH}/{index}/state", "value": "absent"},
    ]


def clear_absent_patch(vm: dict, interface: str) -> JsonPatch:
    """Build the patch that removes `state: absent` again: the undo of an unplug not yet carried out."""
    found = find_interface(vm, interface)
    if found is None:
        raise PatchError(f"interface {interface!r} is not in the VM spec any more")
    index, existing = found
    if existing.get("state") != "absent":
        return []
    return [
        _precondition(vm),
        _name_test(index, interface),
        {"op": "remove", "path": f"{INTERFACES_PATH}/{index}/state"},
    ]


def readd_interface_patch(vm: dict, interface_spec: dict, network_spec: dict) -> JsonPatch:
    """Build the patch that puts back an interface removed by an unplug; it goes to the end of the lists."""
    restored = {key: value for key, value in interface_spec.items() if key != "state"}
    return [
        _precondition(vm),
        {"op": "add", "path": f"{INTERFACES_PATH}/-", "value": restored},
        {"op": "add", "path": f"{NETWORKS_PATH}/-", "value": network_spec},
    ]


def backfill_patch(vm: dict, macs: dict[str, str]) -> JsonPatch:
    """Build the patch that writes observed MACs into interfaces that have none in the spec."""
    operations: JsonPatch = [_precondition(vm)]
    for index, interface in enumerate(template_interfaces(vm)):
        name = interface.get("name")
        if interface.get("macAddress") or name not in macs:
            continue
        operations.append(_name_test(index, name))
        operations.append({"op": "add", "path": f"{INTERFACES_PATH}/{index}/macAddress", "value": macs[name]})
    return operations if len(operations) > 1 else []


def vmi_has_interface(vmi: dict, interface: str) -> dict | None:
    for entry in vmi.get("spec", {}).get("domain", {}).get("devices", {}).get("interfaces") or []:
        if entry.get("name") == interface:
            return entry
    return None


def status_interface(vmi: dict, interface: str) -> dict | None:
    for entry in vmi.get("status", {}).get("interfaces") or []:
        if entry.get("name") == interface:
            return entry
    return None


def info_sources(entry: dict | None) -> set[str]:
    if not entry:
        return set()
    return {part.strip() for part in (entry.get("infoSource") or "").split(",") if part.strip()}
