"""MAC parsing as Go's net.ParseMAC does it, KubeVirt's MAC rule and Harvester's MAC generator."""

from __future__ import annotations

import re

import pytest

from kubevirt_sim.admission.macs import generate_laa_mac, mac_syntax_error, parse_mac

ACCEPTED = [
    ("0a:1b:2c:3d:4e:5f", bytes.fromhex("0a1b2c3d4e5f")),
    ("0A-1B-2C-3D-4E-5F", bytes.fromhex("0a1b2c3d4e5f")),
    ("0a1b.2c3d.4e5f", bytes.fromhex("0a1b2c3d4e5f")),
    ("Aa:bB:cc:DD:ee:FF", bytes.fromhex("aabbccddeeff")),
    ("06:11:22:33:44:55:66:77", bytes.fromhex("0611223344556677")),
    ("0611.2233.4455.6677", bytes.fromhex("0611223344556677")),
    ("-".join(["a0"] * 20), bytes.fromhex("a0" * 20)),
]

REJECTED = [
    "0a:1b:2c:3d:4e",  # too short to be any form
    "0a:1b:2c:3d:4e:5f:",  # trailing separator
    "0a:1b-2c:3d:4e:5f",  # separator changes
    "0a-1b-2c-3d-4e:5f",
    "0a:1b:2c:3d:4e:5g",  # not hex
    "0a:1b:2c:3d:4e:5f:60",  # 7 bytes is no accepted length
    "0a.1b.2c.3d.4e.5f",  # dots only come in groups of four digits
    "0a1b:2c3d:4e5f",
    "0a1b-2c3d-4e5f",
    "0a:1b:2c:3d:4e:5\u00e9",  # non-ASCII
    "0a1b2c3d4e5f0a1b",  # no separator
    "",
]


@pytest.mark.parametrize(("text", "expected"), ACCEPTED)
def test_parse_mac_accepts_go_forms(text: str, expected: bytes) -> None:
    assert parse_mac(text) == expected


@pytest.mark.parametrize("text", REJECTED)
def test_parse_mac_rejects(text: str) -> None:
    assert parse_mac(text) is None


@pytest.mark.parametrize(
    ("mac", "expected"),
    [
        ("", None),
        ("02:3c:8e:41:7a:10", None),
        ("02-3C-8E-41-7A-10", None),
        ("023c.8e41.7a10", None),
        ("02:3c:8e:41:7a", "malformed MAC address (02:3c:8e:41:7a)"),
        ("not-a-mac-address", "malformed MAC address (not-a-mac-address)"),
        ("06:11:22:33:44:55:66:77", "too long MAC address (06:11:22:33:44:55:66:77)"),
        ("0611.2233.4455.6677", "too long MAC address (0611.2233.4455.6677)"),
    ],
)
def test_mac_syntax_error(mac: str, expected: str | None) -> None:
    assert mac_syntax_error(mac) == expected


def test_generated_mac_format() -> None:
    for _ in range(200):
        mac = generate_laa_mac()
        assert re.fullmatch(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}", mac), mac


def test_generated_mac_is_local_unicast() -> None:
    for _ in range(200):
        first_octet = int(generate_laa_mac()[:2], 16)
        assert first_octet & 0x02, "locally administered bit must be set"
        assert not first_octet & 0x01, "multicast bit must be clear"


def test_generated_macs_differ() -> None:
    macs = {generate_laa_mac() for _ in range(200)}
    assert len(macs) == 200
