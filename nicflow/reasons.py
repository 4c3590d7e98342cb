"""Stable reason codes for rejected NIC hot-plug and hot-unplug requests.

A code names one rule that failed. Codes are part of nicflow's interface: the ledger stores
them and scripts match on them, so a code is never renamed or reused for another rule.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Code of the rule that rejected a request; each value equals its name."""

    # The VM and its instance.
    VM_NOT_FOUND = "VM_NOT_FOUND"
    VM_BEING_DELETED = "VM_BEING_DELETED"
    VM_NOT_RUNNING = "VM_NOT_RUNNING"
    VM_NOT_READY = "VM_NOT_READY"
    GUEST_CLUSTER_NODE = "GUEST_CLUSTER_NODE"
    MAC_MISSING_IN_SPEC = "MAC_MISSING_IN_SPEC"

    # Live migration, which carries every hot-plug and hot-unplug.
    MIGRATION_IN_PROGRESS = "MIGRATION_IN_PROGRESS"
    KUBEVIRT_NOT_READY = "KUBEVIRT_NOT_READY"
    NOT_LIVE_MIGRATABLE = "NOT_LIVE_MIGRATABLE"
    NO_MIGRATION_TARGET = "NO_MIGRATION_TARGET"

    # The network being added.
    NETWORK_NAME_INVALID = "NETWORK_NAME_INVALID"
    NAD_NOT_FOUND = "NAD_NOT_FOUND"
    NAD_BEING_DELETED = "NAD_BEING_DELETED"
    NAD_CONFIG_INVALID = "NAD_CONFIG_INVALID"
    NAD_NOT_BRIDGE = "NAD_NOT_BRIDGE"
    NAD_SYSTEM_NAMESPACE = "NAD_SYSTEM_NAMESPACE"

    # The interface being added.
    INTERFACE_NAME_INVALID = "INTERFACE_NAME_INVALID"
    INTERFACE_NAME_TAKEN = "INTERFACE_NAME_TAKEN"
    MAC_INVALID = "MAC_INVALID"
    MAC_NOT_UNICAST = "MAC_NOT_UNICAST"
    MAC_IN_USE = "MAC_IN_USE"
    ROOT_PORTS_EXHAUSTED = "ROOT_PORTS_EXHAUSTED"

    # The interface being removed.
    INTERFACE_NOT_FOUND = "INTERFACE_NOT_FOUND"
    INTERFACE_NOT_BRIDGE = "INTERFACE_NOT_BRIDGE"
    INTERFACE_NOT_VIRTIO = "INTERFACE_NOT_VIRTIO"
    INTERFACE_ON_POD_NETWORK = "INTERFACE_ON_POD_NETWORK"
    INTERFACE_ALREADY_ABSENT = "INTERFACE_ALREADY_ABSENT"
    INTERFACE_ORDINAL_NAME = "INTERFACE_ORDINAL_NAME"
    LAST_INTERFACE = "LAST_INTERFACE"

    @property
    def description(self) -> str:
        """One line that `nicflow plan` prints beside the code."""
        return DESCRIPTIONS[self]


DESCRIPTIONS: dict[Reason, str] = {
    Reason.VM_NOT_FOUND: "The VM does not exist in the namespace given.",
    Reason.VM_BEING_DELETED: "The VM has a deletion timestamp and is being deleted.",
    Reason.VM_NOT_RUNNING: "The VM is neither running nor stopped, for example starting or stopping.",
    Reason.VM_NOT_READY: "The VMI is running but its Ready condition is not True.",
    Reason.GUEST_CLUSTER_NODE: "The VM is a guest-cluster node created by Rancher's Harvester node driver.",
    Reason.MAC_MISSING_IN_SPEC: "Some interfaces of the running VM have no macAddress in the VM spec.",
    Reason.MIGRATION_IN_PROGRESS: "A migration (VMIM) of the VMI has not finished yet.",
    Reason.KUBEVIRT_NOT_READY: "The KubeVirt CR does not report Available=True with reason AllComponentsReady.",
    Reason.NOT_LIVE_MIGRATABLE: "Harvester's live-migration check rejects the VMI.",
    Reason.NO_MIGRATION_TARGET: "No other schedulable Ready node can receive the VMI with the new network.",
    Reason.NETWORK_NAME_INVALID: "The network is not of the form <namespace>/<name> or <name>.",
    Reason.NAD_NOT_FOUND: "The NetworkAttachmentDefinition of the network does not exist.",
    Reason.NAD_BEING_DELETED: "The NetworkAttachmentDefinition has a deletion timestamp.",
    Reason.NAD_CONFIG_INVALID: "The NetworkAttachmentDefinition's spec.config is not a JSON object.",
    Reason.NAD_NOT_BRIDGE: "The NetworkAttachmentDefinition's CNI type is not bridge, so it cannot be hot-plugged.",
    Reason.NAD_SYSTEM_NAMESPACE: "The NetworkAttachmentDefinition is a system network in harvester-system.",
    Reason.INTERFACE_NAME_INVALID: (
        "The interface name is empty, longer than 63 characters, or has characters other than A-Z, a-z, 0-9, - and _."
    ),
    Reason.INTERFACE_NAME_TAKEN: "An interface or network of the VM already has that name.",
    Reason.MAC_INVALID: "The MAC address is not a 6-byte MAC in a form Go's net.ParseMAC accepts.",
    Reason.MAC_NOT_UNICAST: "The MAC address is a multicast or broadcast address.",
    Reason.MAC_IN_USE: "The MAC address is used or reserved on the same cluster network.",
    Reason.ROOT_PORTS_EXHAUSTED: "The VM has no free PCIe root port left for another hot-plugged interface.",
    Reason.INTERFACE_NOT_FOUND: "The VM spec has no interface of that name.",
    Reason.INTERFACE_NOT_BRIDGE: "The interface does not use bridge binding.",
    Reason.INTERFACE_NOT_VIRTIO: "The interface model is neither virtio nor empty.",
    Reason.INTERFACE_ON_POD_NETWORK: "The interface is on the pod (management) network.",
    Reason.INTERFACE_ALREADY_ABSENT: "The interface is already marked absent, so an unplug is under way.",
    Reason.INTERFACE_ORDINAL_NAME: "The virt-launcher pod names the interface net<N>, so KubeVirt ignores absent.",
    Reason.LAST_INTERFACE: "The interface is the last one left once pending unplugs are counted.",
}
