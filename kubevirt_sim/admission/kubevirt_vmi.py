"""KubeVirt 1.6's `virtualmachineinstances-update-validator.kubevirt.io` webhook, minus its node and hot-plug checks.

Only KubeVirt's own service accounts may change a VMI spec or its reserved labels. In the
simulator the actor of a write represents its service account.
"""

from __future__ import annotations

from typing import Any

WEBHOOK = "virtualmachineinstances-update-validator.kubevirt.io"

# Actors that write as KubeVirt's service accounts (virt-api, virt-controller, virt-handler).
KUBEVIRT_ACTORS = frozenset({"virt-api", "virt-controller", "virt-handler"})

RESERVED_LABELS = frozenset(
    {
        "kubevirt.io/created-by",
        "kubevirt.io/migrationJobUID",
        "kubevirt.io/nodeName",
        "kubevirt.io/migrationTargetNodeName",
        "kubevirt.io/schedulable",
        "kubevirt.io/install-strategy",
    }
)


def _reserved_labels(vmi: dict[str, Any]) -> dict[str, str]:
    labels = (vmi.get("metadata") or {}).get("labels") or {}
    return {key: value for key, value in labels.items() if key in RESERVED_LABELS}


def update_causes(old: dict[str, Any], new: dict[str, Any], actor: str) -> list[dict[str, str]]:
    """Return the cause that denies a VMI update by `actor`, or [] when KubeVirt allows it.

    KubeVirt's CPU and memory hot-plug checks on its own spec writes and the virt-handler node
    restriction are not simulated, so every spec write by a KubeVirt actor passes.
    """
    if actor in KUBEVIRT_ACTORS:
        return []

    if (old.get("spec") or {}) != (new.get("spec") or {}):
        return [{"reason": "FieldValueNotSupported", "message": "update of VMI object is restricted"}]

    if _reserved_labels(old) != _reserved_labels(new):
        return [
            {
                "reason": "FieldValueNotSupported",
                "message": "modification of the following reserved kubevirt.io/ labels on a VMI object is prohibited",
            }
        ]
    return []
