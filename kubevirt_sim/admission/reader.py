"""The read access that the webhooks need to other objects of the cluster."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any, Protocol


class ObjectReader(Protocol):
    """Read-only view of stored objects; `kubevirt_sim.store.Store` satisfies it.

    The webhooks call it while the store holds its re-entrant lock, so it must not write.
    """

    def try_get(self, plural: str, namespace: str | None, name: str) -> dict[str, Any] | None: ...

    def list(
        self,
        plural: str,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> tuple[list[dict[str, Any]], str]: ...


class DictReader:
    """An `ObjectReader` over a fixed set of objects, for running the webhook rules without a store.

    `label_selector` supports only the `key=value` form that the webhooks use, and a
    `field_selector` raises ValueError.
    """

    def __init__(self, objects: Iterable[tuple[str, dict[str, Any]]] = ()):
        self._objects: list[tuple[str, dict[str, Any]]] = []
        for plural, obj in objects:
            self.add(plural, obj)

    def add(self, plural: str, obj: dict[str, Any]) -> None:
        """Store a deep copy of `obj` under `plural`, replacing any object with the same namespace and name."""
        metadata = obj.get("metadata") or {}
        key = (plural, metadata.get("namespace"), metadata.get("name"))
        self._objects = [entry for entry in self._objects if _key(entry) != key]
        self._objects.append((plural, copy.deepcopy(obj)))

    def try_get(self, plural: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        for entry in self._objects:
            if _key(entry) == (plural, namespace, name):
                return copy.deepcopy(entry[1])
        return None

    def list(
        self,
        plural: str,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> tuple[list[dict[str, Any]], str]:
        if field_selector:
            raise ValueError(f"DictReader does not support field selectors, got {field_selector!r}")
        required_labels = _parse_label_selector(label_selector) if label_selector else {}

        items = []
        for entry_plural, obj in self._objects:
            metadata = obj.get("metadata") or {}
            if entry_plural != plural:
                continue
            if namespace is not None and metadata.get("namespace") != namespace:
                continue
            labels = metadata.get("labels") or {}
            if any(labels.get(key) != value for key, value in required_labels.items()):
                continue
            items.append(copy.deepcopy(obj))
        return items, "0"


def _key(entry: tuple[str, dict[str, Any]]) -> tuple[str, str | None, str | None]:
    plural, obj = entry
    metadata = obj.get("metadata") or {}
    return plural, metadata.get("namespace"), metadata.get("name")


def _parse_label_selector(selector: str) -> dict[str, str]:
    """Parse `a=b,c==d` into {a: b, c: d}, raising ValueError for any other selector form."""
    required: dict[str, str] = {}
    for term in selector.split(","):
        key, separator, value = term.partition("=")
        if not separator or key.endswith("!") or not key.strip():
            raise ValueError(f"DictReader supports only key=value label selectors, got {term.strip()!r}")
        required[key.strip()] = value.lstrip("=").strip()
    return required
