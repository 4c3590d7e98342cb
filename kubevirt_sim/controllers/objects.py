"""Small helpers over plain Kubernetes object dicts: conditions, interfaces, networks, time."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

# infoSource values of a VMI status interface, joined with ", " in the order KubeVirt uses.
INFO_DOMAIN = "domain"
INFO_GUEST_AGENT = "guest-agent"
INFO_MULTUS = "multus-status"
_INFO_ORDER = (INFO_DOMAIN, INFO_GUEST_AGENT, INFO_MULTUS)

STATE_ABSENT = "absent"


def now_timestamp(now: datetime) -> str:
    """Return `now` in the RFC 3339 form Kubernetes uses, e.g. '2026-05-04T10:15:03Z'."""
    return now.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_timestamp(value: str | None) -> datetime | None:
    """Parse an RFC 3339 timestamp; None for a missing or malformed value."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed


def seconds_since(value: str | None, now: datetime) -> float | None:
    """Return the seconds from the timestamp `value` to `now`, or None when `value` is missing."""
    parsed = parse_timestamp(value)
    if parsed is None:
        return None
    return (now - parsed).total_seconds()


# Conditions.

def find_condition(obj: dict, condition_type: str) -> dict | None:
    for condition in obj.get("status", {}).get("conditions") or []:
        if condition.get("type") == condition_type:
            return condition
    return None


def condition_is_true(obj: dict, condition_type: str) -> bool:
    condition = find_condition(obj, condition_type)
    return condition is not None and condition.get("status") == "True"


def set_condition(obj: dict, condition_type: str, status: str, timestamp: str,
                  reason: str | None = None, message: str | None = None) -> bool:
    """Set a status condition; lastTransitionTime changes only with the status. Returns whether it changed."""
    conditions = obj.setdefault("status", {}).setdefault("conditions", [])
    for condition in conditions:
        if condition.get("type") != condition_type:
            continue
        changed = False
        if condition.get("status") != status:
            condition["status"] = status
            condition["lastTransitionTime"] = timestamp
            changed = True
        for key, value in (("reason", reason), ("message", message)):
            if value is None:
                if key in condition:
                    del condition[key]
                    changed = True
            elif condition.get(key) != value:
                condition[key] = value
                changed = True
        if changed:
            condition["lastProbeTime"] = None
        return changed

    condition = {"type": condition_type, "status": status, "lastProbeTime": None, "lastTransitionTime": timestamp}
    if reason is not None:
        condition["reason"] = reason
    if message is not None:
        condition["message"] = message
    conditions.append(condition)
    return True


def remove_condition(obj: dict, condition_type: str) -> bool:
    """Remove a status condition. Returns whether one was there."""
    status = obj.get("status") or {}
    conditions = status.get("conditions") or []
    remaining = [c for c in conditions if c.get("type") != condition_type]
    if len(remaining) == len(conditions):
        return False
    status["conditions"] = remaining
    return True


# Interfaces and networks of a VM template spec or a VMI spec.

def spec_interfaces(spec: dict) -> list[dict]:
    return spec.get("domain", {}).get("devices", {}).get("interfaces") or []


def spec_networks(spec: dict) -> list[dict]:
    return spec.get("networks") or []


def find_by_name(items: list[dict], name: str) -> dict | None:
    for item in items:
        if item.get("name") == name:
            return item
    return None


def binding_of(interface: dict) -> str:
    """Return an interface's binding: 'bridge', 'masquerade', 'sriov', 'slirp', 'passt', 'binding' or ''."""
    for binding in ("bridge", "masquerade", "sriov", "slirp", "passt", "binding", "macvtap"):
        if interface.get(binding) is not None:
            return binding
    return ""


def is_pod_network(network: dict | None) -> bool:
    return network is not None and network.get("pod") is not None


def is_secondary_multus(network: dict | None) -> bool:
    """Tell whether a network is a secondary Multus network (not the pod network, not Multus default)."""
    if network is None:
        return False
    multus = network.get("multus")
    return multus is not None and not multus.get("default", False)


def multus_network_name(network: dict) -> str:
    return network.get("multus", {}).get("networkName", "")


def split_network_name(network_name: str, namespace: str) -> tuple[str, str]:
    """Resolve a Multus networkName ('ns/name' or a bare 'name') to (namespace, name)."""
    if "/" in network_name:
        nad_namespace, nad_name = network_name.split("/", 1)
        return nad_namespace, nad_name
    return namespace, network_name


def primary_interface_name(spec: dict) -> str | None:
    """Return the name of the interface on the pod network, or None when the VM has none."""
    for network in spec_networks(spec):
        if is_pod_network(network):
            return network.get("name")
    return None


def is_absent(interface: dict | None) -> bool:
    return interface is not None and interface.get("state") == STATE_ABSENT


# status.interfaces entries.

def info_sources(entry: dict) -> set[str]:
    return {part.strip() for part in (entry.get("infoSource") or "").split(",") if part.strip()}


def join_info_sources(sources: set[str]) -> str:
    return ", ".join(source for source in _INFO_ORDER if source in sources)


def find_status_interface(vmi: dict, name: str) -> dict | None:
    for entry in vmi.get("status", {}).get("interfaces") or []:
        if entry.get("name") == name:
            return entry
    return None


# Object metadata.

def labels_of(obj: dict) -> dict[str, str]:
    return obj.get("metadata", {}).get("labels") or {}


def is_deleting(obj: dict | None) -> bool:
    return obj is not None and bool(obj.get("metadata", {}).get("deletionTimestamp"))


def add_finalizer(obj: dict, finalizer: str) -> bool:
    finalizers = obj.setdefault("metadata", {}).setdefault("finalizers", [])
    if finalizer in finalizers:
        return False
    finalizers.append(finalizer)
    return True


def remove_finalizer(obj: dict, finalizer: str) -> bool:
    finalizers = obj.get("metadata", {}).get("finalizers") or []
    if finalizer not in finalizers:
        return False
    obj["metadata"]["finalizers"] = [f for f in finalizers if f != finalizer]
    return True


def dig(obj: Any, *path: str | int, default: Any = None) -> Any:
    """Return obj[path[0]][path[1]]..., or `default` when a step is missing."""
    current = obj
    for step in path:
        if isinstance(current, dict) and isinstance(step, str):
            current = current.get(step)
        elif isinstance(current, list) and isinstance(step, int) and -len(current) <= step < len(current):
            current = current[step]
        else:
            return default
        if current is None:
            return default
    return current
