"""Gather the cluster objects that the rules read, through the KubeVirt client."""

from __future__ import annotations

from collections.abc import Callable

from nicflow import rules
from nicflow.kube import KubeVirtClient
from nicflow.status import collect_vm_macs


def gather_view(
    kube: KubeVirtClient,
    vm_namespace: str,
    vm_name: str,
    network: str | None,
    reserved_macs: dict[str, dict[str, str]] | None = None,
    hotplugged_since_start: int = 0,
    on_progress: Callable[[], None] = lambda: None,
) -> rules.ClusterView:
    """Read the VM, its VMI and migrations, nodes, NADs, the KubeVirt CR and every VM's MACs.

    `on_progress` runs between the reads; the validate activity heartbeats there.
    """
    vm = kube.get_vm(vm_namespace, vm_name)
    on_progress()
    vmi = kube.get_vmi(vm_namespace, vm_name) if vm else None
    nads = {f"{nad['metadata']['namespace']}/{nad['metadata']['name']}": nad for nad in kube.list_nads()}
    on_progress()

    macs_in_use: dict[str, dict[str, str]] = {}
    for other in kube.list_vms():
        collect_vm_macs(other, nads, macs_in_use)
    on_progress()

    return rules.ClusterView(
        vm=vm,
        vmi=vmi,
        nodes=kube.list_nodes(),
        migrations=kube.list_migrations(vm_namespace, vm_name) if vm else [],
        kubevirt=kube.get_kubevirt(),
        nad=nads.get(rules.qualify_network(network, vm_namespace)) if network else None,
        nads=nads,
        macs_in_use=macs_in_use,
        reserved_macs=reserved_macs or {},
        vm_ref=f"{vm_namespace}/{vm_name}",
        hotplugged_since_start=hotplugged_since_start,
    )
