"""In-memory object store with the write semantics of the Kubernetes apiserver backed by etcd.

One global revision counter numbers every committed change, as etcd does, and becomes the
`metadata.resourceVersion` of the object written. Objects kept in the store are never changed in
place after a commit: every write stores a new dict, so history entries and watchers can share
them, and every read returns a copy.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kubevirt_sim import errors
from kubevirt_sim.clock import Clock
from kubevirt_sim.errors import ApiError
from kubevirt_sim.patching import apply_patch, clone
from kubevirt_sim.resources import RESOURCES, Resource

if TYPE_CHECKING:
    from kubevirt_sim.recorder import Recorder

logger = logging.getLogger(__name__)

Subscriber = Callable[[str, str, "dict | None", "dict | None"], None]

# The alphabet of Kubernetes' generateName suffixes: lower-case alphanumerics without vowels and
# without the easily confused 0, 1 and 3.
_NAME_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
# The apiserver's wording for an invalid label value (k8s.io/apimachinery validation).
_LABEL_VALUE_MESSAGE = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', "
    "and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', "
    "regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
)

# metadata fields that only the server sets; an update cannot change them.
_SYSTEM_METADATA = ("uid", "creationTimestamp", "generation", "deletionTimestamp", "deletionGracePeriodSeconds")


@dataclass(frozen=True)
class Event:
    """One committed change: `old` is None for ADDED, `new` is the final object for DELETED."""

    revision: int
    type: str
    plural: str
    namespace: str
    old: dict | None
    new: dict


# --- selectors ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str  # '=', '!=', 'in', 'notin', 'exists', '!'
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.operator == "=":
            return present and value == self.values[0]
        if self.operator == "!=":
            return not present or value != self.values[0]
        if self.operator == "in":
            return present and value in self.values
        if self.operator == "notin":
            return not present or value not in self.values
        if self.operator == "exists":
            return present
        return not present


def _split_selector(text: str) -> list[str]:
    """Split on commas outside parentheses."""
    parts: list[str] = []
    depth = 0
    current = ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [part.strip() for part in parts if part.strip()]


_SET_REQUIREMENT = re.compile(r"^(?P<key>[^\s!=()]+)\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)$")


def parse_label_selector(text: str | None) -> list[Requirement]:
    """Parse a label selector (`=`, `==`, `!=`, `in`, `notin`, `key`, `!key`); 400 when malformed."""
    if not text:
        return []
    requirements: list[Requirement] = []

    for part in _split_selector(text):
        match = _SET_REQUIREMENT.match(part)
        if match:
            values = tuple(value.strip() for value in match["values"].split(",") if value.strip())
            requirements.append(Requirement(match["key"], match["op"], values))
            continue
        if part.startswith("!"):
            key, operator, values = part[1:].strip(), "!", ()
        elif "!=" in part:
            key, value = part.split("!=", 1)
            operator, values = "!=", (value.strip(),)
        elif "==" in part:
            key, value = part.split("==", 1)
            operator, values = "=", (value.strip(),)
        elif "=" in part:
            key, value = part.split("=", 1)
            operator, values = "=", (value.strip(),)
        else:
            key, operator, values = part, "exists", ()
        key = key.strip()
        if not _LABEL_KEY.match(key) or any(" " in value or "=" in value for value in values):
            raise errors.bad_request(f"unable to parse requirement: invalid label selector {part!r}")
        requirements.append(Requirement(key, operator, values))

    return requirements


def parse_field_selector(text: str | None, resource: Resource) -> list[tuple[str, str, str]]:
    """Parse a field selector into (field, '=' or '!=', value); 400 for a field the resource does not index."""
    if not text:
        return []
    terms: list[tuple[str, str, str]] = []
    for part in _split_selector(text):
        if "!=" in part:
            field, value = part.split("!=", 1)
            operator = "!="
        elif "==" in part:
            field, value = part.split("==", 1)
            operator = "="
        elif "=" in part:
            field, value = part.split("=", 1)
            operator = "="
        else:
            raise errors.bad_request(f"invalid field selector {part!r}: expected field=value or field!=value")
        field = field.strip()
        if field not in resource.field_selectors:
            raise errors.bad_request(f'field label not supported: {field}')
        terms.append((field, operator, value.strip()))
    return terms


def _field_value(obj: dict, path: str) -> str:
    node: Any = obj
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return ""
        node = node[part]
    if isinstance(node, bool):
        return "true" if node else "false"
    return "" if node is None else str(node)


def matches_selectors(obj: dict, labels: list[Requirement], fields: list[tuple[str, str, str]]) -> bool:
    """Tell whether an object satisfies every label and field requirement."""
    if labels:
        object_labels = obj.get("metadata", {}).get("labels") or {}
        if not all(requirement.matches(object_labels) for requirement in labels):
            return False
    for field, operator, value in fields:
        actual = _field_value(obj, field)
        if (actual == value) != (operator == "="):
            return False
    return True


# --- the store ----------------------------------------------------------------------------------


class Store:
    """Objects by resource, namespace and name, with apiserver write semantics.

    `admission` (set by the Simulator) is called for each write with admit=True before the schema
    check: `admission(store, operation, plural, namespace, old, new, subresource, actor) -> dict`.
    `validator` (set by the Simulator) raises ApiError 422 for an object that violates the schema.
    `history` is how many committed changes a watch can resume from; an older resourceVersion
    gets 410 Expired, as after an etcd compaction. `seed` fixes the generated name suffixes.
    """

    def __init__(self, clock: Clock, recorder: "Recorder | None" = None, history: int = 10_000, seed: int | None = None):
        self.clock = clock
        self.recorder = recorder
        self.lock = threading.RLock()
        self.admission: Callable[..., dict] | None = None
        self.validator: Callable[[Resource, dict], list[str] | None] | None = None
        self._request = threading.local()
        self._objects: dict[str, dict[tuple[str, str], dict]] = {plural: {} for plural in RESOURCES}
        self._revision = 0
        self._history: deque[Event] = deque(maxlen=history)
        self._compacted = 0
        self._history_changed = threading.Condition()
        self._subscribers: list[Subscriber] = []
        self._pending: deque[Event] = deque()
        self._dispatching = threading.Lock()
        self._closed = threading.Event()
        self._random = random.Random(seed)

    # --- reads ---

    @property
    def revision(self) -> int:
        """The revision of the last committed change (the newest resourceVersion)."""
        return self._revision

    def get(self, plural: str, namespace: str | None, name: str) -> dict:
        """Return a copy of one object; ApiError 404 when it does not exist."""
        resource = _resource(plural)
        found = self._objects[plural].get(_key(resource, namespace, name))
        if found is None:
            raise errors.not_found(plural, resource.group, name)
        return clone(found)

    def try_get(self, plural: str, namespace: str | None, name: str) -> dict | None:
        """Return a copy of one object, or None when it does not exist."""
        resource = _resource(plural)
        found = self._objects[plural].get(_key(resource, namespace, name))
        return None if found is None else clone(found)

    def list(
        self,
        plural: str,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> tuple[list[dict], str]:
        """Return copies of the matching objects sorted by namespace and name, and the list resourceVersion."""
        resource = _resource(plural)
        labels = parse_label_selector(label_selector)
        fields = parse_field_selector(field_selector, resource)
        with self.lock:
            revision = str(self._revision)
            selected = [
                obj
                for key, obj in sorted(self._objects[plural].items())
                if (namespace is None or key[0] == namespace) and matches_selectors(obj, labels, fields)
            ]
        return [clone(obj) for obj in selected], revision

    # --- writes ---

    def create(
        self,
        plural: str,
        namespace: str | None,
        obj: dict,
        *,
        actor: str,
        admit: bool = True,
        keep_status: bool = False,
        dry_run: bool = False,
    ) -> dict:
        """Create an object and return it as stored.

        The server sets uid, creationTimestamp, resourceVersion, generation 1 (custom resources)
        and resolves `metadata.generateName`. A resource with a status subresource starts without
        status unless `keep_status` is set (controllers use it to create an object and its status
        in one write). With `dry_run` every check runs and nothing is stored, as for
        `dryRun=All`. Raises 409 AlreadyExists, 422 Invalid, 400 BadRequest.
        """
        resource = _resource(plural)
        with self.lock:
            new = self._prepare_create(resource, namespace, obj, keep_status)
            if admit and self.admission is not None:
                new = self.admission(self, "CREATE", plural, _namespace_of(new), None, new, None, actor)
            self._validate(resource, new)
            key = _key(resource, _namespace_of(new), new["metadata"]["name"])
            if key in self._objects[plural]:
                raise errors.already_exists(plural, resource.group, key[1])
            if dry_run:
                return new
            committed = self._commit("ADDED", resource, None, new, actor)
        self._dispatch()
        return clone(committed)

    def load(self, obj: dict, *, actor: str = "loader") -> dict:
        """Store an object read from a manifest, keeping its uid, generation, timestamps and status.

        No admission and no schema check run. Raises 409 AlreadyExists and KeyError for a kind
        the simulator does not serve.
        """
        from kubevirt_sim.resources import resource_for_kind

        resource = resource_for_kind(obj.get("apiVersion", ""), obj.get("kind", ""))
        new = clone(obj)
        metadata = new.setdefault("metadata", {})
        if not resource.namespaced:
            metadata.pop("namespace", None)
        else:
            metadata.setdefault("namespace", "default")
        metadata.setdefault("uid", str(uuid.uuid4()))
        metadata.setdefault("creationTimestamp", self.clock.timestamp())
        if resource.custom:
            metadata.setdefault("generation", 1)
        metadata.pop("resourceVersion", None)

        with self.lock:
            key = _key(resource, metadata.get("namespace"), metadata["name"])
            if key in self._objects[resource.plural]:
                raise errors.already_exists(resource.plural, resource.group, key[1])
            committed = self._commit("ADDED", resource, None, new, actor)
        self._dispatch()
        return clone(committed)

    def update(
        self,
        plural: str,
        namespace: str | None,
        name: str,
        obj: dict,
        *,
        actor: str,
        subresource: str | None = None,
        admit: bool = True,
        dry_run: bool = False,
    ) -> dict:
        """Replace an object (PUT) and return it as stored.

        A stale `metadata.resourceVersion` raises 409 Conflict. Custom resources require one
        (422 without it), core resources allow an unconditional update. With subresource
        'status' only the status changes; without it, a resource that has a status subresource
        keeps its old status. An update that changes nothing commits nothing and keeps the
        resourceVersion.
        """
        resource = _resource(plural)
        if not isinstance(obj, dict):
            raise errors.bad_request("the request body must be a JSON object")
        with self.lock:
            old = self._existing(resource, namespace, name, subresource)
            metadata = obj.get("metadata") or {}
            if metadata.get("name") not in (None, name):
                raise errors.bad_request(
                    f"the name of the object ({metadata.get('name')}) does not match the name on the URL ({name})"
                )
            requested = metadata.get("resourceVersion")
            if requested:
                if requested != old["metadata"]["resourceVersion"]:
                    raise errors.conflict(plural, resource.group, name)
            elif resource.custom:
                raise errors.invalid(
                    resource.kind, name,
                    [("metadata.resourceVersion", "Invalid value: 0x0: must be specified for an update")],
                    group=resource.group,
                )
            new = self._prepare_update(resource, old, obj, subresource)
            committed, removed = self._finish_update(resource, old, new, actor, subresource, admit, dry_run)
        return self._after_update(committed, removed)

    def patch(
        self,
        plural: str,
        namespace: str | None,
        name: str,
        patch_type: str,
        patch: Any,
        *,
        actor: str,
        subresource: str | None = None,
        admit: bool = True,
        dry_run: bool = False,
    ) -> dict:
        """Apply a 'json', 'merge' or 'strategic' patch and return the object as stored.

        A patch that sets `metadata.resourceVersion` to a stale value raises 409 Conflict. A patch
        without one applies to the current object unconditionally, as the apiserver does.
        """
        resource = _resource(plural)
        with self.lock:
            old = self._existing(resource, namespace, name, subresource)
            patched = apply_patch(old, patch_type, patch)
            if not isinstance(patched, dict):
                raise errors.bad_request("the patched object must be a JSON object")
            requested = (patched.get("metadata") or {}).get("resourceVersion")
            if requested and requested != old["metadata"]["resourceVersion"]:
                raise errors.conflict(plural, resource.group, name)
            new = self._prepare_update(resource, old, patched, subresource)
            committed, removed = self._finish_update(resource, old, new, actor, subresource, admit, dry_run)
        return self._after_update(committed, removed)

    def delete(
        self,
        plural: str,
        namespace: str | None,
        name: str,
        *,
        actor: str,
        preconditions: dict | None = None,
        propagation_policy: str | None = None,
        dry_run: bool = False,
    ) -> dict:
        """Delete an object and return its last state.

        With finalizers the object stays with `deletionTimestamp` set, and goes when an update
        removes the last finalizer. Once an object is gone, its dependents (objects whose every
        ownerReference names a deleted owner) are deleted too, unless propagation_policy is 'Orphan'.
        """
        resource = _resource(plural)
        with self.lock:
            old = self._existing(resource, namespace, name, None)
            self._check_preconditions(resource, old, preconditions or {})
            if dry_run:
                return clone(old)

            if old["metadata"].get("finalizers"):
                if old["metadata"].get("deletionTimestamp"):
                    return clone(old)
                new = clone(old)
                new["metadata"]["deletionTimestamp"] = self.clock.timestamp()
                new["metadata"]["deletionGracePeriodSeconds"] = 0
                if "generation" in new["metadata"]:
                    new["metadata"]["generation"] += 1
                committed = self._commit("MODIFIED", resource, old, new, actor)
                removed = False
            else:
                committed = self._commit("DELETED", resource, old, clone(old), actor)
                removed = True
        self._dispatch()

        # NOTE: Foreground propagation is treated as Background: dependents go after the owner.
        if removed and propagation_policy != "Orphan":
            self._collect_dependents(committed, actor="garbage-collector")
        return clone(committed)

    def mutate(
        self,
        plural: str,
        namespace: str | None,
        name: str,
        fn: Callable[[dict], bool | None],
        *,
        actor: str,
        subresource: str | None = None,
        admit: bool = True,
        retries: int = 5,
    ) -> dict | None:
        """Read, edit with `fn` and write one object, retrying on 409 Conflict.

        `fn` edits a copy in place and returns False when there is nothing to write. Returns the
        object as stored, or None when it does not exist (or disappears between attempts).
        Other ApiErrors (admission denials, schema violations) are raised to the caller.
        """
        for attempt in range(retries + 1):
            current = self.try_get(plural, namespace, name)
            if current is None:
                return None
            if fn(current) is False:
                return self.try_get(plural, namespace, name)
            try:
                return self.update(plural, namespace, name, current, actor=actor, subresource=subresource, admit=admit)
            except ApiError as error:
                if error.code == 404:
                    return None
                if error.reason != "Conflict" or attempt == retries:
                    raise
                logger.debug("conflict writing %s %s/%s as %s, retrying", plural, namespace, name, actor)
        return None

    # --- notification ---

    def subscribe(self, callback: Subscriber) -> None:
        """Call `callback(event_type, plural, old, new)` after each committed change.

        Calls happen in commit order, outside the store lock, in the thread of some writer, with
        copies of the objects. A callback must be fast (enqueue work) and may write to the store;
        its exceptions are logged and dropped.
        """
        self._subscribers.append(callback)

    def watch(
        self,
        plural: str,
        namespace: str | None = None,
        resource_version: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        timeout_seconds: float | None = None,
        stop: threading.Event | None = None,
        alive: Callable[[], bool] | None = None,
    ) -> Iterator[dict]:
        """Yield watch events `{"type", "object"}` after `resource_version`, in commit order.

        Without a resourceVersion (or with "0") the current objects come first as ADDED events.
        An object that starts or stops matching the selectors arrives as ADDED or DELETED. A
        resourceVersion older than the kept history yields one ERROR event with a 410 Status.
        The iterator ends after `timeout_seconds` real seconds, when `stop` is set, when the
        store closes, or when `alive()` (checked about twice a second while idle) returns False.
        """
        resource = _resource(plural)
        labels = parse_label_selector(label_selector)
        fields = parse_field_selector(field_selector, resource)
        deadline = None if timeout_seconds is None else time.monotonic() + timeout_seconds

        expired: dict | None = None
        with self.lock:
            if resource_version in (None, "", "0"):
                last = self._revision
                initial = [
                    obj for key, obj in sorted(self._objects[plural].items())
                    if (namespace is None or key[0] == namespace) and matches_selectors(obj, labels, fields)
                ]
            else:
                try:
                    last = int(resource_version)
                except ValueError:
                    raise errors.bad_request(f"invalid resourceVersion {resource_version!r}: expected an integer") from None
                initial = []
                if last < self._compacted:
                    expired = errors.gone(f"too old resource version: {last} ({self._compacted})").status()
        return self._stream(plural, namespace, labels, fields, last, initial, expired, deadline, stop, alive)

    def _stream(
        self,
        plural: str,
        namespace: str | None,
        labels: list[Requirement],
        fields: list[tuple[str, str, str]],
        last: int,
        initial: list[dict],
        expired: dict | None,
        deadline: float | None,
        stop: threading.Event | None,
        alive: Callable[[], bool] | None,
    ) -> Iterator[dict]:
        if expired is not None:
            yield {"type": "ERROR", "object": expired}
            return
        for obj in initial:
            yield {"type": "ADDED", "object": clone(obj)}

        while True:
            with self._history_changed:
                batch = self._events_after(last)
                if not batch:
                    if self._closed.is_set() or (stop is not None and stop.is_set()):
                        return
                    if alive is not None and not alive():
                        return
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return
                    self._history_changed.wait(0.5 if remaining is None else min(remaining, 0.5))
                    continue
            for event in batch:
                last = event.revision
                translated = _translate(event, plural, namespace, labels, fields)
                if translated is not None:
                    yield translated

    def close(self) -> None:
        """End every open watch."""
        self._closed.set()
        with self._history_changed:
            self._history_changed.notify_all()

    # --- persistence helpers for state.py ---

    def snapshot(self) -> tuple[int, dict[str, list[dict]]]:
        """Return the revision and copies of all objects by plural, consistent with each other."""
        with self.lock:
            return self._revision, {
                plural: [clone(obj) for _, obj in sorted(bucket.items())] for plural, bucket in self._objects.items()
            }

    def restore(self, revision: int, objects: dict[str, list[dict]]) -> None:
        """Replace the contents with saved objects and continue numbering after `revision`.

        Restoring commits no events, so watches cannot resume from before the restore.
        """
        with self.lock:
            for plural in self._objects:
                self._objects[plural] = {}
            for plural, items in objects.items():
                resource = _resource(plural)
                for obj in items:
                    key = _key(resource, obj["metadata"].get("namespace"), obj["metadata"]["name"])
                    self._objects[plural][key] = obj
            self._revision = revision
            self._compacted = revision

    # --- internals ---

    def _existing(self, resource: Resource, namespace: str | None, name: str, subresource: str | None) -> dict:
        if subresource not in (None, "status") or (subresource == "status" and not resource.status_subresource):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        found = self._objects[resource.plural].get(_key(resource, namespace, name))
        if found is None:
            raise errors.not_found(resource.plural, resource.group, name)
        return found

    def _prepare_create(self, resource: Resource, namespace: str | None, obj: dict, keep_status: bool) -> dict:
        if not isinstance(obj, dict):
            raise errors.bad_request("the request body must be a JSON object")
        new = clone(obj)
        _check_type(resource, new)
        metadata = new.get("metadata")
        if metadata is None:
            metadata = new["metadata"] = {}
        if not isinstance(metadata, dict):
            raise errors.bad_request("metadata must be a JSON object")

        if resource.namespaced:
            # NOTE: namespaces are not modelled, so a create in a namespace that does not exist
            # succeeds here where the apiserver returns 404.
            given = metadata.get("namespace")
            if namespace and given and given != namespace:
                raise errors.bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            metadata["namespace"] = namespace or given or "default"
        else:
            metadata.pop("namespace", None)

        if not metadata.get("name"):
            prefix = metadata.get("generateName")
            if not prefix:
                raise errors.invalid(
                    resource.kind, "",
                    [("metadata.name", "Required value: name or generateName is required")],
                    group=resource.group,
                )
            metadata["name"] = prefix + "".join(self._random.choice(_NAME_SUFFIX_ALPHABET) for _ in range(5))
        _check_name(resource, metadata["name"])
        _check_labels(resource, metadata)
        if metadata.get("resourceVersion"):
            raise errors.internal_error("resourceVersion should not be set on objects to be created")

        metadata["uid"] = str(uuid.uuid4())
        metadata["creationTimestamp"] = self.clock.timestamp()
        for field in ("deletionTimestamp", "deletionGracePeriodSeconds", "generation", "managedFields"):
            metadata.pop(field, None)
        if resource.custom:
            metadata["generation"] = 1

        if not keep_status:
            if resource.kind == "Pod":
                new["status"] = {"phase": "Pending"}
            elif resource.status_subresource and resource.custom:
                new.pop("status", None)
        return new

    def _prepare_update(self, resource: Resource, old: dict, obj: dict, subresource: str | None) -> dict:
        if subresource == "status":
            new = clone(old)
            if obj.get("status") is not None:
                new["status"] = clone(obj["status"])
            else:
                new.pop("status", None)
            return new

        new = clone(obj)
        _check_type(resource, new)
        new["apiVersion"] = old.get("apiVersion", resource.api_version)
        new["kind"] = old.get("kind", resource.kind)
        metadata = new.get("metadata")
        if not isinstance(metadata, dict):
            metadata = new["metadata"] = {}
        _check_labels(resource, metadata)
        old_metadata = old["metadata"]
        for field in ("name", "namespace", "resourceVersion", *_SYSTEM_METADATA):
            if field in old_metadata:
                metadata[field] = old_metadata[field]
            else:
                metadata.pop(field, None)

        if old_metadata.get("deletionTimestamp"):
            added = [item for item in metadata.get("finalizers") or [] if item not in (old_metadata.get("finalizers") or [])]
            if added:
                raise errors.invalid(
                    resource.kind, old_metadata["name"],
                    [("metadata.finalizers", f"Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers {added}")],
                    group=resource.group,
                )

        if resource.status_subresource:
            if "status" in old:
                new["status"] = clone(old["status"])
            else:
                new.pop("status", None)
        return new

    def _finish_update(
        self,
        resource: Resource,
        old: dict,
        new: dict,
        actor: str,
        subresource: str | None,
        admit: bool,
        dry_run: bool = False,
    ) -> tuple[dict, bool]:
        """Admit, validate and commit an update; return the stored object and whether it was removed."""
        namespace = old["metadata"].get("namespace")
        if admit and self.admission is not None:
            new = self.admission(self, "UPDATE", resource.plural, namespace, clone(old), new, subresource, actor)
        self._validate(resource, new)

        if resource.custom and _generation_content(resource, new) != _generation_content(resource, old):
            new["metadata"]["generation"] = old["metadata"].get("generation", 0) + 1

        if dry_run or new == old:
            return new, False
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            return self._commit("DELETED", resource, old, new, actor), True
        return self._commit("MODIFIED", resource, old, new, actor), False

    def _after_update(self, committed: dict, removed: bool) -> dict:
        """Deliver events and, when the update removed the object, delete its dependents."""
        self._dispatch()
        if removed:
            self._collect_dependents(committed, actor="garbage-collector")
        return clone(committed)

    def _check_preconditions(self, resource: Resource, old: dict, preconditions: dict) -> None:
        uid = preconditions.get("uid")
        if uid and uid != old["metadata"].get("uid"):
            raise errors.conflict(
                resource.plural, resource.group, old["metadata"]["name"],
                f"Precondition failed: UID in precondition: {uid}, UID in object meta: {old['metadata'].get('uid')}",
            )
        version = preconditions.get("resourceVersion")
        if version and version != old["metadata"].get("resourceVersion"):
            raise errors.conflict(
                resource.plural, resource.group, old["metadata"]["name"],
                f"Precondition failed: ResourceVersion in precondition: {version}, "
                f"ResourceVersion in object meta: {old['metadata'].get('resourceVersion')}",
            )

    @contextmanager
    def request_options(self, field_validation: str | None = None) -> Iterator[list[str]]:
        """Apply an API request's fieldValidation to the writes this thread makes inside the block.

        'Strict' turns an unknown field into 400 BadRequest, 'Ignore' drops it silently, and
        'Warn' (the apiserver default) drops it and appends a warning to the yielded list.
        """
        if field_validation not in (None, "Strict", "Warn", "Ignore"):
            raise errors.bad_request(
                f'invalid fieldValidation value "{field_validation}": valid values are "Ignore", "Warn", "Strict"'
            )
        warnings: list[str] = []
        self._request.field_validation = field_validation or "Warn"
        self._request.warnings = warnings
        try:
            yield warnings
        finally:
            self._request.field_validation = "Warn"
            self._request.warnings = None

    def _validate(self, resource: Resource, obj: dict) -> None:
        if self.validator is None:
            return
        pruned = self.validator(resource, obj) or []
        if not pruned:
            return
        mode = getattr(self._request, "field_validation", "Warn")
        unknown = [f'unknown field "{path}"' for path in pruned]
        if mode == "Strict":
            raise errors.bad_request(
                f'{resource.kind} in version "{resource.version}" cannot be handled as a {resource.kind}: '
                f"strict decoding error: {', '.join(unknown)}"
            )
        warnings = getattr(self._request, "warnings", None)
        if mode == "Warn" and warnings is not None:
            warnings.extend(unknown)

    def _commit(self, event_type: str, resource: Resource, old: dict | None, new: dict, actor: str) -> dict:
        """Number, store, record and queue one change; the caller holds the lock."""
        self._revision += 1
        new["metadata"]["resourceVersion"] = str(self._revision)
        namespace = new["metadata"].get("namespace") or ""
        key = (namespace, new["metadata"]["name"])
        if event_type == "DELETED":
            self._objects[resource.plural].pop(key, None)
        else:
            self._objects[resource.plural][key] = new

        event = Event(self._revision, event_type, resource.plural, namespace, old, new)
        with self._history_changed:
            if len(self._history) == self._history.maxlen:
                self._compacted = self._history[0].revision
            self._history.append(event)
            self._history_changed.notify_all()

        if self.recorder is not None:
            self.recorder.record(self.clock.timestamp(), actor, event_type, resource.plural, old, new)
        self._pending.append(event)
        logger.debug("%s %s %s/%s rv=%s by %s", event_type, resource.plural, namespace, key[1], self._revision, actor)
        return new

    def _dispatch(self) -> None:
        """Deliver queued events to subscribers in order, unless this thread still holds the lock."""
        if self.lock._is_owned():  # type: ignore[attr-defined]
            return
        while self._pending:
            if not self._dispatching.acquire(blocking=False):
                return
            try:
                while self._pending:
                    event = self._pending.popleft()
                    for callback in list(self._subscribers):
                        old = None if event.old is None else clone(event.old)
                        try:
                            callback(event.type, event.plural, old, clone(event.new))
                        except Exception:
                            logger.exception("store subscriber %r failed on %s %s", callback, event.type, event.plural)
            finally:
                self._dispatching.release()

    def _events_after(self, revision: int) -> list[Event]:
        batch: list[Event] = []
        for event in reversed(self._history):
            if event.revision <= revision:
                break
            batch.append(event)
        batch.reverse()
        return batch

    def _collect_dependents(self, owner: dict, actor: str) -> None:
        """Delete the objects whose every ownerReference names an owner that no longer exists."""
        owner_uid = owner["metadata"].get("uid")
        namespace = owner["metadata"].get("namespace")
        with self.lock:
            live_uids = {
                obj["metadata"].get("uid") for bucket in self._objects.values() for obj in bucket.values()
            }
            dependents = [
                (plural, obj["metadata"].get("namespace"), obj["metadata"]["name"])
                for plural, bucket in self._objects.items()
                for obj in bucket.values()
                if (not namespace or obj["metadata"].get("namespace") == namespace)
                and any(ref.get("uid") == owner_uid for ref in obj["metadata"].get("ownerReferences") or [])
                and not any(ref.get("uid") in live_uids for ref in obj["metadata"].get("ownerReferences") or [])
            ]
        for plural, dependent_namespace, name in dependents:
            try:
                self.delete(plural, dependent_namespace, name, actor=actor)
            except ApiError as error:
                if error.code != 404:
                    logger.warning("garbage collection of %s %s/%s failed: %s", plural, dependent_namespace, name, error)


def _resource(plural: str) -> Resource:
    resource = RESOURCES.get(plural)
    if resource is None:
        raise ApiError(404, "NotFound", f"the server could not find the requested resource ({plural})")
    return resource


def _key(resource: Resource, namespace: str | None, name: str) -> tuple[str, str]:
    return ((namespace or "") if resource.namespaced else "", name)


def _namespace_of(obj: dict) -> str | None:
    return obj.get("metadata", {}).get("namespace")


def _check_type(resource: Resource, obj: dict) -> None:
    api_version = obj.get("apiVersion")
    kind = obj.get("kind")
    if api_version and api_version != resource.api_version:
        raise errors.bad_request(
            f"the API version in the data ({api_version}) does not match the expected API version ({resource.api_version})"
        )
    if kind and kind != resource.kind:
        raise errors.bad_request(f"the kind in the data ({kind}) does not match the expected kind ({resource.kind})")
    obj["apiVersion"] = resource.api_version
    obj["kind"] = resource.kind


def _check_name(resource: Resource, name: str) -> None:
    if resource.custom:
        # Custom resource names need only be valid path segments.
        problem = None
        if name in (".", ".."):
            problem = f"may not be '{name}'"
        elif "/" in name or "%" in name:
            problem = "may not contain '/' or '%'"
    else:
        problem = None
        if len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
            problem = (
                "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
                "and must start and end with an alphanumeric character"
            )
    if problem:
        raise errors.invalid(resource.kind, name, [("metadata.name", f'Invalid value: "{name}": {problem}')], group=resource.group)


def _check_labels(resource: Resource, metadata: dict) -> None:
    """Raise 400 for labels or annotations that are not string maps, 422 for invalid label syntax."""
    for field in ("labels", "annotations"):
        values = metadata.get(field)
        if values is None:
            continue
        if not isinstance(values, dict) or not all(isinstance(value, str) for value in values.values()):
            raise errors.bad_request(
                f"json: cannot unmarshal metadata.{field} of {resource.kind}: expected a map of strings"
            )

    causes = []
    for key, value in (metadata.get("labels") or {}).items():
        if not _LABEL_KEY.match(key) or len(key.rsplit("/", 1)[-1]) > 63:
            causes.append(("metadata.labels", f'Invalid value: "{key}": name part must consist of alphanumeric '
                           "characters, '-', '_' or '.', and must start and end with an alphanumeric character"))
        if len(value) > 63:
            causes.append(("metadata.labels", f'Invalid value: "{value}": must be no more than 63 characters'))
        elif not _LABEL_VALUE.match(value):
            causes.append(("metadata.labels", f'Invalid value: "{value}": {_LABEL_VALUE_MESSAGE}'))
    for key in metadata.get("annotations") or {}:
        if not _LABEL_KEY.match(key):
            causes.append(("metadata.annotations", f'Invalid value: "{key}": name part must consist of '
                           "alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"))
    if causes:
        raise errors.invalid(resource.kind, metadata.get("name", ""), causes, group=resource.group)


def _generation_content(resource: Resource, obj: dict) -> dict:
    """Return the part of a custom resource whose changes bump its generation."""
    skipped = {"metadata", "status"} if resource.status_subresource else {"metadata"}
    return {key: value for key, value in obj.items() if key not in skipped}


def _translate(
    event: Event, plural: str, namespace: str | None, labels: list[Requirement], fields: list[tuple[str, str, str]]
) -> dict | None:
    """Turn a committed change into the watch event that a filtered watch receives, or None."""
    if event.plural != plural or (namespace is not None and event.namespace != namespace):
        return None
    new_matches = matches_selectors(event.new, labels, fields)
    old_matches = event.old is not None and matches_selectors(event.old, labels, fields)

    if event.type == "ADDED":
        kind = "ADDED" if new_matches else None
    elif event.type == "DELETED":
        kind = "DELETED" if old_matches or new_matches else None
    elif new_matches and old_matches:
        kind = "MODIFIED"
    elif new_matches:
        kind = "ADDED"
    elif old_matches:
        kind = "DELETED"
    else:
        kind = None
    return None if kind is None else {"type": kind, "object": clone(event.new)}
