"""virt-controller's VMI controller: scheduling and boot, launcher pods, status interfaces, conditions."""

from __future__ import annotations

import copy
import json
import logging
from typing import TYPE_CHECKING

from kubevirt_sim import naming
from kubevirt_sim.controllers import network, pods, scheduling
from kubevirt_sim.controllers.manager import VMIRuntime, delete_if_present
from kubevirt_sim.controllers.objects import (
    INFO_DOMAIN,
    INFO_GUEST_AGENT,
    INFO_MULTUS,
    dig,
    find_by_name,
    find_status_interface,
    info_sources,
    is_absent,
    is_deleting,
    is_pod_network,
    is_secondary_multus,
    join_info_sources,
    multus_network_name,
    primary_interface_name,
    remove_condition,
    remove_finalizer,
    set_condition,
    spec_interfaces,
    spec_networks,
    split_network_name,
)
from kubevirt_sim.controllers.vm import VMI_CONTROLLER_FINALIZER

if TYPE_CHECKING:
    from kubevirt_sim.controllers.manager import ControllerManager

logger = logging.getLogger(__name__)

ACTOR = "virt-controller"
NODE_NAME_LABEL = "kubevirt.io/nodeName"

# Simulated seconds from VMI creation until its pod is scheduled and the domain runs.
BOOT_SECONDS = 3.0
# How often an unschedulable VMI retries placement (node changes also wake it).
UNSCHEDULABLE_RETRY_SECONDS = 10.0


def _kubevirt_config(store) -> dict:
    kubevirts, _ = store.list("kubevirts")
    return kubevirts[0] if kubevirts else {}


def migratable_bindings(kubevirt: dict) -> set[str]:
    """Return the network binding plugins that the KubeVirt CR declares with migration support."""
    bindings = dig(kubevirt, "spec", "configuration", "network", "binding", default={}) or {}
    return {name for name, plugin in bindings.items() if isinstance(plugin, dict) and plugin.get("migration") is not None}


class VMIController:
    """Reconcile one VMI: boot it, keep its launcher pod and status in line with the spec."""

    def __init__(self, manager: "ControllerManager") -> None:
        self.manager = manager
        self.store = manager.store
        self.clock = manager.clock
        self.faults = manager.faults

    # Runtime state.

    def remember_loaded(self, vmi: dict) -> VMIRuntime:
        """Record a VMI found running (loaded from manifests or state): its current spec counts as the start."""
        uid = vmi["metadata"]["uid"]
        runtime = self.manager.runtime.get(uid)
        if runtime is not None:
            return runtime

        runtime = VMIRuntime(uid=uid)
        namespace, name = vmi["metadata"].get("namespace", ""), vmi["metadata"]["name"]
        vm = self.store.try_get("virtualmachines", namespace, name)
        if vm is not None:
            runtime.start_template = copy.deepcopy(vm.get("spec", {}).get("template", {}).get("spec", {}))
        if vmi.get("status", {}).get("phase") == "Running":
            self._record_domain_start(runtime, vmi)
        self.manager.runtime[uid] = runtime
        return runtime

    @staticmethod
    def _record_domain_start(runtime: VMIRuntime, vmi: dict) -> None:
        spec = vmi.get("spec", {})
        runtime.start_interfaces = sum(1 for i in spec_interfaces(spec) if not is_absent(i))
        runtime.reserved_ports = network.hotplug_root_ports(spec, vmi.get("metadata", {}).get("annotations"))

    def scheduling(self) -> list[tuple[str, str]]:
        """Return the VMIs that wait for a node."""
        vmis, _ = self.store.list("virtualmachineinstances")
        return [
            (v["metadata"]["namespace"], v["metadata"]["name"]) for v in vmis
            if v.get("status", {}).get("phase", "") in ("", "Pending", "Scheduling") and not is_deleting(v)
        ]

    # Reconcile.

    def reconcile(self, namespace: str, name: str) -> None:
        vmi = self.store.try_get("virtualmachineinstances", namespace, name)
        if vmi is None:
            return
        runtime = self.manager.vmi_runtime(vmi)

        if is_deleting(vmi):
            self._finalize(vmi)
            self.manager.harvester.finalize_vmi(namespace, name)
            return
        self.manager.harvester.ensure_finalizer(namespace, name)

        phase = vmi.get("status", {}).get("phase", "")
        if phase in ("", "Pending", "Scheduling"):
            self._schedule(vmi, runtime)
            return
        if phase != "Running":
            return

        pod = self._ensure_pod(vmi)
        self._sync_status(namespace, name, pod)
        if pod is not None:
            self._sync_pod_networks(namespace, name, pod)
        self.manager.handler.reconcile(namespace, name)
        self.manager.harvester.reconcile_vmi(namespace, name)

    # Boot.

    def _schedule(self, vmi: dict, runtime: VMIRuntime) -> None:
        namespace, name = vmi["metadata"]["namespace"], vmi["metadata"]["name"]
        now = self.clock.monotonic()
        if runtime.scheduling_since is None:
            runtime.scheduling_since = now
        if vmi.get("status", {}).get("phase") != "Scheduling":
            self.store.mutate("virtualmachineinstances", namespace, name, _set_phase("Scheduling"), actor=ACTOR)

        waited = now - runtime.scheduling_since
        if waited < BOOT_SECONDS:
            self.manager.enqueue_after(BOOT_SECONDS - waited, ("vmi", namespace, name))
            return

        nodes, _ = self.store.list("nodes")
        overrides = {n["metadata"]["name"]: self.faults.node_ready_override(n["metadata"]["name"]) for n in nodes}
        candidates = scheduling.candidate_nodes(vmi.get("spec", {}), nodes, ready_overrides=overrides)
        if not candidates:
            message = f"0/{len(nodes)} nodes are available: no node matches the VMI's node affinity and selector."

            def unschedulable(current: dict) -> bool:
                return set_condition(current, "PodScheduled", "False", self.clock.timestamp(), "Unschedulable", message)

            self.store.mutate("virtualmachineinstances", namespace, name, unschedulable, actor=ACTOR)
            self.manager.enqueue_after(UNSCHEDULABLE_RETRY_SECONDS, ("vmi", namespace, name))
            return

        node_name = self._least_loaded(candidates)
        self._boot(vmi, runtime, node_name, nodes)

    def _least_loaded(self, candidates: list[str]) -> str:
        vmis, _ = self.store.list("virtualmachineinstances")
        load = {node: 0 for node in candidates}
        for other in vmis:
            node = other.get("status", {}).get("nodeName")
            if node in load:
                load[node] += 1
        return min(candidates, key=lambda node: (load[node], node))

    def _boot(self, vmi: dict, runtime: VMIRuntime, node_name: str, nodes: list[dict]) -> None:
        """Create the launcher pod on `node_name` and report the VMI Running with its interfaces."""
        namespace, name = vmi["metadata"]["namespace"], vmi["metadata"]["name"]
        pod_ip = naming.random_ip(scheduling.node_subnet(node_name, nodes))
        entries = self._boot_interfaces(vmi, pod_ip)
        primary = primary_interface_name(vmi.get("spec", {}))
        primary_mac = next((e["mac"] for e in entries if e.get("name") == primary), naming.generate_mac())

        pod = pods.launcher_pod(vmi, network.pod_networks_annotation(vmi), pod_ip, primary_mac, node_name)
        created = self.store.create("pods", namespace, pod, actor=ACTOR, admit=False, keep_status=True)
        self._record_domain_start(runtime, vmi)
        agent = not self.faults.agent_disconnected(namespace, name)
        kubevirt = _kubevirt_config(self.store)

        def running(current: dict) -> bool:
            metadata = current.setdefault("metadata", {})
            metadata.setdefault("labels", {})[NODE_NAME_LABEL] = node_name
            status = current.setdefault("status", {})
            status["phase"] = "Running"
            status["nodeName"] = node_name
            status["activePods"] = {created["metadata"]["uid"]: node_name}
            status["interfaces"] = network.order_status_interfaces(entries, primary)
            timestamp = self.clock.timestamp()
            remove_condition(current, "PodScheduled")
            set_condition(current, "Ready", "True", timestamp)
            live, reason, message = network.live_migratable(current, migratable_bindings(kubevirt))
            set_condition(current, network.LIVE_MIGRATABLE, live, timestamp, reason, message)
            set_condition(current, "AgentConnected", "True" if agent else "False", timestamp)
            return True

        self.store.mutate("virtualmachineinstances", namespace, name, running, actor=ACTOR)
        logger.info("VMI %s/%s running on %s in pod %s", namespace, name, node_name, created["metadata"]["name"])

    def _boot_interfaces(self, vmi: dict, pod_ip: str) -> list[dict]:
        """Return the status entries of a freshly booted domain: every interface attached, in spec order."""
        namespace, name = vmi["metadata"]["namespace"], vmi["metadata"]["name"]
        agent = not self.faults.agent_disconnected(namespace, name)
        spec = vmi.get("spec", {})
        entries = []
        for slot, interface in enumerate((i for i in spec_interfaces(spec) if not is_absent(i)), start=1):
            interface_name = interface.get("name", "")
            network_entry = find_by_name(spec_networks(spec), interface_name)
            mac = naming.normalize_mac(interface["macAddress"]) if interface.get("macAddress") else naming.generate_mac()
            entry: dict = {"name": interface_name, "mac": mac}
            sources = {INFO_DOMAIN}
            if is_pod_network(network_entry):
                entry["ipAddress"] = pod_ip
                entry["ipAddresses"] = [pod_ip]
                entry["podInterfaceName"] = naming.PRIMARY_POD_INTERFACE
            elif is_secondary_multus(network_entry):
                entry["podInterfaceName"] = naming.pod_interface_name(interface_name)
                sources.add(INFO_MULTUS)
            if agent:
                entry["interfaceName"] = naming.guest_interface_name(slot)
                sources.add(INFO_GUEST_AGENT)
            entry["infoSource"] = join_info_sources(sources)
            entry["queueCount"] = 1
            entry["linkState"] = "up"
            entries.append(entry)
        return entries

    # Launcher pod.

    def _ensure_pod(self, vmi: dict) -> dict | None:
        """Return the VMI's current pod, creating one that matches the status for a VMI loaded without one."""
        namespace, name = vmi["metadata"]["namespace"], vmi["metadata"]["name"]
        uid = vmi["metadata"]["uid"]
        existing, _ = self.store.list("pods", namespace, label_selector=f"{pods.CREATED_BY_LABEL}={uid}")
        pod = pods.current_pod(existing, vmi)
        if pod is not None or not vmi.get("status", {}).get("nodeName"):
            return pod
        if any(not is_deleting(p) for p in existing if p.get("spec", {}).get("nodeName") == vmi["status"]["nodeName"]):
            return None

        spec = vmi.get("spec", {})
        primary = primary_interface_name(spec)
        primary_entry = find_status_interface(vmi, primary) if primary else None
        pod_ip = (primary_entry or {}).get("ipAddress") or naming.random_ip("10.52.0")
        primary_mac = (primary_entry or {}).get("mac") or naming.generate_mac()

        secondary_status = []
        for entry in vmi.get("status", {}).get("interfaces") or []:
            network_entry = find_by_name(spec_networks(spec), entry.get("name", ""))
            if INFO_MULTUS not in info_sources(entry) or not is_secondary_multus(network_entry):
                continue
            nad_namespace, nad_name = split_network_name(multus_network_name(network_entry), namespace)
            item = {"namespace": nad_namespace, "name": nad_name, "interface": entry.get("podInterfaceName")
                    or naming.pod_interface_name(entry["name"])}
            if entry.get("mac"):
                item["mac"] = entry["mac"]
            secondary_status.append(item)

        node_name = vmi["status"]["nodeName"]
        pod = pods.launcher_pod(vmi, network.pod_networks_annotation(vmi), pod_ip, primary_mac, node_name,
                                secondary_status=secondary_status)
        created = self.store.create("pods", namespace, pod, actor=ACTOR, admit=False, keep_status=True)

        def activate(current: dict) -> bool:
            current.setdefault("status", {})["activePods"] = {created["metadata"]["uid"]: node_name}
            return True

        self.store.mutate("virtualmachineinstances", namespace, name, activate, actor=ACTOR)
        logger.info("created launcher pod %s for running VMI %s/%s on %s", created["metadata"]["name"], namespace, name, node_name)
        return created

    def _sync_pod_networks(self, namespace: str, name: str, pod: dict) -> None:
        vmi = self.store.try_get("virtualmachineinstances", namespace, name)
        if vmi is None:
            return
        expected = json.dumps(network.pod_networks_annotation(vmi), separators=(",", ":"))

        def edit(current: dict) -> bool:
            annotations = current.setdefault("metadata", {}).setdefault("annotations", {})
            if annotations.get(network.NETWORKS_ANNOTATION) == expected:
                return False
            annotations[network.NETWORKS_ANNOTATION] = expected
            return True

        self.store.mutate("pods", namespace, pod["metadata"]["name"], edit, actor=ACTOR, admit=False)

    # Status.

    def _sync_status(self, namespace: str, name: str, pod: dict | None) -> None:
        """Merge the pod's Multus status into status.interfaces and recompute the VMI conditions."""
        pod_interfaces = network.pod_secondary_interfaces(pod)
        pod_address = pods.pod_ip(pod)
        agent_connected = not self.faults.agent_disconnected(namespace, name)
        bindings = migratable_bindings(_kubevirt_config(self.store))
        recheck: list[float] = []

        def edit(current: dict) -> bool:
            changed = False
            if pod is not None:
                changed |= network.sync_multus_status(current, pod_interfaces)
                changed |= _sync_primary_address(current, pod_address)

            migration_changed, wake = network.sync_migration_required(current, self.clock.now())
            changed |= migration_changed
            if wake is not None:
                recheck.append(wake)

            timestamp = self.clock.timestamp()
            live, reason, message = network.live_migratable(current, bindings)
            changed |= set_condition(current, network.LIVE_MIGRATABLE, live, timestamp, reason, message)
            changed |= set_condition(current, "AgentConnected", "True" if agent_connected else "False", timestamp)
            return changed

        self.store.mutate("virtualmachineinstances", namespace, name, edit, actor=ACTOR)
        if recheck:
            self.manager.enqueue_after(min(recheck) + 0.01, ("vmi", namespace, name))

    # Deletion.

    def _finalize(self, vmi: dict) -> None:
        """Shut a deleted VMI down: delete its pods, mark it Succeeded and release virt-controller's finalizer."""
        namespace, name = vmi["metadata"]["namespace"], vmi["metadata"]["name"]
        existing, _ = self.store.list("pods", namespace, label_selector=f"{pods.CREATED_BY_LABEL}={vmi['metadata']['uid']}")
        for pod in existing:
            if not is_deleting(pod):
                delete_if_present(self.store, "pods", namespace, pod["metadata"]["name"], ACTOR)

        def shut_down(current: dict) -> bool:
            changed = False
            status = current.setdefault("status", {})
            if status.get("phase") not in ("Succeeded", "Failed"):
                status["phase"] = "Succeeded"
                set_condition(current, "Ready", "False", self.clock.timestamp(), "PodTerminating")
                changed = True
            changed |= remove_finalizer(current, VMI_CONTROLLER_FINALIZER)
            changed |= remove_finalizer(current, "foregroundDeleteVirtualMachine")
            return changed

        self.store.mutate("virtualmachineinstances", namespace, name, shut_down, actor=ACTOR)


def _set_phase(phase: str):
    def edit(current: dict) -> bool:
        status = current.setdefault("status", {})
        if status.get("phase") == phase:
            return False
        status["phase"] = phase
        return True
    return edit


def _sync_primary_address(vmi: dict, pod_address: str | None) -> bool:
    """Report the pod IP on a masquerade primary interface, as KubeVirt does after the pod changes."""
    spec = vmi.get("spec", {})
    primary = primary_interface_name(spec)
    interface = find_by_name(spec_interfaces(spec), primary) if primary else None
    if not pod_address or interface is None or interface.get("masquerade") is None:
        return False
    entry = find_status_interface(vmi, primary)
    if entry is None or entry.get("ipAddress") == pod_address:
        return False
    entry["ipAddress"] = pod_address
    entry["ipAddresses"] = [pod_address] + [ip for ip in entry.get("ipAddresses") or [] if ":" in ip]
    return True

