"""The hash chain over events: canonical JSON, event hashes and chain verification.

hash = sha256(prev_hash + canonical JSON of the object with the keys seq, operation_id, step,
outcome, details, idempotency_key and recorded_at), as lowercase hex. Canonical JSON sorts
keys, has no whitespace, keeps non-ASCII characters as UTF-8 and writes recorded_at as
ISO 8601 in UTC with microseconds (`2026-12-04T20:07:57.123456+00:00`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from nicflow.ledger.models import GENESIS_HASH
from nicflow.ledger.rows import ChainReport


def canonical_json(value: Any) -> str:
    """Serialize `value` in the one form that hashes are computed over."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _parse_number(text: str) -> int | float:
    number = float(text)
    if number.is_integer():
        # Decimal(text) keeps the digits Python wrote, which are the digits PostgreSQL's
        # numeric stores, so 1e20 becomes the same int on both sides (and -0.0 becomes 0).
        return int(Decimal(text))
    return number


def _reject_nul(value: Any) -> None:
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("invalid event details: PostgreSQL JSONB cannot store the NUL character (\\u0000)")
    elif isinstance(value, dict):
        for key, item in value.items():
            _reject_nul(key)
            _reject_nul(item)
    elif isinstance(value, list):
        for item in value:
            _reject_nul(item)


def normalize_details(details: dict[str, Any]) -> dict[str, Any]:
    """Return `details` as the JSON value the database will give back, so that its hash verifies.

    Tuples become lists, keys become strings and integral floats become ints, because
    PostgreSQL 15's JSONB gives `1e20` back as `100000000000000000000` and `-0.0` as `0.0`.
    Raises ValueError for values that JSON cannot carry (NaN, infinity, NUL, other types).
    """
    if not isinstance(details, dict):
        raise ValueError(f"invalid event details: expected a JSON object, got {type(details).__name__}")
    try:
        text = json.dumps(details, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"invalid event details: {error}") from error
    normalized: dict[str, Any] = json.loads(text, parse_float=_parse_number)
    _reject_nul(normalized)
    return normalized


def format_timestamp(moment: datetime) -> str:
    """Format a timezone-aware timestamp as the chain hashes it."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class ChainLink:
    """The hashed fields of one event, as stored or about to be stored."""

    seq: int
    operation_id: str
    step: str
    outcome: str
    details: dict[str, Any]
    idempotency_key: str
    recorded_at: datetime
    prev_hash: str
    hash: str = ""


def compute_hash(prev_hash: str, link: ChainLink) -> str:
    """Return the hash of `link` chained after `prev_hash`."""
    payload = {
        "seq": link.seq,
        "operation_id": link.operation_id,
        "step": link.step,
        "outcome": link.outcome,
        "details": link.details,
        "idempotency_key": link.idempotency_key,
        "recorded_at": format_timestamp(link.recorded_at),
    }
    return hashlib.sha256((prev_hash + canonical_json(payload)).encode("utf-8")).hexdigest()


def verify_links(
    links: Iterable[ChainLink], head_seq: int, head_hash: str, anchors: Mapping[int, str] | None = None
) -> ChainReport:
    """Check links read in seq order against each other, the chain head and known hashes.

    Seqs start at 1 and have no gaps, each prev_hash is the previous hash, each hash matches
    its recomputed value, and the last event is the one `ledger_head` records. A deleted
    event shows as a gap (or, for the newest event, as a head mismatch), a reordered event as
    a prev_hash mismatch and an edited event as a hash mismatch.

    Someone who can write to the database can still rewrite an event and every hash after
    it. `anchors` maps seqs to hashes kept outside the database (such as `last_seq` and
    `last_hash` of an earlier report) and catches that rewrite.
    """
    anchors = anchors or {}
    expected_seq = 1
    prev_hash = GENESIS_HASH
    count = 0

    for link in links:
        count += 1
        if link.seq != expected_seq:
            return ChainReport(
                ok=False,
                events=count,
                first_broken_seq=expected_seq,
                problem=f"event seq {expected_seq} is missing: the next stored event has seq {link.seq}",
            )
        if link.prev_hash != prev_hash:
            return ChainReport(
                ok=False,
                events=count,
                first_broken_seq=link.seq,
                problem=f"prev_hash {link.prev_hash} does not match the hash {prev_hash} of the event before",
            )
        recomputed = compute_hash(prev_hash, link)
        if link.hash != recomputed:
            return ChainReport(
                ok=False,
                events=count,
                first_broken_seq=link.seq,
                problem=f"stored hash {link.hash} does not match the recomputed {recomputed}: the event was changed",
            )
        anchored = anchors.get(link.seq)
        if anchored is not None and link.hash != anchored:
            return ChainReport(
                ok=False,
                events=count,
                first_broken_seq=link.seq,
                problem=f"hash {link.hash} does not match the anchored hash {anchored}: the chain was rewritten",
            )
        prev_hash = link.hash
        expected_seq += 1

    last_seq = expected_seq - 1
    beyond = sorted(seq for seq in anchors if seq > last_seq)
    if beyond:
        return ChainReport(
            ok=False,
            events=count,
            first_broken_seq=last_seq + 1,
            problem=f"anchored event seq {beyond[0]} is missing: the chain ends at seq {last_seq}",
        )
    if last_seq != head_seq:
        return ChainReport(
            ok=False,
            events=count,
            first_broken_seq=min(last_seq, head_seq) + 1,
            problem=f"ledger_head records seq {head_seq} but the last stored event has seq {last_seq}",
        )
    if prev_hash != head_hash:
        return ChainReport(
            ok=False,
            events=count,
            first_broken_seq=last_seq,
            problem=f"ledger_head records hash {head_hash} but the last stored event has hash {prev_hash}",
        )
    return ChainReport(ok=True, events=count, last_seq=last_seq, last_hash=prev_hash)
