"""Tests for MAC parsing, classification, generation and allocation."""

from __future__ import annotations

import random

import pytest

from nicflow.macs import allocate_mac, generate_laa_mac, is_locally_administered, is_unicast, normalize_mac


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("02:3c:8e:41:7a:10", "02:3c:8e:41:7a:10"),
        ("06:B2:19:C4:55:E1", "06:b2:19:c4:55:e1"),
        ("AA-BB-CC-DD-EE-FF", "aa:bb:cc:dd:ee:ff"),
        ("0000.5e00.5301", "00:00:5e:00:53:01"),
        ("0A0B.0C0D.0E0F", "0a:0b:0c:0d:0e:0f"),
    ],
)
def test_normalize_accepted_forms(text: str, expected: str) -> None:
    assert normalize_mac(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "02:3c:8e:41:7a",
        "02:3c:8e:41:7a:1",
        "02:3c:8e:41:7a:1g",
        "02:3c-8e:41:7a:10",
        "023c8e417a10",
        " 02:3c:8e:41:7a:10",
        "02:3c:8e:41:7a:10:",
        "0000.5e00.530",
        "02::3c:8e:41:7a:10",
        "02:3c:8e:41:7a:10\n",
        "0000.5e00.5301\n",
    ],
)
def test_normalize_rejects_malformed(text: str) -> None:
    with pytest.raises(ValueError, match="is invalid") as error:
        normalize_mac(text)
    assert repr(text) in str(error.value)


@pytest.mark.parametrize(
    "text",
    [
        "02:00:5e:10:00:00:00:01",
        "0200.5e10.0000.0001",
        "00:00:00:00:fe:80:00:00:00:00:00:00:02:00:5e:10:00:00:00:01",
    ],
)
def test_normalize_rejects_long_forms(text: str) -> None:
    with pytest.raises(ValueError, match="too long"):
        normalize_mac(text)


def test_normalize_rejects_non_string() -> None:
    with pytest.raises(ValueError, match="expected a string"):
        normalize_mac(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "unicast", "local"),
    [
        ("02:3c:8e:41:7a:10", True, True),
        ("06:b2:19:c4:55:e1", True, True),
        ("0a:51:d7:30:9c:44", True, True),
        ("00:50:56:00:00:01", True, False),
        ("01:00:5e:00:00:01", False, False),
        ("33:33:00:00:00:01", False, True),
        ("ff:ff:ff:ff:ff:ff", False, True),
        ("FE-00-00-00-00-01", True, True),
    ],
)
def test_mac_classification(text: str, unicast: bool, local: bool) -> None:
    assert is_unicast(text) is unicast
    assert is_locally_administered(text) is local


def test_classification_rejects_invalid() -> None:
    with pytest.raises(ValueError):
        is_unicast("not-a-mac")
    with pytest.raises(ValueError):
        is_locally_administered("not-a-mac")


@pytest.mark.parametrize("seed", range(50))
def test_generated_mac_follows_harvester_rule(seed: int) -> None:
    mac = generate_laa_mac(random.Random(seed))

    assert normalize_mac(mac) == mac
    assert mac[1] in "26ae"
    assert is_unicast(mac)
    assert is_locally_administered(mac)


def test_generated_mac_with_secrets() -> None:
    macs = {generate_laa_mac() for _ in range(200)}

    assert len(macs) == 200
    assert all(mac[1] in "26ae" for mac in macs)
    assert all(is_unicast(mac) and is_locally_administered(mac) for mac in macs)


def test_generated_mac_uses_every_nibble() -> None:
    rng = random.Random(7)
    low_nibbles = {generate_laa_mac(rng)[1] for _ in range(400)}
    high_nibbles = {generate_laa_mac(rng)[0] for _ in range(400)}

    assert low_nibbles == set("26ae")
    assert high_nibbles == set("0123456789abcdef")


def test_generated_mac_reproducible_with_seed() -> None:
    assert generate_laa_mac(random.Random(42)) == generate_laa_mac(random.Random(42))


def test_allocate_skips_macs_in_use() -> None:
    # The same seed replays the same first candidate, so allocation must move past it.
    first = generate_laa_mac(random.Random(3))
    allocated = allocate_mac({first.upper()}, random.Random(3))

    assert allocated != first
    assert is_unicast(allocated)
    assert is_locally_administered(allocated)


def test_allocate_ignores_invalid_entries() -> None:
    allocated = allocate_mac(["garbage", "02:3c:8e:41:7a:10"], random.Random(5))

    assert normalize_mac(allocated) == allocated


class _ConstantRandom(random.Random):
    """A random source that always yields the same bytes, to force collisions."""

    def getrandbits(self, k: int) -> int:
        return 0

    def choice(self, seq):  # type: ignore[no-untyped-def, override]
        return seq[0]


def test_allocate_fails_with_constant_source() -> None:
    constant = generate_laa_mac(_ConstantRandom())

    with pytest.raises(RuntimeError, match="No free MAC"):
        allocate_mac([constant], _ConstantRandom())
