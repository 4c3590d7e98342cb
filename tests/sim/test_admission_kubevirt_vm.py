"""The network rules of KubeVirt's virtualmachine-validator.kubevirt.io, as pure functions."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kubevirt_sim.admission import kubevirt_vm

PATH = "spec.template.spec"
IFACES = f"{PATH}.domain.devices.interfaces"


def spec(interfaces: list[dict[str, Any]], networks: list[dict[str, Any]]) -> dict[str, Any]:
    return {"domain": {"devices": {"interfaces": interfaces}}, "networks": networks}


def vm_with(template_spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": "web-01", "namespace": "default"},
        "spec": {"template": {"spec": template_spec}},
    }


POD = {"name": "default", "pod": {}}
MASQUERADE = {"name": "default", "model": "virtio", "masquerade": {}, "macAddress": "02:3c:8e:41:7a:10"}
VLAN_NET = {"name": "nic-vlan100", "multus": {"networkName": "default/vlan100"}}
VLAN_IFACE = {"name": "nic-vlan100", "model": "virtio", "bridge": {}, "macAddress": "06:b2:19:c4:55:e1"}
VALID = spec([MASQUERADE, VLAN_IFACE], [POD, VLAN_NET])


def messages(causes: list[dict[str, str]]) -> list[str]:
    return [cause["message"] for cause in causes]


def fields(causes: list[dict[str, str]]) -> list[str]:
    return [cause["field"] for cause in causes]


def test_valid_spec_has_no_causes() -> None:
    assert kubevirt_vm.network_causes(PATH, VALID) == []


# (rule, spec, expected messages, expected fields)
RULE_CASES = [
    (
        kubevirt_vm.single_pod_network_causes,
        spec([MASQUERADE, {**VLAN_IFACE, "name": "second"}], [POD, {"name": "second", "pod": {}}]),
        [f"more than one interface is connected to a pod network in {PATH}.interfaces"],
        [f"{PATH}.interfaces"],
    ),
    (
        kubevirt_vm.single_pod_network_causes,
        spec([], [POD, {"name": "m", "multus": {"networkName": "default/a", "default": True}}]),
        ["Pod network cannot be defined when Multus default network is defined"],
        [f"{PATH}.networks"],
    ),
    (
        kubevirt_vm.network_source_causes,
        spec([], [{"name": "nothing"}]),
        ["should have a network type"],
        [f"{PATH}.networks[0]"],
    ),
    (
        kubevirt_vm.network_source_causes,
        spec([], [{"name": "both", "pod": {}, "multus": {"networkName": "default/a"}}]),
        ["should have only one network type"],
        [f"{PATH}.networks[0]"],
    ),
    (
        kubevirt_vm.multus_network_name_causes,
        spec([], [POD, {"name": "a", "multus": {"networkName": ""}}, {"name": "b", "multus": {}}]),
        ["CNI delegating plugin must have a networkName"],
        [f"{PATH}.networks[1]"],
    ),
    (
        kubevirt_vm.interface_state_causes,
        spec([MASQUERADE, {**VLAN_IFACE, "state": "gone"}], [POD, VLAN_NET]),
        ["logical nic-vlan100 interface state value is unsupported: gone"],
        [f"{IFACES}[1].state"],
    ),
    (
        kubevirt_vm.interface_state_causes,
        spec([{**MASQUERADE, "state": "absent"}, VLAN_IFACE], [POD, VLAN_NET]),
        [
            "\"default\" interface's state \"absent\" is supported only for bridge binding",
            "\"default\" interface's state \"absent\" is not supported on default networks",
        ],
        [f"{IFACES}[0].state", f"{IFACES}[0].state"],
    ),
    (
        kubevirt_vm.interface_state_causes,
        spec(
            [{"name": "default", "bridge": {}, "state": "absent"}, VLAN_IFACE],
            [POD, VLAN_NET],
        ),
        ["\"default\" interface's state \"absent\" is not supported on default networks"],
        [f"{IFACES}[0].state"],
    ),
    (
        kubevirt_vm.interface_state_causes,
        spec([MASQUERADE, {"name": "nic-sriov", "sriov": {}, "state": "absent"}], [POD, {**VLAN_NET, "name": "nic-sriov"}]),
        ["\"nic-sriov\" interface's state \"absent\" is supported only for bridge binding"],
        [f"{IFACES}[1].state"],
    ),
    (
        kubevirt_vm.interface_state_causes,
        spec([MASQUERADE, {"name": "nic-sriov", "sriov": {}, "state": "down"}], [POD, {**VLAN_NET, "name": "nic-sriov"}]),
        ["\"nic-sriov\" interface's state \"down\" is not supported for SR-IOV NICs"],
        [f"{IFACES}[1].state"],
    ),
    (
        kubevirt_vm.interface_binding_causes,
        spec([{**VLAN_IFACE, "bridge": None, "masquerade": {}}], [VLAN_NET]),
        ["Masquerade interface only implemented with pod network"],
        [f"{IFACES}[0].name"],
    ),
    (
        kubevirt_vm.interface_binding_causes,
        spec([{**MASQUERADE, "macAddress": "02:00:00:00:00:00"}], [POD]),
        ["The requested MAC address is reserved for the in-pod bridge. Please choose another one."],
        [f"{IFACES}[0].macAddress"],
    ),
    (
        kubevirt_vm.interface_binding_causes,
        spec([{**VLAN_IFACE, "binding": {"name": "managedtap"}}], [VLAN_NET]),
        ["logical nic-vlan100 interface cannot have both binding plugin and interface binding method"],
        [f"{IFACES}[0].binding"],
    ),
    (
        kubevirt_vm.interface_binding_causes,
        spec([{"name": "default", "macvtap": {}}], [POD]),
        ["Macvtap feature gate is not enabled", "Macvtap interface only implemented with Multus network"],
        [f"{IFACES}[0].name", f"{IFACES}[0].name"],
    ),
    (
        kubevirt_vm.interface_binding_causes,
        spec([{"name": "nic-vlan100", "passt": {}}], [VLAN_NET]),
        ["Passt feature gate is not enabled", "Passt interface only implemented with pod network"],
        [f"{IFACES}[0].name", f"{IFACES}[0].name"],
    ),
    (
        kubevirt_vm.network_name_unique_causes,
        spec([MASQUERADE, VLAN_IFACE], [POD, VLAN_NET, VLAN_NET]),
        ['Network with name "nic-vlan100" already exists, every network must have a unique name'],
        [f"{PATH}.networks[2].name"],
    ),
    (
        kubevirt_vm.networks_without_interface_causes,
        spec([MASQUERADE], [POD, VLAN_NET]),
        [f"{PATH}.networks[1].name 'nic-vlan100' not found."],
        [f"{PATH}.networks[1].name"],
    ),
    (
        kubevirt_vm.interface_name_unique_causes,
        spec([MASQUERADE, VLAN_IFACE, VLAN_IFACE], [POD, VLAN_NET]),
        ["Only one interface can be connected to one specific network"],
        [f"{IFACES}[2].name"],
    ),
    (
        kubevirt_vm.interfaces_without_network_causes,
        spec([MASQUERADE, VLAN_IFACE], [POD]),
        [f"{IFACES}[1].name 'nic-vlan100' not found."],
        [f"{IFACES}[1].name"],
    ),
]


@pytest.mark.parametrize(("rule", "bad_spec", "expected_messages", "expected_fields"), RULE_CASES)
def test_rule_rejects(rule: Any, bad_spec: dict[str, Any], expected_messages: list[str], expected_fields: list[str]) -> None:
    causes = rule(PATH, bad_spec)
    assert messages(causes) == expected_messages
    assert fields(causes) == expected_fields


@pytest.mark.parametrize("rule", sorted({case[0] for case in RULE_CASES}, key=lambda rule: rule.__name__))
def test_rule_accepts_valid_spec(rule: Any) -> None:
    assert rule(PATH, VALID) == []


@pytest.mark.parametrize("state", ["", "up", "down"])
def test_state_accepts_link_states(state: str) -> None:
    causes = kubevirt_vm.interface_state_causes(PATH, spec([MASQUERADE, {**VLAN_IFACE, "state": state}], [POD, VLAN_NET]))
    assert causes == []


def test_state_accepts_absent_on_bridge() -> None:
    causes = kubevirt_vm.interface_state_causes(PATH, spec([MASQUERADE, {**VLAN_IFACE, "state": "absent"}], [POD, VLAN_NET]))
    assert causes == []


@pytest.mark.parametrize(
    ("name", "valid"),
    [("nic-2", True), ("NIC_2", True), ("a", True), ("", False), ("nic 2", False), ("nic.2", False), ("nic-2\n", False)],
)
def test_interface_name_format(name: str, valid: bool) -> None:
    causes = kubevirt_vm.interface_field_causes(PATH, spec([{**VLAN_IFACE, "name": name}], [{**VLAN_NET, "name": name}]))
    expected = (
        []
        if valid
        else ["Network interface name can only contain alphabetical characters, numbers, dashes (-) or underscores (_)"]
    )
    assert messages(causes) == expected


@pytest.mark.parametrize("model", sorted(kubevirt_vm.INTERFACE_MODELS) + [""])
def test_model_accepted(model: str) -> None:
    causes = kubevirt_vm.interface_field_causes(PATH, spec([{**VLAN_IFACE, "model": model}], [VLAN_NET]))
    assert causes == []


def test_model_rejected() -> None:
    causes = kubevirt_vm.interface_field_causes(PATH, spec([MASQUERADE, {**VLAN_IFACE, "model": "virtio-net"}], [POD, VLAN_NET]))
    assert messages(causes) == [f"interface {IFACES}[1].name uses model virtio-net that is not supported."]
    assert fields(causes) == [f"{IFACES}[1].model"]
    assert causes[0]["reason"] == "FieldValueNotSupported"


@pytest.mark.parametrize(
    ("mac", "expected"),
    [
        ("0a:51:d7:30:9c:44", []),
        ("0A-51-D7-30-9C-44", []),
        ("0a:51:d7:30:9c", [f"interface {IFACES}[0].name has malformed MAC address (0a:51:d7:30:9c)."]),
        (
            "0a:51:d7:30:9c:44:00:01",
            [f"interface {IFACES}[0].name has too long MAC address (0a:51:d7:30:9c:44:00:01)."],
        ),
    ],
)
def test_mac_syntax(mac: str, expected: list[str]) -> None:
    causes = kubevirt_vm.interface_field_causes(PATH, spec([{**VLAN_IFACE, "macAddress": mac}], [VLAN_NET]))
    assert messages(causes) == expected
    assert fields(causes) == [f"{IFACES}[0].macAddress"] * len(expected)


def test_pci_address() -> None:
    good = kubevirt_vm.interface_field_causes(PATH, spec([{**VLAN_IFACE, "pciAddress": "0000:81:00.1"}], [VLAN_NET]))
    bad = kubevirt_vm.interface_field_causes(PATH, spec([{**VLAN_IFACE, "pciAddress": "0000:81:00.8"}], [VLAN_NET]))
    assert good == []
    assert messages(bad) == [f"interface {IFACES}[0].name has malformed PCI address (0000:81:00.8)."]


def test_ports_on_pod_network() -> None:
    ports = [{"name": "http", "port": 80}, {"name": "http", "port": 0, "protocol": "SCTP"}, {"name": "Bad--", "port": 70000}]
    causes = kubevirt_vm.interface_field_causes(PATH, spec([{**MASQUERADE, "ports": ports}], [POD]))
    assert messages(causes) == [
        "Duplicate name of the port: http",
        "Invalid name of the port: Bad--",
        "Port field is mandatory.",
        "Unknown protocol, only TCP or UDP allowed",
        "Port field must be in range 0 < x < 65536.",
    ]
    assert fields(causes) == [
        f"{IFACES}[0].ports[1].name",
        f"{IFACES}[0].ports[2].name",
        f"{IFACES}[0].ports[1]",
        f"{IFACES}[0].ports[1].protocol",
        f"{IFACES}[0].ports[2]",
    ]


def test_ports_ignored_on_multus() -> None:
    causes = kubevirt_vm.interface_field_causes(PATH, spec([{**VLAN_IFACE, "ports": [{"port": 0}]}], [VLAN_NET]))
    assert causes == []


def test_dhcp_options() -> None:
    options = {"privateOptions": [{"option": 240, "value": "a"}, {"option": 240, "value": "b"}, {"option": 100}], "ntpServers": ["192.0.2.1", "::ffff:192.0.2.2", "2001:db8::1"]}
    causes = kubevirt_vm.interface_field_causes(PATH, spec([{**VLAN_IFACE, "dhcpOptions": options}], [VLAN_NET]))
    assert messages(causes) == [
        "Found Duplicates: you have provided duplicate DHCPPrivateOptions",
        "provided DHCPPrivateOptions are out of range, must be in range 224 to 254",
        "NTP servers must be a list of valid IPv4 addresses.",
    ]
    assert fields(causes) == [PATH, PATH, f"{IFACES}[0].dhcpOptions.ntpServers[2]"]


def test_repeated_nic_gives_both_duplicates() -> None:
    """Harvester appends the interface and the network, so a repeated name breaks both lists."""
    template = spec([MASQUERADE, VLAN_IFACE, {**VLAN_IFACE, "macAddress": ""}], [POD, VLAN_NET, VLAN_NET])
    causes = kubevirt_vm.vm_network_causes("UPDATE", vm_with(template))
    assert messages(causes) == [
        'Network with name "nic-vlan100" already exists, every network must have a unique name',
        "Only one interface can be connected to one specific network",
    ]


def test_causes_keep_kubevirt_order() -> None:
    template = spec([MASQUERADE, {"name": "bad name", "bridge": {}, "macAddress": "xx", "state": "gone"}], [POD, {"name": "other", "multus": {"networkName": ""}}])
    causes = kubevirt_vm.vm_network_causes("UPDATE", vm_with(template))
    assert messages(causes) == [
        "CNI delegating plugin must have a networkName",
        "logical bad name interface state value is unsupported: gone",
        f"{PATH}.networks[1].name 'other' not found.",
        f"{IFACES}[1].name 'bad name' not found.",
        "Network interface name can only contain alphabetical characters, numbers, dashes (-) or underscores (_)",
        f"interface {IFACES}[1].name has malformed MAC address (xx).",
    ]


def test_missing_template() -> None:
    causes = kubevirt_vm.vm_network_causes("CREATE", {"metadata": {"name": "x"}, "spec": {}})
    assert messages(causes) == ["missing virtual machine template."]
    assert fields(causes) == ["spec.template"]


def test_slirp_rejected_on_create_only() -> None:
    template = spec([{"name": "default", "slirp": {}}], [POD])
    on_create = kubevirt_vm.vm_network_causes("CREATE", vm_with(template))
    on_update = kubevirt_vm.vm_network_causes("UPDATE", vm_with(template))
    assert messages(on_create) == ["Slirp interface support has been discontinued since v1.3"]
    assert fields(on_create) == ["spec.domain.devices.interfaces[0].slirp"]
    assert on_update == []


def test_vm_network_causes_valid() -> None:
    assert kubevirt_vm.vm_network_causes("CREATE", vm_with(copy.deepcopy(VALID))) == []


def test_denial_message_joins() -> None:
    causes = [{"reason": "FieldValueInvalid", "message": f"m{index}", "field": "f"} for index in range(3)]
    message, reported = kubevirt_vm.denial_message(causes)
    assert message == "m0, m1, m2"
    assert reported == causes


def test_denial_message_truncates() -> None:
    causes = [{"reason": "FieldValueInvalid", "message": f"m{index}", "field": "f"} for index in range(12)]
    message, reported = kubevirt_vm.denial_message(causes)
    assert message == ", ".join(f"m{index}" for index in range(10)) + ", and 2 more validation errors"
    assert reported == causes[:10]


def test_vmi_create_valid() -> None:
    assert kubevirt_vm.vmi_create_network_causes({"spec": copy.deepcopy(VALID)}) == []


def test_vmi_create_causes_repeat() -> None:
    """KubeVirt runs the network validator twice on a VMI create, so each cause comes twice."""
    causes = kubevirt_vm.vmi_create_network_causes({"spec": spec([MASQUERADE, {**VLAN_IFACE, "model": "rtl"}], [POD, VLAN_NET])})
    expected = "interface spec.domain.devices.interfaces[1].name uses model rtl that is not supported."
    assert messages(causes) == [expected, expected]
    assert fields(causes) == ["spec.domain.devices.interfaces[1].model"] * 2


def test_vmi_create_slirp_first() -> None:
    causes = kubevirt_vm.vmi_create_network_causes({"spec": spec([{"name": "default", "slirp": {}, "model": "rtl"}], [POD])})
    assert messages(causes)[0] == "Slirp interface support has been discontinued since v1.3"
    assert len(causes) == 3
