"""Estimate of the free PCIe root ports a running VMI has left for hot-plugged interfaces.

libvirt cannot add a root port to a running q35 domain, so KubeVirt reserves empty root ports
when the domain starts and every hot-plugged virtio interface takes one of them until the next
restart. KubeVirt 1.6.0-1.6.3 reserves `max(8 - in_use, 3)` ports when the domain memory is at
most 2 GiB and `max(16 - in_use, 6)` above that, where `in_use` counts the PCI devices of the
domain. KubeVirt 1.6.4 and later keep the same total with a different layout.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

GIB = 1024**3
SMALL_DOMAIN_MEMORY = 2 * GIB

# KubeVirt places every device on the root complex when this annotation is "true", so the domain
# gets no empty root port and no interface can be hot-plugged.
ROOT_COMPLEX_ANNOTATION = "kubevirt.io/placePCIDevicesOnRootComplex"

_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)$")
_QUANTITY_SUFFIXES = {
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}


def parse_quantity(text: str | int) -> int:
    """Parse a Kubernetes memory quantity such as `3996Mi`, `4G` or `1e9` into bytes.

    Raises:
        ValueError: the text is not a quantity; the message names it.
    """
    if isinstance(text, int):
        return text

    match = _QUANTITY.fullmatch(str(text).strip())
    if match is None or match.group(2) not in _QUANTITY_SUFFIXES:
        raise ValueError(
            f"memory quantity {text!r} is invalid: expected a number with an optional suffix such as Mi or Gi"
        )

    try:
        number = Decimal(match.group(1))
    except InvalidOperation as error:
        raise ValueError(f"memory quantity {text!r} is invalid: {error}") from error
    return int(number * _QUANTITY_SUFFIXES[match.group(2)])


def _dig(obj: Any, *keys: str) -> Any:
    """Follow `keys` through nested dicts; a missing key or an explicit null gives None."""
    value = obj
    for key in keys:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def domain_memory_bytes(vmi: dict) -> int | None:
    """Return the guest memory of the VMI in bytes: `memory.guest`, else the memory request, else the limit."""
    domain = _dig(vmi, "spec", "domain")
    candidates = (
        _dig(domain, "memory", "guest"),
        _dig(domain, "resources", "requests", "memory"),
        _dig(domain, "resources", "limits", "memory"),
    )
    for value in candidates:
        if value is not None:
            return parse_quantity(value)
    return None


def count_pci_devices(vmi: dict) -> int:
    """Estimate the PCI devices of the VMI's domain as KubeVirt's converter would place them.

    Counts interfaces that are not absent, host devices, GPUs, virtio disks, virtio inputs, a
    watchdog, an RNG device and the controllers and balloon KubeVirt adds by default.
    """
    devices = _dig(vmi, "spec", "domain", "devices") or {}
    inputs = devices.get("inputs") or []

    interfaces = [item for item in devices.get("interfaces") or [] if item.get("state") != "absent"]
    host_devices = (devices.get("hostDevices") or []) + (devices.get("gpus") or [])
    virtio_disks = [disk for disk in devices.get("disks") or [] if _disk_bus(disk) == "virtio"]
    virtio_inputs = [item for item in inputs if item.get("bus") == "virtio"]
    usb_inputs = [item for item in inputs if (item.get("bus") or "usb") == "usb"]

    count = len(interfaces) + len(host_devices) + len(virtio_disks) + len(virtio_inputs)

    # Controllers and devices KubeVirt adds unless the spec turns them off: a virtio-serial
    # controller for the guest agent channel, a virtio-scsi controller for hot-plugged volumes,
    # a USB controller when something sits on the USB bus, and the memory balloon.
    count += 1
    if not devices.get("disableHotplug", False):
        count += 1
    if usb_inputs or devices.get("clientPassthrough") is not None:
        count += 1
    if devices.get("autoattachMemBalloon", True):
        count += 1

    if devices.get("watchdog") is not None:
        count += 1
    if devices.get("rng") is not None:
        count += 1
    if devices.get("autoattachVSOCK", False):
        count += 1
    return count


def _disk_bus(disk: dict) -> str | None:
    for kind in ("disk", "lun"):
        if kind in disk:
            return (disk[kind] or {}).get("bus")
    return None


def reserved_hotplug_ports(memory_bytes: int, ports_in_use: int) -> int:
    """Return the empty root ports KubeVirt 1.6 reserves at domain start."""
    if memory_bytes <= SMALL_DOMAIN_MEMORY:
        return max(8 - ports_in_use, 3)
    return max(16 - ports_in_use, 6)


def free_hotplug_ports(vmi: dict, hotplugged_since_start: int = 0) -> int | None:
    """Estimate the root ports still free for hot-plugged interfaces on the running VMI.

    `hotplugged_since_start` is the number of interfaces hot-plugged since the VMI started, net
    of the ones unplugged since. They appear in the current VMI spec but took reserved ports.
    Returns None when the estimate does not apply: a machine type other than q35 or no memory
    in the spec.
    """
    annotations = _dig(vmi, "metadata", "annotations") or {}
    if annotations.get(ROOT_COMPLEX_ANNOTATION) == "true":
        return 0

    machine_type = _dig(vmi, "spec", "domain", "machine", "type") or "q35"
    if "q35" not in machine_type:
        return None

    memory = domain_memory_bytes(vmi)
    if memory is None:
        return None

    # The ports counted at start exclude the interfaces hot-plugged since, which now sit in the spec.
    in_use_at_start = max(count_pci_devices(vmi) - hotplugged_since_start, 0)

    # NOTE: this is an estimate. The converter may add devices this count does not model, for
    # example a video device or virtiofs. KubeVirt 1.6.4+ stops at controller index 31 on VMs
    # with many devices. With memory hot-plug it is unknown whether the guest or the maximum
    # memory counts.
    return reserved_hotplug_ports(memory, in_use_at_start) - hotplugged_since_start
