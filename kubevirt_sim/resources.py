"""The API resources that the simulator serves, with the properties the apiserver derives from them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any


@dataclass(frozen=True)
class Resource:
    """One served resource type.

    `custom` marks a CustomResourceDefinition: custom resources need `metadata.resourceVersion` on
    update, and their generation follows every change outside metadata (and outside status when the
    CRD has a status subresource). `returns_deleted_object` makes DELETE return the object instead
    of a Status, as the apiserver does for pods.
    """

    group: str
    version: str
    kind: str
    plural: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    status_subresource: bool = False
    custom: bool = True
    categories: tuple[str, ...] = ()
    field_selectors: tuple[str, ...] = field(default=())
    returns_deleted_object: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def schema_definition(self) -> str | None:
        """Name of the Swagger definition that validates this kind, for KubeVirt kinds only."""
        if self.group == "kubevirt.io":
            return f"v1.{self.kind}"
        return None


_METADATA_FIELDS = ("metadata.name", "metadata.namespace")

RESOURCES: dict[str, Resource] = {
    resource.plural: resource
    for resource in (
        Resource(
            "kubevirt.io", "v1", "VirtualMachine", "virtualmachines", True, ("vm", "vms"),
            status_subresource=True, categories=("all",),
            field_selectors=_METADATA_FIELDS + ("status.printableStatus",),
        ),
        # KubeVirt's crds.go declares no status subresource for the VirtualMachineInstance CRD, so a VMI
        # update writes spec and status together and any status change bumps its generation.
        Resource(
            "kubevirt.io", "v1", "VirtualMachineInstance", "virtualmachineinstances", True, ("vmi", "vmis"),
            status_subresource=False, categories=("all",),
            field_selectors=_METADATA_FIELDS + ("status.phase", "status.nodeName"),
        ),
        Resource(
            "kubevirt.io", "v1", "VirtualMachineInstanceMigration", "virtualmachineinstancemigrations", True,
            ("vmim", "vmims"), status_subresource=True, categories=("all",),
            field_selectors=_METADATA_FIELDS + ("status.phase", "spec.vmiName"),
        ),
        Resource(
            "kubevirt.io", "v1", "KubeVirt", "kubevirts", True, ("kv", "kvs"),
            status_subresource=True, categories=("all",),
            field_selectors=_METADATA_FIELDS + ("status.phase",),
        ),
        Resource(
            "k8s.cni.cncf.io", "v1", "NetworkAttachmentDefinition", "network-attachment-definitions", True,
            ("net-attach-def",), status_subresource=False, field_selectors=_METADATA_FIELDS,
        ),
        Resource(
            "", "v1", "Node", "nodes", False, ("no",), status_subresource=True, custom=False,
            field_selectors=("metadata.name", "spec.unschedulable"),
        ),
        Resource(
            "", "v1", "Pod", "pods", True, ("po",), status_subresource=True, custom=False, categories=("all",),
            field_selectors=_METADATA_FIELDS + ("status.phase", "spec.nodeName"), returns_deleted_object=True,
        ),
    )
}

# Groups served besides the core group, in the order discovery lists them.
GROUP_VERSIONS: dict[str, str] = {
    "kubevirt.io": "v1",
    "k8s.cni.cncf.io": "v1",
    "subresources.kubevirt.io": "v1",
}


def resource_for(plural: str) -> Resource:
    """Return the resource with this plural; KeyError names the unknown plural."""
    try:
        return RESOURCES[plural]
    except KeyError:
        raise KeyError(f"unknown resource {plural!r}; served: {', '.join(sorted(RESOURCES))}") from None


def resource_for_kind(api_version: str, kind: str) -> Resource:
    """Return the resource of an object's apiVersion and kind; KeyError when none matches."""
    for resource in RESOURCES.values():
        if resource.kind == kind and resource.api_version == api_version:
            return resource
    raise KeyError(f"no served resource has apiVersion {api_version!r} and kind {kind!r}")


def resource_for_path(group: str, version: str, plural: str) -> Resource | None:
    """Return the resource served at /apis/<group>/<version>/<plural> (group '' for /api/v1)."""
    resource = RESOURCES.get(plural)
    if resource is None or resource.group != group or resource.version != version:
        return None
    return resource


# --- server-side printing (kubectl get) ----------------------------------------------------------

# Columns after Name: (name, type, priority, value). A value is a dotted path into the object, a
# path with `[type=X]` selecting a condition, or a special value computed from the whole object.
# The KubeVirt columns are the additionalPrinterColumns that KubeVirt's crds.go (virt-operator)
# declares for its CRDs.
PRINTER_COLUMNS: dict[str, list[tuple[str, str, int, str]]] = {
    "virtualmachines": [
        ("Age", "date", 0, "metadata.creationTimestamp"),
        ("Status", "string", 0, "status.printableStatus"),
        ("Ready", "string", 0, "status.conditions[type=Ready].status"),
    ],
    "virtualmachineinstances": [
        ("Age", "date", 0, "metadata.creationTimestamp"),
        ("Phase", "string", 0, "status.phase"),
        ("IP", "string", 0, "status.interfaces[0].ipAddress"),
        ("NodeName", "string", 0, "status.nodeName"),
        ("Ready", "string", 0, "status.conditions[type=Ready].status"),
        ("Live-Migratable", "string", 1, "status.conditions[type=LiveMigratable].status"),
        ("Paused", "string", 1, "status.conditions[type=Paused].status"),
    ],
    "virtualmachineinstancemigrations": [
        ("Phase", "string", 0, "status.phase"),
        ("VMI", "string", 0, "spec.vmiName"),
    ],
    "kubevirts": [
        ("Age", "date", 0, "metadata.creationTimestamp"),
        ("Phase", "string", 0, "status.phase"),
    ],
    "network-attachment-definitions": [("Age", "date", 0, "metadata.creationTimestamp")],
    "nodes": [
        ("Status", "string", 0, "@node-status"),
        ("Roles", "string", 0, "@node-roles"),
        ("Age", "date", 0, "metadata.creationTimestamp"),
        ("Version", "string", 0, "status.nodeInfo.kubeletVersion"),
    ],
    "pods": [
        ("Ready", "string", 0, "@pod-ready"),
        ("Status", "string", 0, "status.phase"),
        ("Restarts", "integer", 0, "@pod-restarts"),
        ("Age", "date", 0, "metadata.creationTimestamp"),
        ("Node", "string", 1, "spec.nodeName"),
    ],
}


def _lookup(obj: Any, path: str) -> Any:
    node = obj
    for part in path.split("."):
        index = None
        if "[" in part:
            part, selector = part[:-1].split("[", 1)
            index = selector
        node = node.get(part) if isinstance(node, dict) else None
        if index is not None:
            if not isinstance(node, list):
                return None
            if index.isdigit():
                node = node[int(index)] if int(index) < len(node) else None
            else:
                key, value = index.split("=", 1)
                node = next((item for item in node if isinstance(item, dict) and item.get(key) == value), None)
        if node is None:
            return None
    return node


def human_duration(seconds: float) -> str:
    """Format an age as kubectl prints it: 45s, 5m10s, 3h, 2d4h, 90d."""
    seconds = max(0, int(seconds))
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if seconds < 120:
        return f"{seconds}s"
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if hours < 3:
        return f"{minutes}m"
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if days < 8:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    if days < 365 * 2:
        return f"{days}d"
    return f"{days // 365}y{days % 365}d"


def _cell(obj: dict, kind: str, value: str, now: datetime) -> Any:
    if value == "@node-status":
        ready = _lookup(obj, "status.conditions[type=Ready].status")
        if ready == "True":
            status = "Ready"
        elif ready:
            status = "NotReady"
        else:
            status = "Unknown"
        if obj.get("spec", {}).get("unschedulable"):
            status += ",SchedulingDisabled"
        return status
    if value == "@node-roles":
        roles = sorted(key.split("/", 1)[1] for key in (obj["metadata"].get("labels") or {})
                       if key.startswith("node-role.kubernetes.io/"))
        return ",".join(roles) or "<none>"
    if value == "@pod-ready":
        statuses = obj.get("status", {}).get("containerStatuses") or []
        total = len(obj.get("spec", {}).get("containers") or [])
        return f"{sum(1 for status in statuses if status.get('ready'))}/{total}"
    if value == "@pod-restarts":
        return sum(status.get("restartCount", 0) for status in obj.get("status", {}).get("containerStatuses") or [])

    found = _lookup(obj, value)
    if kind == "date" and isinstance(found, str):
        created = datetime.strptime(found, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
        return human_duration((now - created).total_seconds())
    return "" if found is None else found


def to_table(resource: Resource, objects: list[dict], resource_version: str, now: datetime) -> dict:
    """Render objects as a meta.k8s.io/v1 Table, which `kubectl get` requests to print columns."""
    columns = PRINTER_COLUMNS.get(resource.plural, [("Age", "date", 0, "metadata.creationTimestamp")])
    definitions = [{
        "name": "Name", "type": "string", "format": "name", "priority": 0,
        "description": "Name must be unique within a namespace.",
    }]
    definitions += [
        {"name": name, "type": "string" if kind == "date" else kind, "format": "", "priority": priority, "description": ""}
        for name, kind, priority, _ in columns
    ]
    rows = []
    for obj in objects:
        cells = [obj["metadata"]["name"]] + [_cell(obj, kind, value, now) for _, kind, _, value in columns]
        metadata = {key: value for key, value in obj["metadata"].items() if key != "managedFields"}
        rows.append({
            "cells": cells,
            "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": metadata},
        })
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": definitions,
        "rows": rows,
    }
