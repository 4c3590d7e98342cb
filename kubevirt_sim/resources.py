"""The API resources that the simulator serves, with the properties the apiserver derives from them."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Resource:
    """One served resource type.

    `custom` marks a CustomResourceDefinition: custom resources need `metadata.resourceVersion` on
    update, and their generation follows every change outside metadata (and outside status when the
    CRD has a status subresource).
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
        # The KubeVirt 1.6 VirtualMachineInstance CRD declares no status subresource, so a VMI
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
            field_selectors=_METADATA_FIELDS + ("status.phase", "spec.nodeName"),
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
