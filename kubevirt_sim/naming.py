"""Names, MACs and addresses that KubeVirt and Harvester derive or generate."""

from __future__ import annotations

import hashlib
import random
import re

# KubeVirt names a secondary network's interface inside the virt-launcher pod "pod" followed by
# the first 11 hex digits of the SHA-256 of the logical interface name (KubeVirt >= v0.60).
POD_INTERFACE_PREFIX = "pod"
POD_INTERFACE_HASH_LENGTH = 11

# The primary (pod network) interface inside every virt-launcher pod.
PRIMARY_POD_INTERFACE = "eth0"

# Pods created by KubeVirt <= v0.59 named secondary interfaces net1, net2, ... by position.
ORDINAL_POD_INTERFACE = re.compile(r"^net\d+$")

# Kubernetes generateName suffixes use this alphabet (no vowels, so no words are formed).
_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"

_random = random.SystemRandom()


def pod_interface_name(interface_name: str) -> str:
    """Return the pod interface name KubeVirt gives a secondary network, e.g. 'podc39e4a25326'."""
    digest = hashlib.sha256(interface_name.encode()).hexdigest()
    return POD_INTERFACE_PREFIX + digest[:POD_INTERFACE_HASH_LENGTH]


def is_ordinal_pod_interface(pod_interface: str) -> bool:
    """Tell whether a pod interface name uses the legacy ordinal scheme (net1, net2, ...)."""
    return bool(ORDINAL_POD_INTERFACE.match(pod_interface))


def random_suffix(length: int = 5) -> str:
    """Return a random suffix like the one Kubernetes appends for generateName."""
    return "".join(_random.choice(_SUFFIX_ALPHABET) for _ in range(length))


def launcher_pod_name(vmi_name: str) -> str:
    """Return a fresh virt-launcher pod name for a VMI, e.g. 'virt-launcher-web-01-x7k2p'."""
    return f"virt-launcher-{vmi_name}-{random_suffix()}"


def generate_mac() -> str:
    """Return a random locally administered unicast MAC in lower-case colon form.

    The first octet has bit 1 set and bit 0 clear, so it ends in hex 2, 6, a or e, as Harvester's
    generator does.
    """
    octets = [_random.randrange(256) for _ in range(6)]
    octets[0] = (octets[0] | 0x02) & 0xFE
    return ":".join(f"{octet:02x}" for octet in octets)


def normalize_mac(mac: str) -> str:
    """Return a MAC in the lower-case colon form that the domain and the guest agent report."""
    return mac.replace("-", ":").lower()


def guest_interface_name(slot: int) -> str:
    """Return the guest's predictable name for a virtio NIC on PCIe bus `slot`, e.g. 'enp3s0'."""
    return f"enp{slot}s0"


def guest_interface_slot(name: str | None) -> int | None:
    """Return the bus number in a guest name of the form 'enp<N>s0', or None for other names."""
    if not name:
        return None
    match = re.fullmatch(r"enp(\d+)s0", name)
    return int(match.group(1)) if match else None


def random_ip(prefix: str) -> str:
    """Return an address in `prefix` (three octets, e.g. '10.52.1') with a random host part."""
    return f"{prefix}.{_random.randrange(10, 250)}"
