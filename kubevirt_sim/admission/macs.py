"""MAC address parsing and generation as Go's `net` package and Harvester v1.7 do them."""

from __future__ import annotations

import secrets

# Lengths in bytes that Go's net.ParseMAC accepts: EUI-48, EUI-64 and 20-byte InfiniBand addresses.
_PARSE_MAC_LENGTHS = (6, 8, 20)


def _hex_pair(text: bytes, separator: int | None) -> int | None:
    """Decode the two hex digits at the start of `text`, as Go's `xtoi2` does.

    A third byte, when present, must equal `separator`; None means a mismatch or a non-hex digit.
    """
    if len(text) > 2 and text[2] != separator:
        return None
    try:
        digits = text[:2].decode("ascii")
    except UnicodeDecodeError:
        return None
    if len(digits) != 2 or any(c not in "0123456789abcdefABCDEF" for c in digits):
        return None
    return int(digits, 16)


def parse_mac(text: str) -> bytes | None:
    """Parse a hardware address the way Go's `net.ParseMAC` does, returning None when Go errors.

    Accepted forms: `00:00:5e:00:53:01`, `00-00-5E-00-53-01` and `0000.5e00.5301`, each for 6-, 8-
    and 20-byte addresses. Hex digits may be upper or lower case; the separator must not change
    within one address. Go works on UTF-8 bytes, so this does too.
    """
    raw = text.encode("utf-8")
    if len(raw) < 14:
        return None

    if raw[2] in (ord(":"), ord("-")):
        if (len(raw) + 1) % 3 != 0:
            return None
        count = (len(raw) + 1) // 3
        if count not in _PARSE_MAC_LENGTHS:
            return None
        separator = raw[2]
        address = bytearray()
        for index in range(count):
            value = _hex_pair(raw[index * 3 :], separator)
            if value is None:
                return None
            address.append(value)
        return bytes(address)

    if raw[4] == ord("."):
        if (len(raw) + 1) % 5 != 0:
            return None
        count = 2 * (len(raw) + 1) // 5
        if count not in _PARSE_MAC_LENGTHS:
            return None
        separator = raw[4]
        address = bytearray()
        for offset in range(0, len(raw), 5):
            high = _hex_pair(raw[offset : offset + 2], None)
            low = _hex_pair(raw[offset + 2 :], separator)
            if high is None or low is None:
                return None
            address.extend((high, low))
        return bytes(address)

    return None


def mac_syntax_error(mac: str) -> str | None:
    """Return KubeVirt's complaint about an interface MAC, or None when KubeVirt accepts it.

    An empty MAC is accepted (KubeVirt or Harvester fills it in). KubeVirt parses with Go's
    `net.ParseMAC` and then rejects anything longer than 6 bytes.
    """
    if mac == "":
        return None
    address = parse_mac(mac)
    if address is None:
        return f"malformed MAC address ({mac})"
    if len(address) > 6:
        return f"too long MAC address ({mac})"
    return None


def generate_laa_mac() -> str:
    """Generate a random locally administered unicast MAC in lower-case colon form.

    Harvester sets bit 1 and clears bit 0 of the first octet, so the first octet ends in hex
    2, 6, A or E.
    """
    octets = bytearray(secrets.token_bytes(6))
    octets[0] |= 0x02
    octets[0] &= 0xFE
    return ":".join(f"{octet:02x}" for octet in octets)
