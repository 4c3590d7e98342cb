"""The network rules of KubeVirt 1.6's `virtualmachine-validator.kubevirt.io` webhook.

Each rule returns Kubernetes StatusCauses (`{"reason", "message", "field"}`) in the order KubeVirt
appends them, and `vm_network_causes` composes them for a VM. Fields are rendered as Kubernetes field
paths, e.g. `spec.template.spec.domain.devices.interfaces[1].macAddress`. The non-network rules of
the webhook (CPU, memory, volumes, probes, instancetypes) are not simulated.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from kubevirt_sim.admission.macs import mac_syntax_error

WEBHOOK = "virtualmachine-validator.kubevirt.io"
VMI_CREATE_WEBHOOK = "virtualmachineinstances-create-validator.kubevirt.io"

INVALID = "FieldValueInvalid"
REQUIRED = "FieldValueRequired"
DUPLICATE = "FieldValueDuplicate"
NOT_SUPPORTED = "FieldValueNotSupported"

INTERFACE_MODELS = frozenset({"e1000", "e1000e", "igb", "ne2k_pci", "pcnet", "rtl8139", "virtio"})
INTERFACE_STATES = frozenset({"", "absent", "down", "up"})
BINDING_METHODS = ("bridge", "slirp", "masquerade", "sriov", "macvtap", "passt")

# Harvester v1.7's KubeVirt CR permits bridge on the pod network and enables neither the Macvtap
# nor the Passt feature gate.
BRIDGE_ON_POD_NETWORK_ENABLED = True
MACVTAP_ENABLED = False
PASST_ENABLED = False

# The apiserver-facing message lists at most this many causes (KubeVirt's ToAdmissionResponse).
MAX_REPORTED_CAUSES = 10

# Go's regexp `$` matches only at the end of the text, so these use re.fullmatch.
_INTERFACE_NAME = re.compile(r"[A-Za-z0-9\-_]+")
_PCI_ADDRESS = re.compile(r"[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]")
_PORT_NAME_CHARSET = re.compile(r"[-a-z0-9]+")
RESERVED_MASQUERADE_MAC = "02:00:00:00:00:00"


def _cause(reason: str, message: str, field: str) -> dict[str, str]:
    return {"reason": reason, "message": message, "field": field}


def _interfaces(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return ((spec.get("domain") or {}).get("devices") or {}).get("interfaces") or []


def _networks(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return spec.get("networks") or []


def _present(obj: dict[str, Any], key: str) -> bool:
    """Return whether the Go pointer field decoded from `obj[key]` would be non-nil."""
    return obj.get(key) is not None


def _interface_field(path: str, index: int, child: str | None = None) -> str:
    field = f"{path}.domain.devices.interfaces[{index}]"
    return f"{field}.{child}" if child else field


def _is_secondary_multus(network: dict[str, Any]) -> bool:
    multus = network.get("multus")
    return multus is not None and not multus.get("default", False)


def _networks_by_name(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    # Go's IndexNetworkSpecByName keeps the last network of a repeated name.
    return {network.get("name", ""): network for network in _networks(spec)}


# Network sources ------------------------------------------------------------------------------


def single_pod_network_causes(path: str, spec: dict[str, Any]) -> list[dict[str, str]]:
    """At most one pod network, at most one Multus default network, and never both."""
    causes = []
    pod_networks = [network for network in _networks(spec) if _present(network, "pod")]
    multus_defaults = [
        network for network in _networks(spec) if _present(network, "multus") and network["multus"].get("default")
    ]
    if len(pod_networks) > 1:
        causes.append(
            _cause(DUPLICATE, f"more than one interface is connected to a pod network in {path}.interfaces", f"{path}.interfaces")
        )
    if len(multus_defaults) > 1:
        causes.append(_cause(INVALID, "Multus CNI should only have one default network", f"{path}.networks"))
    if pod_networks and multus_defaults:
        causes.append(
            _cause(INVALID, "Pod network cannot be defined when Multus default network is defined", f"{path}.networks")
        )
    return causes


def network_source_causes(path: str, spec: dict[str, Any]) -> list[dict[str, str]]:
    """Require exactly one source, pod or multus, on each network."""
    causes = []
    for index, network in enumerate(_networks(spec)):
        has_pod, has_multus = _present(network, "pod"), _present(network, "multus")
        if not has_pod and not has_multus:
            causes.append(_cause(REQUIRED, "should have a network type", f"{path}.networks[{index}]"))
        elif has_pod and has_multus:
            causes.append(_cause(REQUIRED, "should have only one network type", f"{path}.networks[{index}]"))
    return causes


def multus_network_name_causes(path: str, spec: dict[str, Any]) -> list[dict[str, str]]:
    """Require a networkName on Multus networks, reporting only the first one that lacks it as KubeVirt does."""
    for index, network in enumerate(_networks(spec)):
        if _present(network, "multus") and not network["multus"].get("networkName"):
            return [_cause(REQUIRED, "CNI delegating plugin must have a networkName", f"{path}.networks[{index}]")]
    return []


# Interface state and binding ------------------------------------------------------------------


def interface_state_causes(path: str, spec: dict[str, Any]) -> list[dict[str, str]]:
    """Allowed `state` values, and `absent` only with bridge binding and off the default network.

    The default network is the first network that is not a secondary Multus network, normally the
    pod network.
    """
    causes = []
    default_network = next((network for network in _networks(spec) if not _is_secondary_multus(network)), None)
    for index, interface in enumerate(_interfaces(spec)):
        name = interface.get("name", "")
        state = interface.get("state") or ""
        field = _interface_field(path, index, "state")
        if state not in INTERFACE_STATES:
            causes.append(_cause(INVALID, f"logical {name} interface state value is unsupported: {state}", field))
        if _present(interface, "sriov") and state in ("up", "down"):
            causes.append(_cause(INVALID, f'"{name}" interface\'s state "{state}" is not supported for SR-IOV NICs', field))
        if state == "absent" and not _present(interface, "bridge"):
            causes.append(_cause(INVALID, f'"{name}" interface\'s state "absent" is supported only for bridge binding', field))
        if state == "absent" and default_network is not None and default_network.get("name") == name:
            causes.append(_cause(INVALID, f'"{name}" interface\'s state "absent" is not supported on default networks', field))
    return causes


def interface_binding_causes(path: str, spec: dict[str, Any]) -> list[dict[str, str]]:
    """Binding method against network source and the cluster's feature gates."""
    causes = []
    networks = _networks_by_name(spec)
    for index, interface in enumerate(_interfaces(spec)):
        network = networks.get(interface.get("name", ""), {})
        on_pod = _present(network, "pod")

        if _present(interface, "binding") and any(_present(interface, method) for method in BINDING_METHODS):
            causes.append(
                _cause(
                    INVALID,
                    f"logical {interface.get('name', '')} interface cannot have both binding plugin and interface binding method",
                    _interface_field(path, index, "binding"),
                )
            )
        if _present(interface, "masquerade") and not on_pod:
            causes.append(
                _cause(INVALID, "Masquerade interface only implemented with pod network", _interface_field(path, index, "name"))
            )
        if _present(interface, "masquerade") and interface.get("macAddress") == RESERVED_MASQUERADE_MAC:
            causes.append(
                _cause(
                    INVALID,
                    "The requested MAC address is reserved for the in-pod bridge. Please choose another one.",
                    _interface_field(path, index, "macAddress"),
                )
            )
        if _present(interface, "bridge") and on_pod and not BRIDGE_ON_POD_NETWORK_ENABLED:
            causes.append(
                _cause(
                    INVALID,
                    "Bridge on pod network configuration is not enabled under kubevirt-config",
                    _interface_field(path, index, "name"),
                )
            )
        if _present(interface, "macvtap") and not MACVTAP_ENABLED:
            causes.append(_cause(INVALID, "Macvtap feature gate is not enabled", _interface_field(path, index, "name")))
        if _present(interface, "macvtap") and not _present(network, "multus"):
            causes.append(
                _cause(INVALID, "Macvtap interface only implemented with Multus network", _interface_field(path, index, "name"))
            )
        if _present(interface, "passt") and not PASST_ENABLED:
            causes.append(_cause(INVALID, "Passt feature gate is not enabled", _interface_field(path, index, "name")))
        if _present(interface, "passt") and not on_pod:
            causes.append(
                _cause(INVALID, "Passt interface only implemented with pod network", _interface_field(path, index, "name"))
            )
    return causes


def slirp_creation_causes(path: str, spec: dict[str, Any]) -> list[dict[str, str]]:
    """Slirp binding is refused on create since KubeVirt 1.3."""
    return [
        _cause(INVALID, "Slirp interface support has been discontinued since v1.3", _interface_field(path, index, "slirp"))
        for index, interface in enumerate(_interfaces(spec))
        if _present(interface, "slirp")
    ]


# Names ----------------------------------------------------------------------------------------


def network_name_unique_causes(path: str, spec: dict[str, Any]) -> list[dict[str, str]]:
    causes = []
    seen: set[str] = set()
    for index, network in enumerate(_networks(spec)):
        name = network.get("name", "")
        if name in seen:
            causes.append(
                _cause(
                    DUPLICATE,
                    f'Network with name "{name}" already exists, every network must have a unique name',
                    f"{path}.networks[{index}].name",
                )
            )
        seen.add(name)
    return causes


def networks_without_interface_causes(path: str, spec: dict[str, Any]) -> list[dict[str, str]]:
    interface_names = {interface.get("name", "") for interface in _interfaces(spec)}
    causes = []
    for index, network in enumerate(_networks(spec)):
        name = network.get("name", "")
        if name not in interface_names:
            field = f"{path}.networks[{index}].name"
            causes.append(_cause(REQUIRED, f"{field} '{name}' not found.", field))
    return causes


def interface_name_unique_causes(path: str, spec: dict[str, Any]) -> list[dict[str, str]]:
    causes = []
    seen: set[str] = set()
    for index, interface in enumerate(_interfaces(spec)):
        name = interface.get("name", "")
        if name in seen:
            causes.append(
                _cause(DUPLICATE, "Only one interface can be connected to one specific network", _interface_field(path, index, "name"))
            )
        seen.add(name)
    return causes


def interfaces_without_network_causes(path: str, spec: dict[str, Any]) -> list[dict[str, str]]:
    network_names = {network.get("name", "") for network in _networks(spec)}
    causes = []
    for index, interface in enumerate(_interfaces(spec)):
        name = interface.get("name", "")
        if name not in network_names:
            field = _interface_field(path, index, "name")
            causes.append(_cause(INVALID, f"{field} '{name}' not found.", field))
    return causes


# Per-interface fields -------------------------------------------------------------------------


def interface_field_causes(path: str, spec: dict[str, Any]) -> list[dict[str, str]]:
    """Name format, model, MAC syntax, PCI address, forwarded ports and DHCP options of each interface."""
    causes = []
    networks = _networks_by_name(spec)
    for index, interface in enumerate(_interfaces(spec)):
        name_field = _interface_field(path, index, "name")

        if not _INTERFACE_NAME.fullmatch(interface.get("name", "")):
            causes.append(
                _cause(
                    INVALID,
                    "Network interface name can only contain alphabetical characters, numbers, dashes (-) or underscores (_)",
                    name_field,
                )
            )

        model = interface.get("model") or ""
        if model and model not in INTERFACE_MODELS:
            causes.append(
                _cause(
                    NOT_SUPPORTED,
                    f"interface {name_field} uses model {model} that is not supported.",
                    _interface_field(path, index, "model"),
                )
            )

        mac_error = mac_syntax_error(interface.get("macAddress") or "")
        if mac_error:
            causes.append(_cause(INVALID, f"interface {name_field} has {mac_error}.", _interface_field(path, index, "macAddress")))

        pci_address = interface.get("pciAddress") or ""
        if pci_address and not _PCI_ADDRESS.fullmatch(pci_address):
            causes.append(
                _cause(
                    INVALID,
                    f"interface {name_field} has malformed PCI address ({pci_address}).",
                    _interface_field(path, index, "pciAddress"),
                )
            )

        network = networks.get(interface.get("name", ""), {})
        if _present(network, "pod") and interface.get("ports") is not None:
            causes.extend(_port_causes(path, index, interface["ports"]))

        if _present(interface, "dhcpOptions"):
            causes.extend(_dhcp_causes(path, index, interface["dhcpOptions"]))
    return causes


def _is_invalid_port_name(name: str) -> bool:
    """Return whether `name` breaks the Kubernetes IANA port-name rules."""
    return (
        len(name) > 15
        or not _PORT_NAME_CHARSET.fullmatch(name)
        or not re.search(r"[a-z]", name)
        or "--" in name
        or name.startswith("-")
        or name.endswith("-")
    )


def _port_causes(path: str, index: int, ports: list[dict[str, Any]]) -> list[dict[str, str]]:
    causes = []
    seen: set[str] = set()
    for port_index, port in enumerate(ports):
        name = port.get("name") or ""
        if not name:
            continue
        field = _interface_field(path, index, f"ports[{port_index}].name")
        if name in seen:
            causes.append(_cause(DUPLICATE, f"Duplicate name of the port: {name}", field))
        if _is_invalid_port_name(name):
            causes.append(_cause(INVALID, f"Invalid name of the port: {name}", field))
        seen.add(name)

    for port_index, port in enumerate(ports):
        field = _interface_field(path, index, f"ports[{port_index}]")
        number = port.get("port") or 0
        if number == 0:
            causes.append(_cause(REQUIRED, "Port field is mandatory.", field))
        # KubeVirt's bound is off by one: it lets 65536 through.
        if number < 0 or number > 65536:
            causes.append(_cause(INVALID, "Port field must be in range 0 < x < 65536.", field))
        protocol = port.get("protocol") or ""
        if protocol and protocol not in ("TCP", "UDP"):
            causes.append(_cause(INVALID, "Unknown protocol, only TCP or UDP allowed", f"{field}.protocol"))
    return causes


def _is_ipv4(text: str) -> bool:
    """Return whether Go's `net.ParseIP(text).To4()` is non-nil, which holds for IPv4 and IPv4-mapped IPv6."""
    if "%" in text:
        return False
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv4Address):
        return True
    return address.ipv4_mapped is not None


def _dhcp_causes(path: str, index: int, options: dict[str, Any]) -> list[dict[str, str]]:
    causes = []
    private_options = options.get("privateOptions") or []
    option_numbers = [option.get("option", 0) for option in private_options]
    # KubeVirt reports these two against the spec path itself, not the interface.
    if len(set(option_numbers)) < len(option_numbers):
        causes.append(_cause(INVALID, "Found Duplicates: you have provided duplicate DHCPPrivateOptions", path))
    for number in option_numbers:
        if not 224 <= number <= 254:
            causes.append(_cause(INVALID, "provided DHCPPrivateOptions are out of range, must be in range 224 to 254", path))

    for server_index, server in enumerate(options.get("ntpServers") or []):
        if not _is_ipv4(server):
            causes.append(
                _cause(
                    INVALID,
                    "NTP servers must be a list of valid IPv4 addresses.",
                    _interface_field(path, index, f"dhcpOptions.ntpServers[{server_index}]"),
                )
            )
    return causes


# Composition ----------------------------------------------------------------------------------


def network_causes(path: str, spec: dict[str, Any]) -> list[dict[str, str]]:
    """Run KubeVirt's network validator over one VMI spec, in KubeVirt's order."""
    causes: list[dict[str, str]] = []
    causes += single_pod_network_causes(path, spec)
    causes += network_source_causes(path, spec)
    causes += multus_network_name_causes(path, spec)
    causes += interface_state_causes(path, spec)
    causes += interface_binding_causes(path, spec)
    causes += network_name_unique_causes(path, spec)
    causes += networks_without_interface_causes(path, spec)
    causes += interface_name_unique_causes(path, spec)
    causes += interfaces_without_network_causes(path, spec)
    causes += interface_field_causes(path, spec)
    return causes


def vm_network_causes(operation: str, vm: dict[str, Any]) -> list[dict[str, str]]:
    """Return the causes KubeVirt's VM validator reports for the networks of `vm`, first to last.

    On create, the slirp check runs first and stops validation when it fails; KubeVirt reports it
    under `spec.domain...` (without `template.spec`), and so does this. A VM without a template gets
    the single `missing virtual machine template.` cause.
    """
    spec = vm.get("spec") or {}
    template = spec.get("template")
    if template is None:
        return [_cause(REQUIRED, "missing virtual machine template.", "spec.template")]
    template_spec = template.get("spec") or {}

    if operation == "CREATE":
        slirp = slirp_creation_causes("spec", template_spec)
        if slirp:
            return slirp
    return network_causes("spec.template.spec", template_spec)


def vmi_create_network_causes(vmi: dict[str, Any]) -> list[dict[str, str]]:
    """Return the network causes of KubeVirt's VMI create validator, fields under `spec`.

    KubeVirt 1.6 runs the network validator twice on a VMI create, once registered as an extra
    spec validator and once inside the shared VMI spec validation, so each network cause appears
    twice.
    """
    spec = vmi.get("spec") or {}
    causes = slirp_creation_causes("spec", spec) + network_causes("spec", spec)
    return causes + network_causes("spec", spec)


def denial_message(causes: list[dict[str, str]]) -> tuple[str, list[dict[str, str]]]:
    """Join cause messages with ", " as KubeVirt does, keeping at most ten causes.

    Returns the message and the causes that KubeVirt puts in the Status details.
    """
    reported = causes[:MAX_REPORTED_CAUSES]
    message = ", ".join(cause["message"] for cause in reported)
    if len(causes) > MAX_REPORTED_CAUSES:
        message = f"{message}, and {len(causes) - MAX_REPORTED_CAUSES} more validation errors"
    return message, reported
