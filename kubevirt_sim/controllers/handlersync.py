"""Pure virt-handler rules: detach absent interfaces, attach migrated ones, report guest-agent data."""

from __future__ import annotations

from kubevirt_sim import naming
from kubevirt_sim.controllers.network import order_status_interfaces
from kubevirt_sim.controllers.objects import (
    INFO_DOMAIN,
    INFO_GUEST_AGENT,
    INFO_MULTUS,
    find_by_name,
    find_status_interface,
    info_sources,
    is_absent,
    join_info_sources,
    primary_interface_name,
    spec_interfaces,
)

# Fields that only the domain or the guest agent report; they go when the interface leaves the domain.
_DOMAIN_FIELDS = ("mac", "interfaceName", "ipAddress", "ipAddresses", "queueCount", "linkState")


def _reorder(vmi: dict) -> None:
    status = vmi.setdefault("status", {})
    status["interfaces"] = order_status_interfaces(status.get("interfaces") or [], primary_interface_name(vmi.get("spec", {})))


def detach_absent(vmi: dict) -> list[str]:
    """Detach absent interfaces from the domain: their status entries drop domain and guest-agent data.

    An entry left with no info source is removed. Returns the names of the detached interfaces.
    """
    detached = []
    entries = vmi.get("status", {}).get("interfaces") or []
    for interface in spec_interfaces(vmi.get("spec", {})):
        if not is_absent(interface):
            continue
        entry = find_status_interface(vmi, interface.get("name", ""))
        if entry is None or INFO_DOMAIN not in info_sources(entry):
            continue

        sources = info_sources(entry) - {INFO_DOMAIN, INFO_GUEST_AGENT}
        for field in _DOMAIN_FIELDS:
            entry.pop(field, None)
        if sources:
            entry["infoSource"] = join_info_sources(sources)
        else:
            entries.remove(entry)
        detached.append(interface["name"])

    if detached:
        _reorder(vmi)
    return detached


def attach_candidates(vmi: dict) -> list[str]:
    """Return the interfaces to hot-plug into the domain: multus-status in the status, not in the domain, not absent."""
    candidates = []
    for interface in spec_interfaces(vmi.get("spec", {})):
        if is_absent(interface):
            continue
        entry = find_status_interface(vmi, interface.get("name", ""))
        if entry is None:
            continue
        sources = info_sources(entry)
        if INFO_MULTUS in sources and INFO_DOMAIN not in sources:
            candidates.append(interface["name"])
    return candidates


def attach_interface(vmi: dict, name: str, mac: str) -> None:
    """Record a live attach: the status entry gains domain, mac, queueCount and linkState and moves to the end of the domain entries."""
    entries = vmi.setdefault("status", {}).setdefault("interfaces", [])
    entry = find_status_interface(vmi, name)
    if entry is None:
        entry = {"name": name}
        entries.append(entry)

    # Move the entry behind the others, so that it follows the existing domain entries.
    entries.remove(entry)
    entries.append(entry)

    entry["mac"] = naming.normalize_mac(mac)
    entry["infoSource"] = join_info_sources(info_sources(entry) | {INFO_DOMAIN})
    entry["queueCount"] = 1
    entry["linkState"] = "up"
    _reorder(vmi)


def next_guest_slot(vmi: dict) -> int:
    """Return the smallest PCIe bus number N >= 1 that no status entry's 'enp<N>s0' name uses."""
    used = {naming.guest_interface_slot(e.get("interfaceName")) for e in vmi.get("status", {}).get("interfaces") or []}
    slot = 1
    while slot in used:
        slot += 1
    return slot


def agent_report_candidates(vmi: dict) -> list[str]:
    """Return the attached interfaces whose status entry lacks guest-agent data."""
    names = []
    for entry in vmi.get("status", {}).get("interfaces") or []:
        sources = info_sources(entry)
        if entry.get("name") and INFO_DOMAIN in sources and INFO_GUEST_AGENT not in sources:
            interface = find_by_name(spec_interfaces(vmi.get("spec", {})), entry["name"])
            if interface is not None and not is_absent(interface):
                names.append(entry["name"])
    return names


def report_guest_agent(vmi: dict, name: str) -> bool:
    """Record the guest agent's report of an interface: guest-agent in infoSource and an 'enp<N>s0' name."""
    entry = find_status_interface(vmi, name)
    if entry is None or INFO_DOMAIN not in info_sources(entry):
        return False
    if not entry.get("interfaceName"):
        entry["interfaceName"] = naming.guest_interface_name(next_guest_slot(vmi))
    entry["infoSource"] = join_info_sources(info_sources(entry) | {INFO_GUEST_AGENT})
    return True
