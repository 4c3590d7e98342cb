"""virt-launcher pods: how they are built and how a VMI finds its current one."""

from __future__ import annotations

import copy
import json

from kubevirt_sim import naming
from kubevirt_sim.controllers.network import (
    NETWORK_STATUS_ANNOTATION,
    NETWORKS_ANNOTATION,
    pod_network_status,
)
from kubevirt_sim.controllers.objects import dig, is_deleting

LAUNCHER_LABEL = "kubevirt.io"
LAUNCHER_LABEL_VALUE = "virt-launcher"
CREATED_BY_LABEL = "kubevirt.io/created-by"
VM_NAME_LABEL = "vm.kubevirt.io/name"
MIGRATION_JOB_LABEL = "kubevirt.io/migrationJobUID"
DOMAIN_ANNOTATION = "kubevirt.io/domain"
HOSTNAME_TOPOLOGY_KEY = "kubernetes.io/hostname"

# The virt-launcher image of the SUSE KubeVirt build that Harvester v1.7.0 and v1.7.1 ship.
LAUNCHER_IMAGE = "registry.suse.com/suse/sles/15.7/virt-launcher:1.6.3-150700.3.13.1"


def launcher_pod(vmi: dict, networks: list[dict], pod_ip: str, primary_mac: str,
                 node_name: str | None, migration_uid: str | None = None,
                 secondary_status: list[dict] | None = None) -> dict:
    """Build a virt-launcher pod for a VMI.

    `networks` is the pod's Multus networks annotation. Thin Multus writes the network-status once,
    when the pod starts on its node: from `secondary_status` when given (a pod rebuilt to match a
    loaded VMI), else from `networks`. A pod built with no node gets it later from
    `network_status_annotation`. A migration target pod (`migration_uid` set) gets a required
    anti-affinity against the VMI's other pods, so it never lands on the source node.
    """
    metadata = vmi.get("metadata", {})
    status_networks = networks if secondary_status is None else secondary_status
    labels = {
        LAUNCHER_LABEL: LAUNCHER_LABEL_VALUE,
        CREATED_BY_LABEL: metadata.get("uid", ""),
        VM_NAME_LABEL: metadata.get("name", ""),
    }
    if migration_uid:
        labels[MIGRATION_JOB_LABEL] = migration_uid

    affinity = copy.deepcopy(vmi.get("spec", {}).get("affinity") or {})
    if migration_uid:
        affinity["podAntiAffinity"] = {
            "requiredDuringSchedulingIgnoredDuringExecution": [{
                "labelSelector": {"matchExpressions": [
                    {"key": CREATED_BY_LABEL, "operator": "In", "values": [metadata.get("uid", "")]},
                ]},
                "topologyKey": HOSTNAME_TOPOLOGY_KEY,
            }],
        }

    spec: dict = {
        "containers": [{"name": "compute", "image": LAUNCHER_IMAGE}],
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": vmi.get("spec", {}).get("terminationGracePeriodSeconds", 30),
    }
    if affinity:
        spec["affinity"] = affinity
    if vmi.get("spec", {}).get("nodeSelector"):
        spec["nodeSelector"] = copy.deepcopy(vmi["spec"]["nodeSelector"])
    if node_name:
        spec["nodeName"] = node_name

    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": naming.launcher_pod_name(metadata.get("name", "")),
            "namespace": metadata.get("namespace", ""),
            "labels": labels,
            "annotations": {
                DOMAIN_ANNOTATION: metadata.get("name", ""),
                NETWORKS_ANNOTATION: json.dumps(networks, separators=(",", ":")),
            },
            "ownerReferences": [{
                "apiVersion": "kubevirt.io/v1",
                "kind": "VirtualMachineInstance",
                "name": metadata.get("name", ""),
                "uid": metadata.get("uid", ""),
                "controller": True,
                "blockOwnerDeletion": True,
            }],
        },
        "spec": spec,
        "status": running_pod_status(pod_ip) if node_name else pending_pod_status(),
    }
    if node_name:
        pod["metadata"]["annotations"][NETWORK_STATUS_ANNOTATION] = network_status_annotation(
            status_networks, pod_ip, primary_mac)
    return pod


def network_status_annotation(networks: list[dict], pod_ip: str, primary_mac: str) -> str:
    """Return the network-status annotation value for a pod's Multus `networks` entries."""
    return json.dumps(pod_network_status(networks, pod_ip, primary_mac), indent=1)


def networks_of(pod: dict) -> list[dict]:
    """Return a pod's Multus networks annotation as a list (empty when missing or invalid)."""
    raw = pod.get("metadata", {}).get("annotations", {}).get(NETWORKS_ANNOTATION) or "[]"
    try:
        networks = json.loads(raw)
    except ValueError:
        return []
    return networks if isinstance(networks, list) else []


def running_pod_status(pod_ip: str, host_ip: str | None = None) -> dict:
    status = {
        "phase": "Running",
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}],
        "conditions": [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Ready", "status": "True"},
        ],
    }
    if host_ip:
        status["hostIP"] = host_ip
    return status


def pending_pod_status(message: str | None = None) -> dict:
    condition = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}
    if message:
        condition["message"] = message
    return {"phase": "Pending", "conditions": [condition]}


def pod_ip(pod: dict | None) -> str | None:
    return dig(pod, "status", "podIP")


def current_pod(pods: list[dict], vmi: dict) -> dict | None:
    """Return the VMI's active pod: a live pod of the VMI on the VMI's node."""
    node = vmi.get("status", {}).get("nodeName")
    uid = vmi.get("metadata", {}).get("uid")
    active = vmi.get("status", {}).get("activePods") or {}
    candidates = [
        pod for pod in pods
        if pod.get("metadata", {}).get("labels", {}).get(CREATED_BY_LABEL) == uid
        and not is_deleting(pod)
        and node and pod.get("spec", {}).get("nodeName") == node
    ]
    for pod in candidates:
        if pod["metadata"].get("uid") in active:
            return pod
    return candidates[0] if candidates else None
