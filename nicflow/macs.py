"""MAC address parsing, classification and generation.

nicflow stores and compares MACs in one form, lower-case hex pairs joined by colons, because
Harvester's duplicate-MAC validator compares raw strings: `AA:BB:...` and `aa:bb:...` would
otherwise pass as two different addresses.
"""

from __future__ import annotations

import logging
import random
import re
import secrets
from collections.abc import Collection

logger = logging.getLogger(__name__)

# The 6-byte forms that Go's net.ParseMAC accepts and KubeVirt's admission therefore accepts:
# 00:00:5e:00:53:01, 00-00-5e-00-53-01 and 0000.5e00.5301, in either case.
_COLON_FORM = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")
_HYPHEN_FORM = re.compile(r"^[0-9A-Fa-f]{2}(-[0-9A-Fa-f]{2}){5}$")
_DOT_FORM = re.compile(r"^[0-9A-Fa-f]{4}(\.[0-9A-Fa-f]{4}){2}$")

# Go's net.ParseMAC also accepts 8-byte EUI-64 and 20-byte InfiniBand addresses, which a
# virtio interface cannot use; KubeVirt rejects them with "too long MAC address".
_LONG_FORMS = (
    re.compile(r"^[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){7}$"),
    re.compile(r"^[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){19}$"),
    re.compile(r"^[0-9A-Fa-f]{4}(\.[0-9A-Fa-f]{4}){3}$"),
    re.compile(r"^[0-9A-Fa-f]{4}(\.[0-9A-Fa-f]{4}){9}$"),
)

# Harvester's generator sets the locally administered bit and clears the multicast bit of the
# first octet, so its low nibble is one of 2, 6, A and E.
_LAA_LOW_NIBBLES = (0x2, 0x6, 0xA, 0xE)

# Chance of a collision per attempt is at most len(in_use) / 2**46, so this bound is only hit
# when the caller passes a broken collection.
_MAX_ALLOCATION_ATTEMPTS = 32


def normalize_mac(text: str) -> str:
    """Parse a 6-byte MAC in any form Go's net.ParseMAC accepts and return `aa:bb:cc:dd:ee:ff`.

    Raises:
        ValueError: the text is not such a MAC; the message names the text and the accepted forms.
    """
    if not isinstance(text, str):
        raise ValueError(f"MAC address {text!r} is invalid: expected a string such as 02:00:5e:00:53:01")

    candidate = text
    if _COLON_FORM.fullmatch(candidate) or _HYPHEN_FORM.fullmatch(candidate):
        digits = candidate.replace(":", "").replace("-", "")
    elif _DOT_FORM.fullmatch(candidate):
        digits = candidate.replace(".", "")
    elif any(form.fullmatch(candidate) for form in _LONG_FORMS):
        raise ValueError(
            f"MAC address {text!r} is too long: a virtio interface needs a 6-byte MAC such as 02:00:5e:00:53:01"
        )
    else:
        raise ValueError(
            f"MAC address {text!r} is invalid: use six hex pairs separated by ':' or '-', "
            "or three groups of four hex digits separated by '.', for example 02:00:5e:00:53:01"
        )

    digits = digits.lower()
    return ":".join(digits[index : index + 2] for index in range(0, 12, 2))


def _first_octet(mac: str) -> int:
    return int(normalize_mac(mac)[:2], 16)


def is_unicast(mac: str) -> bool:
    """Return whether the multicast bit (the lowest bit of the first octet) is clear.

    Raises:
        ValueError: the text is not a valid MAC.
    """
    return _first_octet(mac) & 0x01 == 0


def is_locally_administered(mac: str) -> bool:
    """Return whether the locally administered bit (the second-lowest bit of the first octet) is set.

    Raises:
        ValueError: the text is not a valid MAC.
    """
    return _first_octet(mac) & 0x02 != 0


def generate_laa_mac(rng: random.Random | None = None) -> str:
    """Generate a random locally administered unicast MAC the way Harvester's mutator does.

    The first octet ends in 2, 6, A or E. Without `rng` the bytes come from `secrets`; pass a
    seeded `random.Random` only for reproducible tests.
    """
    if rng is None:
        octets = bytearray(secrets.token_bytes(6))
        low_nibble = _LAA_LOW_NIBBLES[secrets.randbelow(len(_LAA_LOW_NIBBLES))]
    else:
        octets = bytearray(rng.getrandbits(8) for _ in range(6))
        low_nibble = rng.choice(_LAA_LOW_NIBBLES)

    octets[0] = (octets[0] & 0xF0) | low_nibble
    return ":".join(f"{octet:02x}" for octet in octets)


def allocate_mac(in_use: Collection[str], rng: random.Random | None = None) -> str:
    """Generate a locally administered unicast MAC that is not in `in_use`.

    `in_use` contains the MACs of one cluster network, in any accepted form. Entries that are not
    valid MACs are ignored with a warning, because they cannot collide with a generated one.

    Raises:
        RuntimeError: every attempt produced a MAC already in use.
    """
    unavailable: set[str] = set()
    for mac in in_use:
        try:
            unavailable.add(normalize_mac(mac))
        except ValueError as error:
            logger.warning("Ignoring an invalid MAC among those in use: %s", error)

    for _ in range(_MAX_ALLOCATION_ATTEMPTS):
        candidate = generate_laa_mac(rng)
        if candidate not in unavailable:
            return candidate

    raise RuntimeError(
        f"No free MAC found after {_MAX_ALLOCATION_ATTEMPTS} attempts among {len(unavailable)} MACs in use; "
        "check that the random source is not constant"
    )
