"""Pure network rules of KubeVirt 1.6 with thin Multus: pod annotations, status interfaces,
MigrationRequired, LiveMigratable and PCIe root-port capacity.

Every function takes and edits plain dicts and performs no I/O, so the rules can be unit-tested
without a server.
"""

from __future__ import annotations

import json
import re
from datetime import datetime

from kubevirt_sim import naming
from kubevirt_sim.controllers.objects import (
    INFO_DOMAIN,
    INFO_MULTUS,
    binding_of,
    find_by_name,
    find_condition,
    info_sources,
    is_absent,
    is_secondary_multus,
    join_info_sources,
    multus_network_name,
    now_timestamp,
    primary_interface_name,
    remove_condition,
    seconds_since,
    set_condition,
    spec_interfaces,
    spec_networks,
    split_network_name,
)

NETWORKS_ANNOTATION = "k8s.v1.cni.cncf.io/networks"
NETWORK_STATUS_ANNOTATION = "k8s.v1.cni.cncf.io/network-status"
POD_NETWORK_STATUS_NAME = "k8s-pod-network"

MIGRATION_REQUIRED = "MigrationRequired"
REASON_AUTO_MIGRATION_PENDING = "AutoMigrationPending"
REASON_AUTO_MIGRATION_DUE_TO_LIVE_UPDATE = "AutoMigrationDueToLiveUpdate"

# KubeVirt's DynamicNetworkControllerGracePeriod: how long a pending bridge hot-plug or unplug waits
# before MigrationRequired turns True.
MIGRATION_REQUIRED_GRACE_SECONDS = 15.0

LIVE_MIGRATABLE = "LiveMigratable"
REASON_INTERFACE_NOT_LIVE_MIGRATABLE = "InterfaceNotLiveMigratable"
MESSAGE_INTERFACE_NOT_LIVE_MIGRATABLE = (
    "cannot migrate VMI which does not use masquerade, bridge with "
    "kubevirt.io/allow-pod-bridge-network-live-migration VM annotation or a migratable plugin "
    "to connect to the pod network"
)
ALLOW_POD_BRIDGE_MIGRATION_ANNOTATION = "kubevirt.io/allow-pod-bridge-network-live-migration"


# Pod Multus annotations.

def pod_networks_annotation(vmi: dict) -> list[dict]:
    """Return the `k8s.v1.cni.cncf.io/networks` entries for a VMI: its non-absent secondary interfaces."""
    namespace = vmi.get("metadata", {}).get("namespace", "")
    spec = vmi.get("spec", {})
    entries = []
    for interface in spec_interfaces(spec):
        network = find_by_name(spec_networks(spec), interface.get("name", ""))
        if not is_secondary_multus(network) or is_absent(interface):
            continue

        nad_namespace, nad_name = split_network_name(multus_network_name(network), namespace)
        entry = {"name": nad_name, "namespace": nad_namespace}
        if interface.get("macAddress"):
            entry["mac"] = naming.normalize_mac(interface["macAddress"])
        entry["interface"] = naming.pod_interface_name(interface["name"])
        entries.append(entry)
    return entries


def pod_network_status(networks: list[dict], pod_ip: str, primary_mac: str) -> list[dict]:
    """Return the `k8s.v1.cni.cncf.io/network-status` that thin Multus writes once at pod creation."""
    status = [{
        "name": POD_NETWORK_STATUS_NAME,
        "interface": naming.PRIMARY_POD_INTERFACE,
        "ips": [pod_ip],
        "mac": primary_mac,
        "default": True,
        "dns": {},
    }]
    for entry in networks:
        item = {"name": f"{entry['namespace']}/{entry['name']}", "interface": entry["interface"], "dns": {}}
        if entry.get("mac"):
            item["mac"] = entry["mac"]
        status.append(item)
    return status


def pod_secondary_interfaces(pod: dict | None) -> set[str]:
    """Return the pod interface names of the secondary networks in a pod's network-status."""
    if pod is None:
        return set()
    raw = pod.get("metadata", {}).get("annotations", {}).get(NETWORK_STATUS_ANNOTATION)
    if not raw:
        return set()
    try:
        entries = json.loads(raw)
    except ValueError:
        return set()
    return {e.get("interface", "") for e in entries if not e.get("default") and e.get("interface")}


# status.interfaces.

def order_status_interfaces(entries: list[dict], primary: str | None) -> list[dict]:
    """Order status entries as virt-handler does: primary first, then domain order, then the rest.

    Entries keep their relative order inside each group, so an interface attached last stays
    last among the domain entries.
    """
    primary_entries = [e for e in entries if primary is not None and e.get("name") == primary]
    domain_entries = [e for e in entries if e not in primary_entries and INFO_DOMAIN in info_sources(e)]
    other_entries = [e for e in entries if e not in primary_entries and e not in domain_entries]
    return primary_entries + domain_entries + other_entries


def _pod_interface_for(vmi: dict, interface_name: str) -> str:
    existing = next((e for e in vmi.get("status", {}).get("interfaces") or [] if e.get("name") == interface_name), None)
    if existing and existing.get("podInterfaceName"):
        return existing["podInterfaceName"]
    return naming.pod_interface_name(interface_name)


def sync_multus_status(vmi: dict, pod_interfaces: set[str]) -> bool:
    """Give `multus-status` to exactly the VMI status entries whose network the pod's network-status lists.

    An entry left with no info source is dropped. Returns whether the status changed.
    """
    spec = vmi.get("spec", {})
    status = vmi.setdefault("status", {})
    entries: list[dict] = [dict(e) for e in status.get("interfaces") or []]
    before = json.dumps(status.get("interfaces") or [], sort_keys=True)

    expected: dict[str, str] = {}
    for interface in spec_interfaces(spec):
        name = interface.get("name", "")
        network = find_by_name(spec_networks(spec), name)
        if not is_secondary_multus(network):
            continue
        pod_interface = _pod_interface_for(vmi, name)
        if pod_interface in pod_interfaces:
            expected[name] = pod_interface

    updated: list[dict] = []
    for entry in entries:
        sources = info_sources(entry)
        name = entry.get("name", "")
        if name in expected:
            sources.add(INFO_MULTUS)
            entry["podInterfaceName"] = expected.pop(name)
        else:
            sources.discard(INFO_MULTUS)
        if not sources:
            continue
        entry["infoSource"] = join_info_sources(sources)
        updated.append(entry)

    for name, pod_interface in expected.items():
        updated.append({"name": name, "podInterfaceName": pod_interface, "infoSource": INFO_MULTUS})

    ordered = order_status_interfaces(updated, primary_interface_name(spec))
    if json.dumps(ordered, sort_keys=True) == before:
        return False
    status["interfaces"] = ordered
    return True


# MigrationRequired.

def is_migrating(vmi: dict) -> bool:
    """Tell whether the VMI is between its migration's startTimestamp and endTimestamp."""
    state = vmi.get("status", {}).get("migrationState") or {}
    return bool(state.get("startTimestamp")) and not state.get("endTimestamp")


def pending_network_change(vmi: dict) -> str | None:
    """Return 'sriov' or 'bridge' when a secondary interface waits for a migration, else None.

    Pending means a non-absent secondary interface with no status entry (hot-plug), or an absent
    one whose status entry still has multus-status but no domain (unplug). SR-IOV wins because it
    requires the migration at once.
    """
    spec = vmi.get("spec", {})
    pending: str | None = None
    for interface in spec_interfaces(spec):
        name = interface.get("name", "")
        network = find_by_name(spec_networks(spec), name)
        if not is_secondary_multus(network):
            continue

        entry = next((e for e in vmi.get("status", {}).get("interfaces") or [] if e.get("name") == name), None)
        if is_absent(interface):
            if entry is not None and INFO_MULTUS in info_sources(entry) and INFO_DOMAIN not in info_sources(entry):
                pending = pending or "bridge"
            continue
        if entry is None:
            if binding_of(interface) == "sriov":
                return "sriov"
            pending = "bridge"
    return pending


def sync_migration_required(vmi: dict, now: datetime) -> tuple[bool, float | None]:
    """Update the VMI condition MigrationRequired from the pending network changes.

    Returns (changed, recheck_seconds): recheck_seconds is the simulated time after which the
    condition should be evaluated again (the rest of the 15 s grace period), or None.
    """
    if is_migrating(vmi):
        return False, None

    pending = pending_network_change(vmi)
    timestamp = now_timestamp(now)
    if pending is None:
        return remove_condition(vmi, MIGRATION_REQUIRED), None
    if pending == "sriov":
        return set_condition(vmi, MIGRATION_REQUIRED, "True", timestamp, REASON_AUTO_MIGRATION_DUE_TO_LIVE_UPDATE), None

    condition = find_condition(vmi, MIGRATION_REQUIRED)
    if condition is None:
        set_condition(vmi, MIGRATION_REQUIRED, "False", timestamp, REASON_AUTO_MIGRATION_PENDING)
        return True, MIGRATION_REQUIRED_GRACE_SECONDS
    if condition.get("status") == "True":
        return False, None

    elapsed = seconds_since(condition.get("lastTransitionTime"), now)
    if elapsed is None or elapsed >= MIGRATION_REQUIRED_GRACE_SECONDS:
        set_condition(vmi, MIGRATION_REQUIRED, "True", timestamp, REASON_AUTO_MIGRATION_DUE_TO_LIVE_UPDATE)
        return True, None
    changed = condition.get("reason") != REASON_AUTO_MIGRATION_PENDING
    if changed:
        condition["reason"] = REASON_AUTO_MIGRATION_PENDING
    return changed, MIGRATION_REQUIRED_GRACE_SECONDS - elapsed


# LiveMigratable.

def live_migratable(vmi: dict, migratable_bindings: set[str] = frozenset()) -> tuple[str, str | None, str | None]:
    """Return (status, reason, message) of the VMI condition LiveMigratable under the pod network rule.

    The pod network is migratable with masquerade, with a binding plugin named in
    `migratable_bindings` (plugins the KubeVirt CR configures with migration support), or with
    bridge when the VMI carries the allow-pod-bridge-network-live-migration annotation.
    """
    spec = vmi.get("spec", {})
    primary = primary_interface_name(spec)
    interface = find_by_name(spec_interfaces(spec), primary) if primary else None
    if interface is None:
        return "True", None, None

    binding = binding_of(interface)
    annotations = vmi.get("metadata", {}).get("annotations") or {}
    if binding == "masquerade":
        return "True", None, None
    if binding == "binding" and interface["binding"].get("name") in migratable_bindings:
        return "True", None, None
    if binding == "bridge" and ALLOW_POD_BRIDGE_MIGRATION_ANNOTATION in annotations:
        return "True", None, None
    return "False", REASON_INTERFACE_NOT_LIVE_MIGRATABLE, MESSAGE_INTERFACE_NOT_LIVE_MIGRATABLE


# PCIe root ports (KubeVirt 1.6.0 to 1.6.3, the "v2" formula).

_QUANTITY = re.compile(r"^([0-9.]+)([A-Za-z]*)$")
_QUANTITY_FACTORS = {
    "": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
}
GIB = 2**30


def parse_quantity(value: str | int | None) -> int:
    """Parse a Kubernetes memory quantity ('3996Mi', '4Gi', '2G', 1024) to bytes; 0 when unset or invalid."""
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    match = _QUANTITY.match(str(value).strip())
    if not match or match.group(2) not in _QUANTITY_FACTORS:
        return 0
    return int(float(match.group(1)) * _QUANTITY_FACTORS[match.group(2)])


def domain_memory_bytes(spec: dict) -> int:
    """Return the domain memory: spec.domain.memory.guest, else the memory request, else the limit."""
    domain = spec.get("domain", {})
    for value in (
        domain.get("memory", {}).get("guest"),
        domain.get("resources", {}).get("requests", {}).get("memory"),
        domain.get("resources", {}).get("limits", {}).get("memory"),
    ):
        if value:
            return parse_quantity(value)
    return 0


def count_pci_devices(spec: dict) -> int:
    """Count the PCI devices the domain of a VMI spec uses (KubeVirt's CountPCIDevices).

    Counted: every non-absent interface, host device and GPU, every virtio-bus disk, every virtio
    input, a watchdog, an RNG, the memory balloon unless disabled, and the non-root controllers.
    NOTE: the controllers are an estimate of what the domain converter adds: one virtio-serial
    (guest agent channel), one SCSI (hot-plug volumes, enabled in Harvester) and one USB controller
    when a USB input exists.
    """
    devices = spec.get("domain", {}).get("devices", {})
    count = sum(1 for interface in devices.get("interfaces") or [] if not is_absent(interface))
    count += len(devices.get("hostDevices") or []) + len(devices.get("gpus") or [])

    for disk in devices.get("disks") or []:
        target = disk.get("disk") if disk.get("disk") is not None else disk.get("lun")
        if target is not None and target.get("bus", "virtio") == "virtio":
            count += 1

    inputs = devices.get("inputs") or []
    count += sum(1 for device in inputs if device.get("bus") == "virtio")
    if devices.get("watchdog"):
        count += 1
    if devices.get("rng") is not None:
        count += 1
    if devices.get("autoattachMemBalloon", True):
        count += 1

    count += 1  # virtio-serial controller
    count += 1  # SCSI controller
    if any(device.get("bus") == "usb" for device in inputs):
        count += 1
    return count


def hotplug_root_ports(spec: dict, annotations: dict | None = None) -> int:
    """Return the empty PCIe root ports reserved at domain start for hot-plugged NICs (v2 formula).

    The count is max(8 - portsInUse, 3) for at most 2 GiB of domain memory, else
    max(16 - portsInUse, 6). It is 0 when a VMI annotation places PCI devices on the root complex.
    """
    if (annotations or {}).get("kubevirt.io/placePCIDevicesOnRootComplex") == "true":
        return 0
    in_use = count_pci_devices(spec)
    if domain_memory_bytes(spec) <= 2 * GIB:
        return max(8 - in_use, 3)
    return max(16 - in_use, 6)


def domain_interface_count(vmi: dict) -> int:
    """Count the interfaces currently in the VMI's domain (status entries with infoSource domain)."""
    return sum(1 for e in vmi.get("status", {}).get("interfaces") or [] if INFO_DOMAIN in info_sources(e))


def free_root_ports(vmi: dict, start_interfaces: int, reserved_ports: int) -> int:
    """Return the free root ports: the slots at domain start (interfaces plus reserved) minus the interfaces now attached."""
    return start_interfaces + reserved_ports - domain_interface_count(vmi)
