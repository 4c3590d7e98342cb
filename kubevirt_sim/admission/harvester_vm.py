"""Harvester v1.7's VM webhooks: `mutator.harvesterhci.io` and `validator.harvesterhci.io`.

Only the network parts are simulated: MAC generation, cluster-network node affinity and the
duplicate-MAC check. Resource overcommit, CPU defaults, volume and backup checks are not.
"""

from __future__ import annotations

import copy
import json
import logging
from typing import Any

from kubevirt_sim.admission.macs import generate_laa_mac
from kubevirt_sim.admission.reader import ObjectReader

logger = logging.getLogger(__name__)

MUTATOR = "mutator.harvesterhci.io"
VALIDATOR = "validator.harvesterhci.io"

MAC_ADDRESS_ANNOTATION = "harvesterhci.io/mac-address"
CLUSTER_NETWORK_LABEL = "network.harvesterhci.io/clusternetwork"
NETWORK_LABEL_PREFIX = "network.harvesterhci.io"
CPU_MANAGER_LABEL = "cpumanager"

NAD_PLURAL = "network-attachment-definitions"
NAD_GROUP = "k8s.cni.cncf.io"


class HarvesterWebhookError(Exception):
    """A plain Go error returned by a Harvester webhook.

    Harvester's admission handler turns every error that is not one of its own typed errors into a
    500 InternalError (harvester v1.7.3, `pkg/webhook/types/admission.go`), and the apiserver passes
    that code on to the client.
    """


def template_spec(vm: dict[str, Any]) -> dict[str, Any] | None:
    """Return `spec.template.spec` of a VM, or None when the VM has no template."""
    template = (vm.get("spec") or {}).get("template")
    if template is None:
        return None
    return template.get("spec") or {}


def template_interfaces(vm: dict[str, Any]) -> list[dict[str, Any]]:
    spec = template_spec(vm) or {}
    return ((spec.get("domain") or {}).get("devices") or {}).get("interfaces") or []


def template_networks(vm: dict[str, Any]) -> list[dict[str, Any]]:
    spec = template_spec(vm) or {}
    return spec.get("networks") or []


def multus_network_name(network: dict[str, Any]) -> str:
    """Return `multus.networkName` of a VM network, or "" for pod networks and empty names."""
    multus = network.get("multus")
    if not multus:
        return ""
    return multus.get("networkName") or ""


def annotated_macs(vm: dict[str, Any]) -> dict[str, str]:
    """Parse the `harvesterhci.io/mac-address` annotation, counting an unparsable value as empty as Harvester does."""
    raw = ((vm.get("metadata") or {}).get("annotations") or {}).get(MAC_ADDRESS_ANNOTATION)
    if raw is None:
        return {}
    try:
        parsed = json.loads(raw)
    except ValueError:
        logger.warning("unable to unmarshal %s: %s", MAC_ADDRESS_ANNOTATION, raw)
        return {}
    if not isinstance(parsed, dict) or not all(isinstance(value, str) for value in parsed.values()):
        logger.warning("unable to unmarshal %s: %s", MAC_ADDRESS_ANNOTATION, raw)
        return {}
    return parsed


def resolve_nad(reader: ObjectReader, network_name: str, default_namespace: str) -> dict[str, Any]:
    """Look up the NAD that `network_name` ("ns/name" or a bare "name") refers to.

    Raises HarvesterWebhookError with the informer cache's NotFound message when it does not exist,
    and Harvester's message for a name with more than one slash.
    """
    words = network_name.split("/")
    if len(words) == 1:
        namespace, name = default_namespace, words[0]
    elif len(words) == 2:
        namespace, name = words
    else:
        raise HarvesterWebhookError(f"invalid network name {network_name}")

    nad = reader.try_get(NAD_PLURAL, namespace, name)
    if nad is None:
        raise HarvesterWebhookError(f'{NAD_PLURAL}.{NAD_GROUP} "{name}" not found')
    return nad


# Mutator --------------------------------------------------------------------------------------


def patch_interface_macs(vm: dict[str, Any], generate: Any = generate_laa_mac) -> list[str]:
    """Give every template interface with an empty MAC a generated one, in place.

    An interface whose name is a key of the `harvesterhci.io/mac-address` annotation keeps its empty
    MAC, because that is a VM from before v1.7 whose MAC is injected into the VMI instead. Returns
    the names of the interfaces that got a MAC.
    """
    if template_spec(vm) is None:
        return []
    observed = annotated_macs(vm)

    patched = []
    for interface in template_interfaces(vm):
        if interface.get("macAddress"):
            continue
        name = interface.get("name", "")
        if name in observed:
            continue
        interface["macAddress"] = generate()
        patched.append(name)
    return patched


def _requirement_for_network(
    reader: ObjectReader, network: dict[str, Any], vm_namespace: str
) -> dict[str, Any] | None:
    network_name = multus_network_name(network)
    if not network_name:
        return None

    # The mutator resolves a bare name in the VM's namespace (unlike the validator).
    nad = resolve_nad(reader, network_name, vm_namespace)
    labels = (nad.get("metadata") or {}).get("labels") or {}
    if CLUSTER_NETWORK_LABEL not in labels:
        return None
    return {
        "key": f"{NETWORK_LABEL_PREFIX}/{labels[CLUSTER_NETWORK_LABEL]}",
        "operator": "In",
        "values": ["true"],
    }


def _same_requirement(left: dict[str, Any], right: dict[str, Any]) -> bool:
    return (
        left.get("key") == right.get("key")
        and left.get("operator") == right.get("operator")
        and list(left.get("values") or []) == list(right.get("values") or [])
    )


def _is_dedicated_cpu(spec: dict[str, Any]) -> bool:
    cpu = (spec.get("domain") or {}).get("cpu") or {}
    return bool(cpu.get("dedicatedCpuPlacement"))


def _add_to_every_term(terms: list[dict[str, Any]], requirement: dict[str, Any]) -> None:
    """Add `requirement` to each term lacking it, or create a term when there is none.

    Terms are ORed and the expressions inside a term are ANDed, so every term needs it.
    """
    for term in terms:
        expressions = term.setdefault("matchExpressions", [])
        if not any(_same_requirement(expression, requirement) for expression in expressions):
            expressions.append(copy.deepcopy(requirement))
    if not terms:
        terms.append({"matchExpressions": [copy.deepcopy(requirement)]})


def patch_affinity(reader: ObjectReader, vm: dict[str, Any]) -> None:
    """Rebuild `spec.template.spec.affinity` from the VM's networks, in place.

    Required node-selector expressions whose key starts with `network.harvesterhci.io` or equals
    `cpumanager` are dropped, and a term left with no expression is dropped with them (its
    matchFields too, as Harvester does). Then each Multus network whose NAD carries the
    cluster-network label adds `network.harvesterhci.io/<cn> In ["true"]`, and dedicated CPU
    placement adds `cpumanager In ["true"]`. Raises HarvesterWebhookError when a NAD is missing.
    """
    spec = template_spec(vm)
    if spec is None:
        return
    namespace = (vm.get("metadata") or {}).get("namespace") or ""

    affinity = copy.deepcopy(spec.get("affinity") or {})
    node_affinity = affinity.get("nodeAffinity") or {}
    required = node_affinity.get("requiredDuringSchedulingIgnoredDuringExecution") or {}
    preferred = node_affinity.get("preferredDuringSchedulingIgnoredDuringExecution") or []

    terms = []
    for term in required.get("nodeSelectorTerms") or []:
        remaining = [
            expression
            for expression in term.get("matchExpressions") or []
            if not str(expression.get("key", "")).startswith(NETWORK_LABEL_PREFIX)
            and expression.get("key") != CPU_MANAGER_LABEL
        ]
        if remaining:
            terms.append({**term, "matchExpressions": remaining})

    for network in spec.get("networks") or []:
        requirement = _requirement_for_network(reader, network, namespace)
        if requirement is not None:
            _add_to_every_term(terms, requirement)

    if _is_dedicated_cpu(spec):
        _add_to_every_term(terms, {"key": CPU_MANAGER_LABEL, "operator": "In", "values": ["true"]})

    # Harvester never writes an empty required selector. With no term left it drops the required
    # selector, and it drops the whole nodeAffinity when nothing is preferred either.
    if terms:
        node_affinity["requiredDuringSchedulingIgnoredDuringExecution"] = {**required, "nodeSelectorTerms": terms}
        affinity["nodeAffinity"] = node_affinity
    elif preferred:
        node_affinity.pop("requiredDuringSchedulingIgnoredDuringExecution", None)
        affinity["nodeAffinity"] = node_affinity
    else:
        affinity.pop("nodeAffinity", None)
    spec["affinity"] = affinity


def mutate_vm(reader: ObjectReader, operation: str, vm: dict[str, Any]) -> dict[str, Any]:
    """Run `mutator.harvesterhci.io` on a VM create or update and return the mutated copy.

    The affinity runs before MAC generation, as in Harvester. An update of a VM that is being
    deleted passes unchanged. Raises HarvesterWebhookError (a 500 denial) when a NAD is missing.
    """
    mutated = copy.deepcopy(vm)
    if operation == "UPDATE" and (mutated.get("metadata") or {}).get("deletionTimestamp"):
        return mutated

    patch_affinity(reader, mutated)
    generated = patch_interface_macs(mutated)
    if generated:
        metadata = mutated.get("metadata") or {}
        logger.info(
            "generated MAC addresses for VM %s/%s interfaces %s",
            metadata.get("namespace"),
            metadata.get("name"),
            ", ".join(generated),
        )
    return mutated


# Validator ------------------------------------------------------------------------------------


def _macs_by_cluster_network(reader: ObjectReader, vms: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """Map cluster network -> MAC -> "<interface>+<ns>/<vm>" over `vms`, later VMs overwriting earlier ones.

    Interfaces on the pod network, or on a NAD without the cluster-network label, fall in group "".
    """
    groups: dict[str, dict[str, str]] = {}
    for vm in vms:
        metadata = vm.get("metadata") or {}
        owner = f"{metadata.get('namespace')}/{metadata.get('name')}"
        if template_spec(vm) is None:
            raise HarvesterWebhookError(f"vm {metadata.get('name')} template is nil")

        cluster_network_of: dict[str, str] = {}
        for network in template_networks(vm):
            network_name = multus_network_name(network)
            if not network_name:
                continue
            # NOTE: Harvester resolves a bare networkName in namespace "default", not in the VM's
            # namespace, so a VM elsewhere gets a NotFound or the wrong NAD's cluster network.
            nad = resolve_nad(reader, network_name, "default")
            labels = (nad.get("metadata") or {}).get("labels") or {}
            cluster_network_of[network.get("name", "")] = labels.get(CLUSTER_NETWORK_LABEL, "")

        for interface in template_interfaces(vm):
            mac = interface.get("macAddress") or ""
            if not mac:
                continue
            name = interface.get("name", "")
            group = cluster_network_of.get(name, "")
            groups.setdefault(group, {})[mac] = f"{name}+{owner}"
    return groups


def duplicate_mac_error(reader: ObjectReader, vm: dict[str, Any]) -> str | None:
    """Return Harvester's duplicate-MAC message for `vm`, or None when its MACs are unique.

    A MAC counts as taken when any stored VM uses it on an interface of the same cluster network
    under a different "<interface>+<ns>/<vm>" key. MACs are compared as raw strings, so the check is
    case-sensitive. Raises HarvesterWebhookError when a NAD lookup fails for this VM or for a stored
    VM that shares one of its MACs.
    """
    own = _macs_by_cluster_network(reader, [vm])
    if not own:
        return None

    macs = {interface.get("macAddress") or "" for interface in template_interfaces(vm)}
    macs.discard("")
    stored, _ = reader.list("virtualmachines")
    candidates = [
        other for other in stored if any((i.get("macAddress") or "") in macs for i in template_interfaces(other))
    ]
    if not candidates:
        return None

    # Harvester reads the candidates from an informer index in no fixed order, and a later VM
    # overwrites an earlier one's entry for the same MAC. The stored copy of this VM goes first
    # here, so another VM using the MAC always wins and the duplicate is always reported.
    metadata = vm.get("metadata") or {}
    identity = (metadata.get("namespace"), metadata.get("name"))
    candidates.sort(key=lambda other: _identity(other) != identity)
    stored_owners = _macs_by_cluster_network(reader, candidates)

    for cluster_network, owners in own.items():
        other_owners = stored_owners.get(cluster_network, {})
        for mac, owner in owners.items():
            if mac in other_owners and other_owners[mac] != owner:
                return f"duplicate mac address present for vm {metadata.get('name')} for cluster network {cluster_network}"
    return None


def _identity(vm: dict[str, Any]) -> tuple[Any, Any]:
    metadata = vm.get("metadata") or {}
    return metadata.get("namespace"), metadata.get("name")


def validate_vm(reader: ObjectReader, operation: str, old: dict[str, Any] | None, vm: dict[str, Any]) -> str | None:
    """Run the network part of `validator.harvesterhci.io` and return its error message, or None.

    On update the duplicate-MAC check runs only when the template interface list changed.
    A HarvesterWebhookError from a NAD lookup becomes the returned message, because Harvester
    returns both as plain errors.
    """
    if operation == "UPDATE" and old is not None:
        if (
            template_spec(old) is not None
            and template_spec(vm) is not None
            and _raw_interfaces(old) == _raw_interfaces(vm)
        ):
            return None

    try:
        return duplicate_mac_error(reader, vm)
    except HarvesterWebhookError as error:
        return str(error)


def _raw_interfaces(vm: dict[str, Any]) -> Any:
    spec = template_spec(vm) or {}
    return ((spec.get("domain") or {}).get("devices") or {}).get("interfaces")
