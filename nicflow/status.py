"""Pure readers of VM and VMI state shared by the activities."""

from __future__ import annotations

from nicflow.patches import template_interfaces, template_networks


def condition(obj: dict | None, kind: str) -> dict | None:
    """Return the status condition of type `kind`, or None; explicit JSON nulls count as missing."""
    status = (obj or {}).get("status")
    conditions = status.get("conditions") if isinstance(status, dict) else None
    for entry in conditions or []:
        if isinstance(entry, dict) and entry.get("type") == kind:
            return entry
    return None


def condition_true(obj: dict | None, kind: str) -> bool:
    found = condition(obj, kind)
    return found is not None and found.get("status") == "True"


def vmi_running_and_ready(vmi: dict | None) -> bool:
    return vmi is not None and vmi.get("status", {}).get("phase") == "Running" and condition_true(vmi, "Ready")


def agent_connected(vmi: dict | None) -> bool:
    return condition_true(vmi, "AgentConnected")


def collect_vm_macs(vm: dict, nads: dict[str, dict], into: dict[str, dict[str, str]]) -> None:
    """Add the spec MACs of a VM to `into`, grouped by the cluster network of each interface's NAD.

    Pod-network interfaces fall in group "", as Harvester's duplicate-MAC validator groups them.
    """
    namespace = vm["metadata"].get("namespace", "default")
    networks = {network.get("name"): network for network in template_networks(vm)}
    for interface in template_interfaces(vm):
        mac = (interface.get("macAddress") or "").lower()
        if not mac:
            continue
        group = ""
        multus = (networks.get(interface.get("name")) or {}).get("multus") or {}
        network_name = multus.get("networkName")
        if network_name:
            key = network_name if "/" in network_name else f"{namespace}/{network_name}"
            nad = nads.get(key) or {}
            group = nad.get("metadata", {}).get("labels", {}).get("network.harvesterhci.io/clusternetwork", "")
        into.setdefault(group, {})[mac] = f"{namespace}/{vm['metadata']['name']}/{interface.get('name')}"
