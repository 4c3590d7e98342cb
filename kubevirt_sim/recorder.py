"""A bounded log of every committed change, field by field, for tests to ask who changed what and when."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

# Fields whose changes are bookkeeping, not state: every write changes the resourceVersion.
_SKIPPED_FIELDS = {"metadata.resourceVersion", "metadata.managedFields"}

# Keys that identify list elements, so that a path names an interface or a condition rather than
# a position that shifts when an element is inserted.
_ELEMENT_KEYS = ("name", "type")


@dataclass(frozen=True)
class Change:
    """One changed field of one object.

    `field` is a dotted path with list elements named by key where they have one
    (`status.interfaces[name=nic-2].infoSource`) and by position otherwise (`spec.args[0]`).
    An ADDED or DELETED object is one entry with field "" and the whole object as new or old.
    `time` is the simulated time in RFC 3339.
    """

    time: str
    actor: str
    event: str
    plural: str
    namespace: str
    name: str
    field: str
    old: Any
    new: Any
    resource_version: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Recorder:
    """Ring of the newest `capacity` changes, oldest dropped first."""

    def __init__(self, capacity: int = 200_000):
        self._changes: deque[Change] = deque(maxlen=capacity)
        self._lock = threading.Lock()

    def record(self, time: str, actor: str, event: str, plural: str, old: dict | None, new: dict) -> None:
        """Append the field changes between `old` and `new` (the store calls this inside its lock)."""
        metadata = new.get("metadata", {})
        namespace = metadata.get("namespace") or ""
        name = metadata.get("name", "")
        revision = int(metadata.get("resourceVersion") or 0)

        def change(field: str, before: Any, after: Any) -> Change:
            return Change(time, actor, event, plural, namespace, name, field, before, after, revision)

        if event == "ADDED":
            entries = [change("", None, new)]
        elif event == "DELETED":
            entries = [change("", old, None)]
        else:
            entries = [change(field, before, after) for field, before, after in diff(old or {}, new)]

        with self._lock:
            self._changes.extend(entries)

    def query(
        self,
        plural: str | None = None,
        namespace: str | None = None,
        name: str | None = None,
        field_prefix: str | None = None,
        actor: str | None = None,
        since: int | str | None = None,
    ) -> list[Change]:
        """Return the recorded changes that match every given filter, oldest first.

        `since` is a resourceVersion (int, changes after it) or an RFC 3339 simulated time
        (str, changes at or after it).
        """
        with self._lock:
            changes = list(self._changes)
        selected = []
        for entry in changes:
            if plural is not None and entry.plural != plural:
                continue
            if namespace is not None and entry.namespace != namespace:
                continue
            if name is not None and entry.name != name:
                continue
            if actor is not None and entry.actor != actor:
                continue
            if field_prefix is not None and not entry.field.startswith(field_prefix):
                continue
            if isinstance(since, int) and entry.resource_version <= since:
                continue
            if isinstance(since, str) and entry.time < since:
                continue
            selected.append(entry)
        return selected

    def clear(self) -> None:
        with self._lock:
            self._changes.clear()


def diff(old: Any, new: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """List (field, old, new) for every leaf that differs; a missing side is None."""
    if path in _SKIPPED_FIELDS:
        return []
    if isinstance(old, dict) and isinstance(new, dict):
        changes: list[tuple[str, Any, Any]] = []
        for key in list(old) + [key for key in new if key not in old]:
            child = f"{path}.{key}" if path else key
            if key not in new:
                if child not in _SKIPPED_FIELDS:
                    changes.append((child, old[key], None))
            elif key not in old:
                if child not in _SKIPPED_FIELDS:
                    changes.append((child, None, new[key]))
            elif old[key] != new[key]:
                changes.extend(diff(old[key], new[key], child))
        return changes
    if isinstance(old, list) and isinstance(new, list):
        element_key = _element_key(old, new)
        if element_key is None:
            if len(old) != len(new):
                return [(path, old, new)]
            changes = []
            for index, (before, after) in enumerate(zip(old, new)):
                if before != after:
                    changes.extend(diff(before, after, f"{path}[{index}]"))
            return changes
        old_by_key = {item[element_key]: item for item in old}
        new_by_key = {item[element_key]: item for item in new}
        changes = []
        for key in list(old_by_key) + [key for key in new_by_key if key not in old_by_key]:
            child = f"{path}[{element_key}={key}]"
            before = old_by_key.get(key)
            after = new_by_key.get(key)
            if before != after:
                if before is None or after is None:
                    changes.append((child, before, after))
                else:
                    changes.extend(diff(before, after, child))
        return changes
    if old != new:
        return [(path, old, new)]
    return []


def _element_key(old: list, new: list) -> str | None:
    """Return the key that names every element of both lists uniquely, if any."""
    items = old + new
    if not items or not all(isinstance(item, dict) for item in items):
        return None
    for key in _ELEMENT_KEYS:
        if not all(key in item and isinstance(item[key], (str, int)) for item in items):
            continue
        if len({item[key] for item in old}) == len(old) and len({item[key] for item in new}) == len(new):
            return key
    return None
