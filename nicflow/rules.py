"""Rules that a NIC hot-plug or hot-unplug must pass before nicflow changes anything.

Harvester v1.7 checks some of these only in its UI and others only after it has already
written the VM spec, so a direct API call can leave a half-applied change behind. nicflow
evaluates all of them up front on a snapshot of the cluster (`ClusterView`) gathered by the
validate activity. Every function here is pure: plain dicts in, verdicts out, no I/O.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from nicflow import pciports
from nicflow.macs import allocate_mac, is_unicast, normalize_mac
from nicflow.reasons import Reason
from nicflow.status import condition, condition_true

logger = logging.getLogger(__name__)

CLUSTER_NETWORK_LABEL = "network.harvesterhci.io/clusternetwork"
NODE_NETWORK_LABEL_PREFIX = "network.harvesterhci.io/"
CREATOR_LABEL = "harvesterhci.io/creator"
NODE_DRIVER_CREATOR = "docker-machine-driver-harvester"
MAC_ADDRESS_ANNOTATION = "harvesterhci.io/mac-address"
MIGRATION_UID_ANNOTATION = "harvesterhci.io/migrationUID"
MIGRATION_STATE_ANNOTATION = "harvesterhci.io/migrationState"
SCHEDULABLE_LABEL = "kubevirt.io/schedulable"
HOSTNAME_LABEL = "kubernetes.io/hostname"
SYSTEM_NAMESPACE = "harvester-system"

# KubeVirt's admission sets no length limit. nicflow caps names at 63 characters, the length
# of a DNS label, as its own limit.
INTERFACE_NAME_PATTERN = re.compile(r"^[A-Za-z0-9-_]+$")
INTERFACE_NAME_MAX_LENGTH = 63

# Pods from KubeVirt v0.59 and older name secondary interfaces net1, net2, ...; KubeVirt
# ignores state absent on such pods, so an unplug never completes until the VM restarts.
ORDINAL_POD_INTERFACE = re.compile(r"^net[0-9]+$")

FINAL_MIGRATION_PHASES = frozenset({"Succeeded", "Failed"})
FINAL_VMI_PHASES = frozenset({"Succeeded", "Failed"})


@dataclass(frozen=True)
class Verdict:
    """The outcome of one rule.

    `message` names the values involved and, on failure, what the operator can do next.
    """

    rule: str
    passed: bool
    reason: Reason | None
    message: str


@dataclass
class ClusterView:
    """Everything the rules read, gathered by the validate activity in one pass."""

    vm: dict | None
    vmi: dict | None
    nodes: list[dict]
    # VMIMs of this VMI from any creator (Harvester, KubeVirt, nicflow); others are ignored.
    migrations: list[dict]
    kubevirt: dict | None
    # The NAD being added by a hot-plug; None for an unplug or when it does not exist.
    nad: dict | None
    # Every NAD the VM and the new interface refer to, keyed by "namespace/name".
    nads: dict[str, dict]
    # Cluster network -> {MAC: "namespace/vm/interface"} over all VMs; pod networks are "".
    macs_in_use: dict[str, dict[str, str]]
    # Cluster network -> {MAC: operation id} for unfinished operations, except the one validated.
    reserved_macs: dict[str, dict[str, str]]
    # Unplug operations on this VM that have not yet written state absent into its spec.
    pending_unplugs: int = 0
    # Interfaces hot-plugged since the VMI started, net of unplugs, as the ledger records them.
    hotplugged_since_start: int = 0
    # "namespace/name" of the VM the request names, for messages when the VM does not exist.
    vm_ref: str = ""


def _passed(rule: str, message: str) -> Verdict:
    return Verdict(rule=rule, passed=True, reason=None, message=message)


def _failed(rule: str, reason: Reason, message: str) -> Verdict:
    return Verdict(rule=rule, passed=False, reason=reason, message=message)


def first_failure(verdicts: Iterable[Verdict]) -> Verdict | None:
    """Return the first verdict that did not pass, or None when all passed."""
    for verdict in verdicts:
        if not verdict.passed:
            return verdict
    return None


# --- Reading Kubernetes objects -------------------------------------------------------------


def _dig(obj: Any, *keys: str) -> Any:
    """Follow `keys` through nested dicts; a missing key or an explicit null gives None."""
    value = obj
    for key in keys:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _qualified_name(obj: Mapping) -> str:
    return f"{_dig(obj, 'metadata', 'namespace') or ''}/{_dig(obj, 'metadata', 'name') or ''}"


def _labels(obj: Mapping | None) -> dict[str, str]:
    return _dig(obj, "metadata", "labels") or {}


def _annotations(obj: Mapping | None) -> dict[str, str]:
    return _dig(obj, "metadata", "annotations") or {}


def _template_spec(vm: Mapping) -> dict:
    return _dig(vm, "spec", "template", "spec") or {}


def _interfaces(spec: Mapping) -> list[dict]:
    return _dig(spec, "domain", "devices", "interfaces") or []


def _networks(spec: Mapping) -> list[dict]:
    return _dig(spec, "networks") or []


def _vmi_phase(vmi: Mapping | None) -> str | None:
    return _dig(vmi, "status", "phase")


def _source_node(vmi: Mapping | None) -> str | None:
    return _dig(vmi, "status", "nodeName") or _labels(vmi).get("kubevirt.io/nodeName")


def _vm_state(view: ClusterView) -> Literal["running", "stopped", "changing"]:
    """Classify the VM as running (VMI phase Running), stopped, or between the two."""
    phase = _vmi_phase(view.vmi)
    vmi_deleting = bool(_dig(view.vmi, "metadata", "deletionTimestamp"))
    if phase == "Running" and not vmi_deleting:
        return "running"

    printable_status = _dig(view.vm, "status", "printableStatus")
    if (view.vmi is None or phase in FINAL_VMI_PHASES) and printable_status in (None, "Stopped"):
        return "stopped"
    return "changing"


def is_cold(view: ClusterView) -> bool:
    """Return whether the VM is stopped, so the change is written to the spec with no migration."""
    return view.vm is not None and _vm_state(view) == "stopped"


def cluster_network_of(nad: Mapping) -> str | None:
    """Return the Harvester cluster network of a NAD from its clusternetwork label, or None."""
    return _labels(nad).get(CLUSTER_NETWORK_LABEL) or None


def qualify_network(network: str, namespace: str) -> str:
    """Return `network` as "namespace/name", resolving a bare name in the VM's namespace.

    Raises:
        ValueError: the network has an empty part or more than one "/".
    """
    parts = network.split("/")
    if len(parts) == 1:
        parts = [namespace, parts[0]]
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"network {network!r} is invalid: use <namespace>/<name>, for example default/vlan100")
    return "/".join(parts)


# --- MACs of existing interfaces ------------------------------------------------------------


def missing_macs(vm: dict) -> list[str]:
    """Return the names of the VM template interfaces that have no macAddress, in spec order."""
    interfaces = _interfaces(_template_spec(vm))
    return [interface.get("name", "") for interface in interfaces if not interface.get("macAddress")]


def observed_macs(vmi: dict | None, vm: dict) -> dict[str, str]:
    """Collect one MAC per VM template interface for the backfill, in lower-case colon form.

    Sources in order of trust: the VM spec itself, the VMI status (what the domain reports),
    the VMI spec (where Harvester's VMI mutator injected the MAC), and the VM's
    harvesterhci.io/mac-address annotation. Interfaces with no MAC in any source are left
    out, and invalid values are skipped with a warning.
    """
    candidates: list[dict[str, str]] = [
        {item.get("name", ""): item.get("macAddress", "") for item in _interfaces(_template_spec(vm))},
    ]
    if vmi is not None:
        statuses = _dig(vmi, "status", "interfaces") or []
        candidates.append({item.get("name", ""): item.get("mac", "") for item in statuses})
        candidates.append({item.get("name", ""): item.get("macAddress", "") for item in _interfaces(_dig(vmi, "spec"))})

    annotation = _annotations(vm).get(MAC_ADDRESS_ANNOTATION)
    if annotation:
        try:
            parsed = json.loads(annotation)
        except json.JSONDecodeError as error:
            logger.warning("VM %s has an invalid %s annotation: %s", _qualified_name(vm), MAC_ADDRESS_ANNOTATION, error)
            parsed = {}
        if isinstance(parsed, dict):
            candidates.append({str(name): str(mac) for name, mac in parsed.items()})

    observed: dict[str, str] = {}
    for interface in _interfaces(_template_spec(vm)):
        name = interface.get("name", "")
        for source in candidates:
            mac = source.get(name)
            if not name or not mac:
                continue
            try:
                observed[name] = normalize_mac(mac)
                break
            except ValueError as error:
                logger.warning("VM %s interface %s: skipping an observed MAC: %s", _qualified_name(vm), name, error)
    return observed


# --- Live migration -------------------------------------------------------------------------


def _live_migratable_failure(vmi: dict) -> str | None:
    """Return the first reason Harvester's ValidateVMMigratable finds, with a next step."""
    name = _qualified_name(vmi)
    spec = _dig(vmi, "spec") or {}
    devices = _dig(spec, "domain", "devices") or {}

    if _vmi_phase(vmi) != "Running":
        return (
            f"VM {name} is not live migratable as it is not running; "
            "start the VM or wait until its VMI phase is Running"
        )

    migration_uid = _annotations(vmi).get(MIGRATION_UID_ANNOTATION)
    if migration_uid:
        return (
            f"VM {name} is not live migratable as it is already in a migrating state "
            f"(migration {migration_uid}); wait until that migration finishes and retry"
        )

    pinned_node = (spec.get("nodeSelector") or {}).get(HOSTNAME_LABEL)
    if pinned_node:
        return (
            f"VM {name} is not live migratable as node selector is set ({HOSTNAME_LABEL}={pinned_node}); "
            "remove the node selector from the VM and restart it"
        )

    host_devices = devices.get("hostDevices") or []
    if host_devices:
        names = ", ".join(device.get("name", "") for device in host_devices)
        return (
            f"VM {name} is not live migratable as PCIe or USB devices are attached ({names}); "
            "detach them and restart the VM"
        )

    gpus = devices.get("gpus") or []
    if gpus:
        names = ", ".join(device.get("name", "") for device in gpus)
        return (
            f"VM {name} is not live migratable as vGPU devices are attached ({names}); "
            "detach them and restart the VM"
        )

    cdroms = [disk.get("name", "") for disk in devices.get("disks") or [] if "cdrom" in disk]
    container_disks = [volume.get("name", "") for volume in spec.get("volumes") or [] if "containerDisk" in volume]
    if cdroms or container_disks:
        names = ", ".join(cdroms + container_disks)
        return (
            f"VM {name} is not live migratable as CD-ROM or container disk is set ({names}); "
            "remove them from the VM, which needs a restart"
        )

    # Harvester v1.7.1 and later also honour KubeVirt's LiveMigratable=False. nicflow also
    # rejects a missing or Unknown condition, because virt-controller has not decided yet.
    live_migratable = condition(vmi, "LiveMigratable")
    if live_migratable is None:
        return (
            f"VM {name} is not live migratable as KubeVirt has not reported the LiveMigratable condition; "
            "wait until virt-controller sets it and retry"
        )
    if live_migratable.get("status") != "True":
        reason = live_migratable.get("reason") or "none given"
        detail = f" ({live_migratable['message']})" if live_migratable.get("message") else ""
        advice = "fix the cause KubeVirt reports, which usually needs a restart, and retry"
        if reason == "InterfaceNotLiveMigratable":
            advice = (
                "switch the pod-network interface to masquerade binding, or add the annotation "
                "kubevirt.io/allow-pod-bridge-network-live-migration to the VM, then restart it"
            )
        return f"VM {name} is not live migratable as the condition reported with reason: {reason}{detail}; {advice}"

    return None


def is_live_migratable(vmi: dict) -> Verdict:
    """Apply Harvester v1.7's ValidateVMMigratable to a VMI, in Harvester's order.

    The checks are: phase Running, no Harvester migration annotation, no kubernetes.io/hostname
    node selector, no host devices, no GPUs, no CD-ROM or container disk, and the
    LiveMigratable condition True. Harvester accepts a missing or Unknown condition, nicflow
    does not.
    """
    failure = _live_migratable_failure(vmi)
    if failure is not None:
        return _failed("live-migratable", Reason.NOT_LIVE_MIGRATABLE, failure)
    message = f"VM {_qualified_name(vmi)} is live migratable and KubeVirt reports LiveMigratable=True"
    return _passed("live-migratable", message)


def _matches_expression(values: Mapping[str, str], expression: Mapping) -> bool:
    key = expression.get("key", "")
    operator = expression.get("operator", "")
    listed = expression.get("values") or []
    present = key in values

    if operator == "In":
        return present and values[key] in listed
    if operator == "NotIn":
        return not present or values[key] not in listed
    if operator == "Exists":
        return present
    if operator == "DoesNotExist":
        return not present
    if operator in ("Gt", "Lt") and present and len(listed) == 1:
        try:
            actual, bound = int(values[key]), int(listed[0])
        except ValueError:
            return False
        return actual > bound if operator == "Gt" else actual < bound
    return False


def _matches_term(node: Mapping, term: Mapping) -> bool:
    expressions = term.get("matchExpressions") or []
    fields = term.get("matchFields") or []
    if not expressions and not fields:
        # Kubernetes: an empty node selector term matches no node.
        return False

    labels = _labels(node)
    node_fields = {"metadata.name": _dig(node, "metadata", "name") or ""}
    return all(_matches_expression(labels, item) for item in expressions) and all(
        _matches_expression(node_fields, item) for item in fields
    )


def _tolerates(taint: Mapping, tolerations: Iterable[Mapping]) -> bool:
    for toleration in tolerations:
        if toleration.get("effect") and toleration.get("effect") != taint.get("effect"):
            continue
        if toleration.get("operator", "Equal") == "Exists":
            if not toleration.get("key") or toleration.get("key") == taint.get("key"):
                return True
        elif toleration.get("key") == taint.get("key") and toleration.get("value", "") == taint.get("value", ""):
            return True
    return False


def _node_rejection(node: Mapping, vmi: Mapping | None, extra_node_labels: Mapping[str, str]) -> str | None:
    """Return why the node cannot receive the migrating VMI, or None when it can."""
    labels = _labels(node)
    spec = _dig(vmi, "spec") or {}

    # A node with no Ready condition yet counts as Ready, as the simulator's scheduler treats it.
    # On a real cluster such a node also carries the node.kubernetes.io/not-ready taint, which
    # the taint check below rejects.
    ready = condition(node, "Ready")
    if ready is not None and ready.get("status") != "True":
        return "is not Ready"
    if _dig(node, "spec", "unschedulable"):
        return "is cordoned (unschedulable)"
    if labels.get(SCHEDULABLE_LABEL) != "true":
        return f"does not have {SCHEDULABLE_LABEL}=true"

    for key, value in {**(spec.get("nodeSelector") or {}), **extra_node_labels}.items():
        if labels.get(key) != value:
            return f"does not have {key}={value}"

    required = _dig(spec, "affinity", "nodeAffinity", "requiredDuringSchedulingIgnoredDuringExecution")
    terms = _dig(required, "nodeSelectorTerms") or []
    if required is not None and not any(_matches_term(node, term) for term in terms):
        return "does not match the VM's required node affinity"

    for taint in _dig(node, "spec", "taints") or []:
        if taint.get("effect") in ("NoSchedule", "NoExecute") and not _tolerates(taint, spec.get("tolerations") or []):
            return f"has taint {taint.get('key')}:{taint.get('effect')} that the VM does not tolerate"
    return None


def _target_rejections(view: ClusterView, extra_node_labels: Mapping[str, str]) -> dict[str, str | None]:
    source = _source_node(view.vmi)
    rejections: dict[str, str | None] = {}
    for node in view.nodes:
        name = _dig(node, "metadata", "name") or ""
        if name == source:
            continue
        rejections[name] = _node_rejection(node, view.vmi, extra_node_labels)
    return rejections


def _cluster_network_labels(cluster_networks: Iterable[str | None]) -> dict[str, str]:
    names = sorted({name for name in cluster_networks if name})
    return {f"{NODE_NETWORK_LABEL_PREFIX}{name}": "true" for name in names}


def _attached_cluster_networks(view: ClusterView, leaving: str | None = None) -> list[str | None]:
    """Return the cluster networks of the VM's secondary networks that stay attached.

    The bridge of each one must exist on the migration target too, whether or not the VM's
    affinity names it. Networks whose NAD is not in `view.nads` are skipped.
    """
    spec = _template_spec(view.vm)
    namespace = _dig(view.vm, "metadata", "namespace") or ""
    absent = {item.get("name") for item in _interfaces(spec) if item.get("state") == "absent"}

    cluster_networks: list[str | None] = []
    for network in _networks(spec):
        name = network.get("name")
        network_name = _dig(network, "multus", "networkName")
        if not network_name or name in absent or name == leaving:
            continue
        key = network_name if "/" in network_name else f"{namespace}/{network_name}"
        nad = view.nads.get(key)
        if nad is not None:
            cluster_networks.append(cluster_network_of(nad))
    return cluster_networks


def migration_targets(view: ClusterView, extra_node_labels: dict[str, str]) -> list[str]:
    """Return the nodes, other than the VMI's current one, that can receive it in a migration.

    A node qualifies when no Ready condition reports it NotReady, it is not cordoned, it is
    labelled kubevirt.io/schedulable=true, it matches the VMI's nodeSelector, required node
    affinity and `extra_node_labels`, and it has no NoSchedule or NoExecute taint the VMI does
    not tolerate. CPU, memory and other resources are not checked.
    """
    return [name for name, rejection in _target_rejections(view, extra_node_labels).items() if rejection is None]


# --- Rules shared by hot-plug and hot-unplug ------------------------------------------------


def _check_vm_exists(view: ClusterView, vm_name: str) -> Verdict:
    if view.vm is None:
        return _failed("vm-exists", Reason.VM_NOT_FOUND, f"VM {vm_name} not found; check the namespace and the name")
    if _dig(view.vm, "metadata", "deletionTimestamp"):
        message = f"VM {vm_name} is being deleted; nothing can be changed on it"
        return _failed("vm-exists", Reason.VM_BEING_DELETED, message)
    return _passed("vm-exists", f"VM {vm_name} exists")


def _check_vm_running(view: ClusterView, vm_name: str) -> Verdict:
    state = _vm_state(view)
    if state == "running":
        return _passed("vm-running", f"VM {vm_name} is running on node {_source_node(view.vmi)}; the change is live")
    if state == "stopped":
        return _passed(
            "vm-running",
            f"VM {vm_name} is stopped; the change is cold: it is written to the VM spec "
            "and takes effect at the next start",
        )

    printable_status = _dig(view.vm, "status", "printableStatus") or "unknown"
    phase = _vmi_phase(view.vmi) or "none"
    return _failed(
        "vm-running",
        Reason.VM_NOT_RUNNING,
        f"The VM is not in running state: VM {vm_name} is {printable_status} (VMI phase {phase}); "
        "wait until it is Running, or stop it for a cold change",
    )


def _check_vm_ready(view: ClusterView, vm_name: str) -> Verdict:
    if is_cold(view):
        return _passed("vm-ready", f"VM {vm_name} is stopped, so readiness is not needed")
    if condition_true(view.vmi, "Ready"):
        return _passed("vm-ready", f"VMI {vm_name} is Ready")

    ready = condition(view.vmi, "Ready") or {}
    detail = ready.get("reason") or ready.get("message") or "no Ready condition"
    return _failed(
        "vm-ready",
        Reason.VM_NOT_READY,
        f"Can't migrate the VM, the VM is not in ready status: VMI {vm_name} reports {detail}; "
        "wait until it is Ready, or check its guest and virt-launcher pod",
    )


def _check_no_migration(view: ClusterView, vm_name: str) -> Verdict:
    vmi_name = vm_name.split("/", 1)[1]
    for migration in view.migrations:
        if _dig(migration, "spec", "vmiName") not in (None, vmi_name):
            continue
        phase = _dig(migration, "status", "phase") or "Pending"
        if phase not in FINAL_MIGRATION_PHASES:
            return _failed(
                "no-migration-in-progress",
                Reason.MIGRATION_IN_PROGRESS,
                f"Migration {_dig(migration, 'metadata', 'name')} of VMI {vm_name} is {phase}; "
                "wait until it succeeds or fails, then retry",
            )

    state = _dig(view.vmi, "status", "migrationState") or {}
    ended = state.get("endTimestamp") or state.get("completed") or state.get("failed")
    if state.get("startTimestamp") and not ended:
        return _failed(
            "no-migration-in-progress",
            Reason.MIGRATION_IN_PROGRESS,
            f"VMI {vm_name} is migrating from {state.get('sourceNode')} to {state.get('targetNode')} "
            f"(migration {state.get('migrationUid')}); wait until it ends, then retry",
        )

    # Harvester keeps this annotation from a VMIM's creation until it ends, for any creator.
    harvester_state = _annotations(view.vmi or {}).get(MIGRATION_STATE_ANNOTATION)
    if harvester_state:
        return _failed(
            "no-migration-in-progress",
            Reason.MIGRATION_IN_PROGRESS,
            f"VMI {vm_name} has Harvester migration state {harvester_state!r}; "
            "wait until the migration ends, then retry",
        )
    return _passed("no-migration-in-progress", f"VMI {vm_name} has no unfinished migration")


def _check_kubevirt_ready(view: ClusterView) -> Verdict:
    if view.kubevirt is None:
        message = "KubeVirt is not ready: the KubeVirt CR was not found"
        return _failed("kubevirt-ready", Reason.KUBEVIRT_NOT_READY, message)

    available = condition(view.kubevirt, "Available") or {}
    if available.get("status") == "True" and available.get("reason") == "AllComponentsReady":
        return _passed("kubevirt-ready", f"KubeVirt {_qualified_name(view.kubevirt)} is Available (AllComponentsReady)")

    found = "no Available condition"
    if available:
        found = f"Available={available.get('status')} ({available.get('reason')})"
    return _failed(
        "kubevirt-ready",
        Reason.KUBEVIRT_NOT_READY,
        f"KubeVirt is not ready: {_qualified_name(view.kubevirt)} reports {found}; "
        "wait until all KubeVirt components are ready, for example after an upgrade",
    )


def _check_live_migratable(view: ClusterView, vm_name: str) -> Verdict:
    if is_cold(view):
        return _passed("live-migratable", f"VM {vm_name} is stopped, so no migration is needed")
    if view.vmi is None:
        message = f"VM {vm_name} is not live migratable as it is not running; start it first"
        return _failed("live-migratable", Reason.NOT_LIVE_MIGRATABLE, message)
    return is_live_migratable(view.vmi)


def _check_migration_target(view: ClusterView, vm_name: str, extra_node_labels: Mapping[str, str]) -> Verdict:
    if is_cold(view):
        return _passed("migration-target", f"VM {vm_name} is stopped, so no migration target is needed")

    rejections = _target_rejections(view, extra_node_labels)
    targets = [name for name, rejection in rejections.items() if rejection is None]
    source = _source_node(view.vmi) or "the current one"
    if targets:
        return _passed("migration-target", f"VMI {vm_name} can migrate from node {source} to {', '.join(targets)}")

    required_labels = ", ".join(f"{key}={value}" for key, value in extra_node_labels.items())
    details = "; ".join(f"node {name} {rejection}" for name, rejection in rejections.items())
    if not details:
        details = "the cluster has no other node"
    needs = f" with {required_labels}" if required_labels else ""
    return _failed(
        "migration-target",
        Reason.NO_MIGRATION_TARGET,
        f"No node other than {source} can receive VMI {vm_name}{needs}: {details}; "
        "make another node schedulable or add the cluster network to it, then retry",
    )


def _check_not_guest_cluster_node(view: ClusterView, vm_name: str) -> Verdict:
    if _labels(view.vm or {}).get(CREATOR_LABEL) == NODE_DRIVER_CREATOR:
        return _failed(
            "not-guest-cluster-node",
            Reason.GUEST_CLUSTER_NODE,
            f"{vm_name} doesn't support both HotPlugNic and HotUnplugNic as it is a guest cluster node; "
            "change the networks of its Rancher machine pool instead",
        )
    return _passed("not-guest-cluster-node", f"VM {vm_name} is not a guest-cluster node")


def _check_macs_in_spec(view: ClusterView, vm_name: str, allow_restart: bool) -> Verdict:
    missing = missing_macs(view.vm or {})
    if not missing:
        return _passed("macs-in-spec", f"Every interface of VM {vm_name} has a MAC in its spec")

    names = ", ".join(missing)
    unobserved = [name for name in missing if name not in observed_macs(view.vmi, view.vm or {})]
    if unobserved and (is_cold(view) or allow_restart):
        return _failed(
            "macs-in-spec",
            Reason.MAC_MISSING_IN_SPEC,
            f"VM {vm_name} has no macAddress on interfaces {names} in its spec, and no MAC was observed for "
            f"{', '.join(unobserved)}; start the VM once so that KubeVirt reports its MACs, then retry",
        )
    if is_cold(view) or allow_restart:
        conflict = _backfill_conflict(view, vm_name, missing)
        if conflict is not None:
            return _failed("macs-in-spec", Reason.MAC_IN_USE, conflict)
    if is_cold(view):
        message = f"VM {vm_name} has no macAddress on interfaces {names}; backfill writes the observed MACs first"
        return _passed("macs-in-spec", message)
    if allow_restart:
        return _passed(
            "macs-in-spec",
            f"VM {vm_name} has no macAddress on interfaces {names}; "
            "backfill writes the observed MACs and restarts the VM first",
        )
    return _failed(
        "macs-in-spec",
        Reason.MAC_MISSING_IN_SPEC,
        f"VM {vm_name} has no macAddress on interfaces {names} in its spec; run again with --allow-restart "
        "to write the observed MACs and restart the VM, or restart it from Harvester first",
    )


def _backfill_conflict(view: ClusterView, vm_name: str, missing: list[str]) -> str | None:
    """Return why an observed MAC cannot be written into the spec, or None when all can.

    A VM created from a template of another VM can carry that VM's MACs in its annotation.
    Writing one of them would give two VMs the same MAC on one cluster network.
    """
    vm = view.vm or {}
    namespace = _dig(vm, "metadata", "namespace") or "default"
    observed = observed_macs(view.vmi, vm)
    networks = {network.get("name"): network for network in _networks(_template_spec(vm))}
    for name in missing:
        mac = observed.get(name)
        if not mac:
            continue
        group = ""
        network_name = _dig(networks.get(name) or {}, "multus", "networkName")
        if network_name:
            try:
                group = cluster_network_of(view.nads.get(qualify_network(network_name, namespace)) or {}) or ""
            except ValueError:
                group = ""
        owner = view.macs_in_use.get(group, {}).get(mac)
        if owner and not owner.startswith(f"{vm_name}/"):
            return (
                f"the observed MAC {mac} of interface {name} of VM {vm_name} is already used by {owner} on "
                f"cluster network {group or 'mgmt (pod network)'}; give one of the two VMs a new MAC before the backfill"
            )
    return None


def _common_checks(
    view: ClusterView, vm_name: str, allow_restart: bool, extra_node_labels: Mapping[str, str]
) -> list[Verdict]:
    return [
        _check_vm_running(view, vm_name),
        _check_vm_ready(view, vm_name),
        _check_no_migration(view, vm_name),
        _check_kubevirt_ready(view),
        _check_live_migratable(view, vm_name),
        _check_migration_target(view, vm_name, extra_node_labels),
        _check_not_guest_cluster_node(view, vm_name),
        _check_macs_in_spec(view, vm_name, allow_restart),
    ]


# --- Hot-plug -------------------------------------------------------------------------------


def _check_nad(view: ClusterView, network: str) -> list[Verdict]:
    nad = view.nad
    if nad is None:
        return [
            _failed(
                "nad-exists",
                Reason.NAD_NOT_FOUND,
                f"NetworkAttachmentDefinition {network} not found; create the VM network first or check its namespace",
            )
        ]
    verdicts = [_passed("nad-exists", f"NetworkAttachmentDefinition {network} exists")]

    if _dig(nad, "metadata", "deletionTimestamp"):
        message = f"network {network} is not hot-pluggable: it is being deleted"
        verdicts.append(_failed("nad-not-deleting", Reason.NAD_BEING_DELETED, message))
    else:
        verdicts.append(_passed("nad-not-deleting", f"NetworkAttachmentDefinition {network} is not being deleted"))

    if _dig(nad, "metadata", "namespace") == SYSTEM_NAMESPACE:
        verdicts.append(
            _failed(
                "nad-namespace",
                Reason.NAD_SYSTEM_NAMESPACE,
                f"network {network} is not hot-pluggable: networks in {SYSTEM_NAMESPACE} are system networks "
                "(storage or VM migration); choose a VM network",
            )
        )
    else:
        verdicts.append(_passed("nad-namespace", f"NetworkAttachmentDefinition {network} is not in {SYSTEM_NAMESPACE}"))

    verdicts.append(_check_nad_bridge(nad, network))
    return verdicts


def _check_nad_bridge(nad: Mapping, network: str) -> Verdict:
    config_text = _dig(nad, "spec", "config") or ""
    try:
        config = json.loads(config_text)
    except (json.JSONDecodeError, TypeError) as error:
        return _failed(
            "nad-bridge",
            Reason.NAD_CONFIG_INVALID,
            f"failed to unmarshal nad {network} config {config_text!r}: {error}; "
            "fix spec.config of the NetworkAttachmentDefinition",
        )
    if not isinstance(config, dict):
        return _failed(
            "nad-bridge",
            Reason.NAD_CONFIG_INVALID,
            f"failed to unmarshal nad {network} config {config_text!r}: not a JSON object; fix spec.config",
        )

    cni_type = config.get("type")
    if cni_type != "bridge":
        return _failed(
            "nad-bridge",
            Reason.NAD_NOT_BRIDGE,
            f"network {network} is not hot-pluggable: its CNI type is {cni_type!r}; only bridge networks "
            "(VLAN, untagged, VLAN trunk) can be hot-plugged",
        )
    return _passed("nad-bridge", f"NetworkAttachmentDefinition {network} uses the bridge CNI")


def _used_names(view: ClusterView) -> dict[str, list[str]]:
    """Map each interface or network name of the VM and VMI specs to where it is used."""
    used: dict[str, list[str]] = {}
    specs = [("VM", _template_spec(view.vm or {}))]
    if view.vmi is not None:
        specs.append(("VMI", _dig(view.vmi, "spec") or {}))
    for owner, spec in specs:
        for kind, items in (("interface", _interfaces(spec)), ("network", _networks(spec))):
            for item in items:
                place = f"{owner} {kind}"
                if place not in used.setdefault(item.get("name", ""), []):
                    used[item.get("name", "")].append(place)
    return used


def _free_interface_name(used: Mapping[str, object]) -> str:
    number = 1
    while f"nic-{number}" in used:
        number += 1
    return f"nic-{number}"


def _check_interface_name(view: ClusterView, vm_name: str, interface: str) -> list[Verdict]:
    if not INTERFACE_NAME_PATTERN.fullmatch(interface) or len(interface) > INTERFACE_NAME_MAX_LENGTH:
        return [
            _failed(
                "interface-name-valid",
                Reason.INTERFACE_NAME_INVALID,
                f"Interface name {interface!r} is invalid: it can only contain alphabetical characters, numbers, "
                f"dashes (-) or underscores (_), and nicflow allows at most {INTERFACE_NAME_MAX_LENGTH} characters",
            )
        ]
    verdicts = [_passed("interface-name-valid", f"Interface name {interface} is valid")]

    used = _used_names(view)
    if interface in used:
        absent = any(
            item.get("name") == interface and item.get("state") == "absent"
            for item in _interfaces(_template_spec(view.vm))
        )
        note = ". An interface marked absent keeps its name until KubeVirt removes it" if absent else ""
        verdicts.append(
            _failed(
                "interface-name-unique",
                Reason.INTERFACE_NAME_TAKEN,
                f"Interface name {interface} is already used on VM {vm_name} ({', '.join(used[interface])}); "
                f"choose another name, for example {_free_interface_name(used)}{note}",
            )
        )
    else:
        message = f"No interface or network of VM {vm_name} is named {interface}"
        verdicts.append(_passed("interface-name-unique", message))
    return verdicts


def _normalized_keys(macs: Mapping[str, str]) -> dict[str, str]:
    normalized: dict[str, str] = {}
    for mac, owner in macs.items():
        try:
            normalized[normalize_mac(mac)] = owner
        except ValueError as error:
            logger.warning("Ignoring an invalid MAC in use by %s: %s", owner, error)
    return normalized


def _check_mac(view: ClusterView, vm_name: str, mac: str | None, cluster_network: str | None) -> list[Verdict]:
    # Harvester groups MACs by cluster network, and pod networks and unlabelled NADs share group "".
    network_text = f"cluster network {cluster_network}" if cluster_network else "the group without a cluster network"
    if mac is None:
        message = f"No MAC given; nicflow allocates a locally administered MAC unique on {network_text}"
        return [_passed("mac-valid", message)]

    try:
        normalized = normalize_mac(mac)
    except ValueError as error:
        return [_failed("mac-valid", Reason.MAC_INVALID, f"{error}; or omit the MAC to let nicflow allocate one")]
    if normalized == "00:00:00:00:00:00":
        message = "MAC address 00:00:00:00:00:00 is invalid for an interface; choose another"
        return [_failed("mac-valid", Reason.MAC_INVALID, message)]
    verdicts = [_passed("mac-valid", f"MAC {mac} is valid ({normalized})")]

    if not is_unicast(normalized):
        verdicts.append(
            _failed(
                "mac-unicast",
                Reason.MAC_NOT_UNICAST,
                f"MAC {normalized} is a multicast address (lowest bit of the first octet set); "
                "use a unicast MAC, for example one whose first octet is 02",
            )
        )
        return verdicts
    verdicts.append(_passed("mac-unicast", f"MAC {normalized} is unicast"))

    if cluster_network is None and view.nad is None:
        return verdicts
    group = cluster_network or ""
    in_use = _normalized_keys(view.macs_in_use.get(group, {}))
    reserved = _normalized_keys(view.reserved_macs.get(group, {}))
    if normalized in in_use:
        verdicts.append(
            _failed(
                "mac-unique",
                Reason.MAC_IN_USE,
                f"duplicate mac address present for vm {vm_name} for {network_text}: MAC {normalized} is "
                f"used by {in_use[normalized]}; choose another MAC or omit it to let nicflow allocate one",
            )
        )
    elif normalized in reserved:
        verdicts.append(
            _failed(
                "mac-unique",
                Reason.MAC_IN_USE,
                f"MAC {normalized} is reserved on {network_text} by running operation "
                f"{reserved[normalized]}; choose another MAC or wait until that operation ends",
            )
        )
    else:
        verdicts.append(_passed("mac-unique", f"MAC {normalized} is not used on {network_text}"))
    return verdicts


def allocate_hotplug_mac(view: ClusterView, rng: random.Random | None = None) -> str:
    """Generate a locally administered MAC unused and unreserved on the new NAD's cluster network.

    Call it after check_hotplug passed, so that `view.nad` is the NAD being added.
    """
    group = ""
    if view.nad is not None:
        group = cluster_network_of(view.nad) or ""
    unavailable = [*view.macs_in_use.get(group, {}), *view.reserved_macs.get(group, {})]
    return allocate_mac(unavailable, rng)


def _check_root_ports(view: ClusterView, vm_name: str) -> Verdict:
    if is_cold(view) or view.vmi is None:
        message = f"VM {vm_name} is not running, so the interface gets its PCI slot at the next start"
        return _passed("root-ports", message)

    if _annotations(view.vmi).get(pciports.ROOT_COMPLEX_ANNOTATION) == "true":
        return _failed(
            "root-ports",
            Reason.ROOT_PORTS_EXHAUSTED,
            f"VMI {vm_name} has {pciports.ROOT_COMPLEX_ANNOTATION}=true, so KubeVirt reserved no PCIe root port "
            "for hot-plug; remove the annotation from the VM and restart it, then retry",
        )

    free = pciports.free_hotplug_ports(view.vmi, view.hotplugged_since_start)
    if free is None:
        message = f"Free PCIe root ports of VMI {vm_name} are not estimated for its machine type or memory"
        return _passed("root-ports", message)
    if free <= 0:
        return _failed(
            "root-ports",
            Reason.ROOT_PORTS_EXHAUSTED,
            f"VMI {vm_name} has no free PCIe root port left for a hot-plugged interface "
            f"(estimate, {view.hotplugged_since_start} hot-plugged since start); restart the VM, which re-counts "
            "the ports and makes hot-plugged interfaces permanent, then retry",
        )
    return _passed("root-ports", f"VMI {vm_name} has an estimated {free} free PCIe root ports for hot-plug")


def check_hotplug(
    view: ClusterView,
    *,
    interface: str,
    network: str,
    mac: str | None,
    allow_restart: bool = False,
) -> list[Verdict]:
    """Apply every hot-plug rule and return one verdict per rule, passing or failing.

    The order is stable: the VM, its state and migration rules, then the network, the
    interface name, the MAC and the PCIe root ports. A stopped VM passes the state and
    migration rules as a cold change (see `is_cold`). When the VM is missing, only the
    rules that do not read it follow. A rule whose input is missing or invalid (the NAD, the
    network name, the MAC syntax) fails once, and the rules that depend on it are left out.
    """
    vm_name = _vm_name(view)
    verdicts = [_check_vm_exists(view, vm_name)]

    namespace = vm_name.split("/", 1)[0] if "/" in vm_name else ""
    try:
        qualified_network = qualify_network(network, namespace) if namespace or "/" in network else network
    except ValueError as error:
        qualified_network = None
        network_verdict = _failed("network-name", Reason.NETWORK_NAME_INVALID, str(error))
    else:
        message = f"Network {network} refers to NetworkAttachmentDefinition {qualified_network}"
        network_verdict = _passed("network-name", message)

    cluster_network = cluster_network_of(view.nad) if view.nad is not None else None
    node_labels = _cluster_network_labels([*_attached_cluster_networks(view), cluster_network])

    if view.vm is not None:
        verdicts.extend(_common_checks(view, vm_name, allow_restart, node_labels))
    else:
        verdicts.append(_check_kubevirt_ready(view))

    verdicts.append(network_verdict)
    if qualified_network is not None:
        verdicts.extend(_check_nad(view, qualified_network))
    verdicts.extend(_check_interface_name(view, vm_name, interface))
    verdicts.extend(_check_mac(view, vm_name, mac, cluster_network))
    if view.vm is not None:
        verdicts.append(_check_root_ports(view, vm_name))

    _log_failures("hot-plug", vm_name, verdicts)
    return verdicts


# --- Hot-unplug -----------------------------------------------------------------------------


def _check_interface_for_unplug(view: ClusterView, vm_name: str, interface: str) -> list[Verdict]:
    spec = _template_spec(view.vm or {})
    interfaces = _interfaces(spec)
    target = next((item for item in interfaces if item.get("name") == interface), None)
    if target is None:
        names = ", ".join(item.get("name", "") for item in interfaces) or "none"
        return [
            _failed(
                "interface-exists",
                Reason.INTERFACE_NOT_FOUND,
                f"interface {interface} doesn't exist on VM {vm_name}; its interfaces are {names}",
            )
        ]
    verdicts = [_passed("interface-exists", f"VM {vm_name} has interface {interface}")]

    if target.get("state") == "absent":
        verdicts.append(
            _failed(
                "interface-not-absent",
                Reason.INTERFACE_ALREADY_ABSENT,
                f"{interface} was already registered for hot-unplugging on VM {vm_name}; "
                "wait until KubeVirt removes it",
            )
        )
    else:
        verdicts.append(_passed("interface-not-absent", f"Interface {interface} is not marked absent"))

    if "bridge" not in target:
        bindings = ("masquerade", "sriov", "slirp", "passt", "binding")
        binding = next((key for key in bindings if key in target), "unknown")
        verdicts.append(
            _failed(
                "interface-bridge",
                Reason.INTERFACE_NOT_BRIDGE,
                f"{interface} is not in bridge mode (binding {binding}); only bridge interfaces can be hot-unplugged, "
                "so remove it from the VM spec and restart the VM instead",
            )
        )
    else:
        verdicts.append(_passed("interface-bridge", f"Interface {interface} uses bridge binding"))

    model = target.get("model") or ""
    if model not in ("", "virtio"):
        verdicts.append(
            _failed(
                "interface-virtio",
                Reason.INTERFACE_NOT_VIRTIO,
                f"{interface} is not using virtio model (model {model}); "
                "remove it from the VM spec and restart the VM instead",
            )
        )
    else:
        verdicts.append(_passed("interface-virtio", f"Interface {interface} uses the virtio model"))

    network = next((item for item in _networks(spec) if item.get("name") == interface), {})
    if "pod" in network:
        verdicts.append(
            _failed(
                "interface-not-pod-network",
                Reason.INTERFACE_ON_POD_NETWORK,
                f"Interface {interface} of VM {vm_name} is on the pod (management) network; "
                "KubeVirt supports state absent only on secondary networks",
            )
        )
    else:
        verdicts.append(_passed("interface-not-pod-network", f"Interface {interface} is on a secondary network"))

    verdicts.append(_check_pod_interface_name(view, vm_name, interface))
    verdicts.append(_check_not_last(view, vm_name, interface, interfaces))
    return verdicts


def _check_pod_interface_name(view: ClusterView, vm_name: str, interface: str) -> Verdict:
    statuses = _dig(view.vmi, "status", "interfaces") or []
    status = next((item for item in statuses if item.get("name") == interface), {})
    pod_interface = status.get("podInterfaceName") or ""
    if ORDINAL_POD_INTERFACE.fullmatch(pod_interface):
        return _failed(
            "pod-interface-name",
            Reason.INTERFACE_ORDINAL_NAME,
            f"Interface {interface} of VMI {vm_name} is {pod_interface} in its virt-launcher pod, an ordinal name "
            "from KubeVirt v0.59 or older, and KubeVirt ignores state absent there; restart the VM first",
        )
    return _passed("pod-interface-name", f"Interface {interface} does not use an ordinal pod interface name")


def _check_not_last(view: ClusterView, vm_name: str, interface: str, interfaces: list[dict]) -> Verdict:
    remaining = [
        item.get("name") for item in interfaces if item.get("state") != "absent" and item.get("name") != interface
    ]
    left = len(remaining) - view.pending_unplugs
    if left < 1:
        return _failed(
            "not-last-interface",
            Reason.LAST_INTERFACE,
            f"{vm_name} doesn't support HotUnplugNic as it has only one nic: removing {interface} would leave "
            f"no interface once absent interfaces and {view.pending_unplugs} pending unplugs are counted",
        )
    noun = "interface" if left == 1 else "interfaces"
    return _passed("not-last-interface", f"VM {vm_name} keeps {left} other {noun} after removing {interface}")


def check_unplug(view: ClusterView, *, interface: str, allow_restart: bool = False) -> list[Verdict]:
    """Apply every hot-unplug rule and return one verdict per rule, passing or failing.

    The order is stable: the VM, its state and migration rules, then the interface. A
    stopped VM passes the state and migration rules as a cold change. When the VM or the
    interface is missing, the rules that read it are left out.
    """
    vm_name = _vm_name(view)
    verdicts = [_check_vm_exists(view, vm_name)]
    if view.vm is None:
        _log_failures("hot-unplug", vm_name, verdicts)
        return verdicts

    node_labels = _cluster_network_labels(_attached_cluster_networks(view, leaving=interface))
    verdicts.extend(_common_checks(view, vm_name, allow_restart, node_labels))
    verdicts.extend(_check_interface_for_unplug(view, vm_name, interface))

    _log_failures("hot-unplug", vm_name, verdicts)
    return verdicts


def _vm_name(view: ClusterView) -> str:
    for obj in (view.vm, view.vmi):
        if obj is not None:
            return _qualified_name(obj)
    return view.vm_ref or "<unnamed>"


def _log_failures(operation: str, vm_name: str, verdicts: list[Verdict]) -> None:
    for verdict in verdicts:
        if not verdict.passed:
            logger.debug("%s on VM %s fails rule %s (%s)", operation, vm_name, verdict.rule, verdict.reason)
