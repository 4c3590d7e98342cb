"""Cluster faults end to end: API errors, failed migrations, restarts, KubeVirt's own migration, guest timeouts.

Faults come from the simulator: `sim.http_faults` for responses of the Kubernetes API, and
`sim.faults` for its controllers. The simulator here uses random seed 9, whose first draws spread
the hits of a 20% fault over an operation's first few dozen requests (seed 0 hits none of the
first 26).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError

from kubevirt_sim import Simulator
from nicflow.devstack import BUNDLED_MANIFESTS
from nicflow.kube import KubeVirtClient
from nicflow.ledger import Ledger
from nicflow.models import HotplugRequest, OperationStatus, UnplugRequest, workflow_id_for
from nicflow.operations import follow, start_operation
from nicflow.patches import find_interface, find_network, info_sources, status_interface
from tests.e2e.conftest import SPEED, run_operation
from workflows.policies import MAX_MIGRATION_ATTEMPTS

pytestmark = pytest.mark.e2e

CONCURRENT_ANNOTATION = "e2e.nicflow.io/concurrent-change"
SEED = 9


@pytest.fixture
def sim(kubevirt_schema_path: Path) -> Iterator[Simulator]:
    simulator = Simulator([BUNDLED_MANIFESTS], migration_seconds=20.0, speed=SPEED, schema_path=kubevirt_schema_path, seed=SEED)
    simulator.start()
    try:
        yield simulator
    finally:
        simulator.stop()


@pytest_asyncio.fixture(loop_scope="session", autouse=True)
async def no_operation_left(client: Client) -> AsyncIterator[None]:
    """Terminate web-01's operation if a failed test left it running, so that the next test can start one."""
    yield
    handle = client.get_workflow_handle(workflow_id_for("default/web-01"))
    try:
        description = await handle.describe()
    except RPCError:  # no operation was started
        return
    if description.status == WorkflowExecutionStatus.RUNNING:
        await handle.terminate(reason="test ended with the operation still running")


def hotplug_request(**overrides) -> HotplugRequest:
    fields = {"vm": "default/web-01", "network": "default/vlan200", "interface": "nic-2", "actor": "e2e", "reason": "faults"}
    return HotplugRequest(**{**fields, **overrides})


def unplug_request(**overrides) -> UnplugRequest:
    fields = {"vm": "default/web-01", "interface": "nic-vlan100", "actor": "e2e", "reason": "faults"}
    return UnplugRequest(**{**fields, **overrides})


def spec_lists(kube: KubeVirtClient) -> tuple[list[dict], list[dict]]:
    """Return the interfaces and networks of web-01's VM spec."""
    spec = kube.get_vm("default", "web-01")["spec"]["template"]["spec"]
    return spec["domain"]["devices"]["interfaces"], spec["networks"]


def by_name(items: list[dict]) -> list[dict]:
    return sorted(items, key=lambda item: item["name"])


def event_steps(ledger: Ledger, operation_id: str) -> list[tuple[str, str]]:
    return [(event.step, event.outcome) for event in ledger.list_events(operation_id)]


def fired(sim, fault_id: str) -> int:
    return next(rule["fired"] for rule in sim.http_faults.list() if rule["id"] == fault_id)


async def wait_until(check, timeout: float = 60.0, what: str = "condition") -> None:
    """Poll a blocking check every 50 ms until it returns true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(check):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.05)


async def wait_for_migration_followed(client: Client, handle, timeout: float = 60.0) -> str:
    """Wait until the migrate activity reports, by heartbeat, the VMIM it follows; return that VMIM's name.

    From then on the activity polls that VMIM, so a change the test makes reaches it there and
    not at the start of the step.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        description = await handle.describe()
        for pending in description.raw_description.pending_activities:
            if pending.activity_type.name != "migrate" or not pending.heartbeat_details.payloads:
                continue
            details = (await client.data_converter.decode(pending.heartbeat_details.payloads))[0]
            if isinstance(details, dict) and details.get("migration"):
                return details["migration"]
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for the migrate activity to follow a VMIM")


async def finish(handle):
    return await asyncio.wait_for(follow(handle, lambda report: None, poll_seconds=0.1), timeout=120)


# 1. Faults of the Kubernetes API.


async def test_conflict_rereads_and_keeps_change(sim, client, settings, worker, kube: KubeVirtClient, ledger: Ledger, monkeypatch):
    fault_id = sim.http_faults.add(code=409, method="PATCH", plural="virtualmachines", name="web-01", count=1)
    versions: list[str] = []
    pick = sim.http_faults.pick

    def pick_and_change(method, plural, name, subresource):
        rule = pick(method, plural, name, subresource)
        if rule is not None and rule.id == fault_id:
            # Another writer changes the VM between nicflow's read and its patch, so the 409
            # reports a real conflict.
            changed = sim.store.patch(
                "virtualmachines", "default", "web-01", "merge",
                {"spec": {"template": {"metadata": {"annotations": {CONCURRENT_ANNOTATION: "kept"}}}}},
                actor="e2e-operator",
            )
            versions.append(changed["metadata"]["resourceVersion"])
        return rule

    monkeypatch.setattr(sim.http_faults, "pick", pick_and_change)

    result = await run_operation(client, settings, hotplug_request())

    assert result.status == OperationStatus.SUCCEEDED, result.message
    assert fired(sim, fault_id) == 1
    vm = kube.get_vm("default", "web-01")
    assert vm["spec"]["template"]["metadata"]["annotations"][CONCURRENT_ANNOTATION] == "kept"
    assert find_interface(vm, "nic-2")[1]["macAddress"] == result.mac
    assert find_network(vm, "nic-2")[1] == {"name": "nic-2", "multus": {"networkName": "default/vlan200"}}

    # The patch that landed was built on a read taken after the concurrent change.
    patched = [e for e in ledger.list_events(result.operation_id) if e.step == "patch"]
    assert len(patched) == 1
    precondition = patched[0].details["patch"][0]
    assert precondition["path"] == "/metadata/resourceVersion"
    assert int(precondition["value"]) >= int(versions[0])


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param({"code": 429}, id="429"),
        pytest.param({"code": 500}, id="500"),
        pytest.param({"code": 503}, id="503"),
        pytest.param({"timeout": True, "hold_seconds": 0.5}, id="timeout"),
    ],
)
async def test_transient_faults_retried(fault, sim, client, settings, worker, kube: KubeVirtClient, ledger: Ledger):
    fault_id = sim.http_faults.add(share=0.2, **fault)

    result = await run_operation(client, settings, hotplug_request())

    hits = fired(sim, fault_id)
    sim.http_faults.clear()
    assert result.status == OperationStatus.SUCCEEDED, result.message
    assert hits > 0
    vm = kube.get_vm("default", "web-01")
    assert find_interface(vm, "nic-2")[1]["macAddress"] == result.mac
    entry = status_interface(kube.get_vmi("default", "web-01"), "nic-2")
    assert entry["mac"] == result.mac
    assert {"domain", "guest-agent"} <= info_sources(entry)
    assert len(kube.list_migrations("default", "web-01")) == 1
    assert event_steps(ledger, result.operation_id)[-1] == ("result", "succeeded")


@pytest.mark.parametrize(
    "code, reason, method, plural, name, step, reason_code",
    [
        pytest.param(400, "BadRequest", "PATCH", "virtualmachines", "web-01", "patch", "PATCH_FAILED", id="400-patch"),
        pytest.param(404, "NotFound", "PATCH", "virtualmachines", "web-01", "patch", "PATCH_FAILED", id="404-patch"),
        pytest.param(422, "Invalid", "PATCH", "virtualmachines", "web-01", "patch", "PATCH_FAILED", id="422-patch"),
        pytest.param(400, "BadRequest", "GET", "nodes", None, "validate", "VALIDATE_FAILED", id="400-list-nodes"),
    ],
)
async def test_final_errors_end_operation(code, reason, method, plural, name, step, reason_code,
                                          sim, client, settings, worker, kube: KubeVirtClient, ledger: Ledger):
    before = spec_lists(kube)
    fault_id = sim.http_faults.add(code=code, method=method, plural=plural, name=name)

    result = await run_operation(client, settings, hotplug_request())

    hits = fired(sim, fault_id)
    sim.http_faults.clear()
    assert hits == 1
    assert result.status == OperationStatus.FAILED
    assert result.reason_code == reason_code
    assert f"{code} {reason}" in result.message
    assert spec_lists(kube) == before
    events = ledger.list_events(result.operation_id)
    assert [(e.step, e.outcome) for e in events][-2:] == [(step, "failed"), ("result", "failed")]
    assert events[-2].details["http_code"] == code
    assert events[-2].details["http_reason"] == reason
    assert events[-2].details["error_type"] == "ClusterRejected"
    row = ledger.get_operation(result.operation_id)
    assert row.status == "failed"
    assert row.reason_code == reason_code


async def test_final_error_after_patch_undoes(sim, client, settings, worker, kube: KubeVirtClient, ledger: Ledger):
    # With KubeVirt's workload updates off, the only VMIM would be nicflow's, so its create
    # meets the fault.
    sim.store.patch("kubevirts", "harvester-system", "kubevirt", "merge",
                    {"spec": {"workloadUpdateStrategy": {"workloadUpdateMethods": []}}}, actor="e2e-operator")
    before = spec_lists(kube)
    fault_id = sim.http_faults.add(code=422, method="POST", plural="virtualmachineinstancemigrations")

    result = await run_operation(client, settings, hotplug_request())

    hits = fired(sim, fault_id)
    sim.http_faults.clear()
    assert hits == 1
    assert result.status == OperationStatus.UNDONE, result.message
    assert result.reason_code == "MIGRATION_FAILED"
    assert "422 Invalid" in result.message
    interfaces, networks = spec_lists(kube)
    assert by_name(interfaces) == by_name(before[0])
    assert by_name(networks) == by_name(before[1])
    assert kube.list_migrations("default", "web-01") == []
    events = ledger.list_events(result.operation_id)
    assert [(e.step, e.outcome) for e in events][-3:] == [("migrate", "failed"), ("undo", "undone"), ("result", "undone")]
    assert events[-3].details["http_code"] == 422
    assert events[-3].details["error_type"] == "ClusterRejected"


# 2. Failed migrations: bounded retries, then the undo.


@pytest.mark.parametrize(
    "request_",
    [pytest.param(hotplug_request(), id="hotplug"), pytest.param(unplug_request(), id="unplug")],
)
async def test_failed_migration_retried_then_undone(request_, sim, client, settings, worker, kube: KubeVirtClient, ledger: Ledger):
    before = spec_lists(kube)
    sim.faults.fail_migration("Scheduling", vmi="default/web-01")

    result = await run_operation(client, settings, request_)

    sim.faults.clear()
    assert result.status == OperationStatus.UNDONE, result.message
    assert result.reason_code == "MIGRATION_FAILED"
    interfaces, networks = spec_lists(kube)
    assert by_name(interfaces) == by_name(before[0])
    assert by_name(networks) == by_name(before[1])
    migrate = [e for e in ledger.list_events(result.operation_id) if e.step == "migrate"]
    assert [e.outcome for e in migrate] == ["retried"] * (MAX_MIGRATION_ATTEMPTS - 1) + ["failed"]
    assert all(e.details["phase"] == "Failed" for e in migrate)
    assert "not retried: all" in migrate[-1].details["message"]
    assert event_steps(ledger, result.operation_id)[-2:] == [("undo", "undone"), ("result", "undone")]
    assert ledger.get_operation(result.operation_id).status == "undone"


async def test_failed_migration_not_retried_when_pinned(sim, client, settings, worker, kube: KubeVirtClient, ledger: Ledger):
    before = spec_lists(kube)
    sim.faults.stall_migration("Pending", vmi="default/web-01")
    handle = await start_operation(client, settings.task_queue, hotplug_request())
    await wait_for_migration_followed(client, handle)

    # Pinning the VM to its node makes the VMI not live migratable, and the target pod unschedulable.
    node = kube.get_vmi("default", "web-01")["status"]["nodeName"]
    sim.store.patch("virtualmachines", "default", "web-01", "merge",
                    {"spec": {"template": {"spec": {"nodeSelector": {"kubernetes.io/hostname": node}}}}}, actor="e2e-operator")
    await wait_until(lambda: kube.get_vmi("default", "web-01")["spec"].get("nodeSelector", {}).get("kubernetes.io/hostname") == node,
                     what="the node selector in the VMI spec")
    sim.faults.clear()
    result = await finish(handle)

    assert result.status == OperationStatus.UNDONE, result.message
    migrate = [e for e in ledger.list_events(result.operation_id) if e.step == "migrate"]
    assert [e.outcome for e in migrate] == ["failed"]
    assert "not retried: the VMI is no longer live migratable" in migrate[0].details["message"]
    interfaces, networks = spec_lists(kube)
    assert by_name(interfaces) == by_name(before[0])
    assert by_name(networks) == by_name(before[1])
    assert event_steps(ledger, result.operation_id)[-2:] == [("undo", "undone"), ("result", "undone")]


async def test_failed_migration_not_retried_when_stopped(sim, client, settings, worker, kube: KubeVirtClient, ledger: Ledger):
    before = spec_lists(kube)
    sim.faults.stall_migration("Pending", vmi="default/web-01")
    handle = await start_operation(client, settings.task_queue, hotplug_request())
    await wait_for_migration_followed(client, handle)
    node = kube.get_vmi("default", "web-01")["status"]["nodeName"]

    # Stopping the VM deletes the VMI, so the migration fails once the stall is lifted.
    kube.vm_action("default", "web-01", "stop")
    await wait_until(lambda: kube.get_vmi("default", "web-01") is None, what="the VMI to be deleted")
    sim.faults.clear()
    result = await finish(handle)

    assert result.status == OperationStatus.UNDONE, result.message
    migrate = [e for e in ledger.list_events(result.operation_id) if e.step == "migrate"]
    assert [e.outcome for e in migrate] == ["failed"]
    assert f"failed: VMI default/web-01 is not running; not retried: the VMI no longer runs on its source node {node}" in migrate[0].details["message"]
    interfaces, networks = spec_lists(kube)
    assert by_name(interfaces) == by_name(before[0])
    assert by_name(networks) == by_name(before[1])
    assert event_steps(ledger, result.operation_id)[-2:] == [("undo", "undone"), ("result", "undone")]


# 3. A VM restarted during the operation.


async def test_restart_during_migration_verified_directly(sim, client, settings, worker, kube: KubeVirtClient, ledger: Ledger):
    sim.faults.stall_migration("Scheduling", vmi="default/web-01")
    handle = await start_operation(client, settings.task_queue, hotplug_request())
    await wait_for_migration_followed(client, handle)
    old_uid = kube.get_vmi("default", "web-01")["metadata"]["uid"]

    kube.vm_action("default", "web-01", "restart")
    result = await finish(handle)
    migrations = kube.list_migrations("default", "web-01")
    sim.faults.clear()

    assert result.status == OperationStatus.SUCCEEDED, result.message
    vmi = kube.get_vmi("default", "web-01")
    assert vmi["metadata"]["uid"] != old_uid
    entry = status_interface(vmi, "nic-2")
    assert entry["mac"] == result.mac
    assert {"domain", "guest-agent"} <= info_sources(entry)
    assert result.guest_interface_name == entry["interfaceName"]
    # No VMIM was created for the new VMI. At most the old VMI's migration remains, and it did
    # not succeed.
    migrate = [e for e in ledger.list_events(result.operation_id) if e.step == "migrate"]
    assert [(e.outcome, e.details["phase"]) for e in migrate] == [("succeeded", "NotNeeded")]
    assert "restarted" in migrate[0].details["message"]
    assert {m["metadata"]["name"] for m in migrations} <= {migrate[0].details["migration_name"]}
    assert all(m.get("status", {}).get("phase") != "Succeeded" for m in migrations)


# 4. KubeVirt's workload updater migrates first.


async def test_workload_updater_migration_adopted(sim, client, settings, worker, kube: KubeVirtClient, ledger: Ledger):
    # nicflow cannot create a VMIM, so the only one is the workload updater's, held in Running.
    create_fault = sim.http_faults.add(code=503, method="POST", plural="virtualmachineinstancemigrations")
    sim.faults.stall_migration("Running", vmi="default/web-01")
    handle = await start_operation(client, settings.task_queue, hotplug_request())
    await wait_until(lambda: len(kube.list_migrations("default", "web-01")) == 1, what="the workload updater's VMIM")
    updater_name = kube.list_migrations("default", "web-01")[0]["metadata"]["name"]

    # The first read of that VMIM by name is nicflow following it. It gets a 503, which nicflow retries.
    read_fault = sim.http_faults.add(code=503, method="GET", plural="virtualmachineinstancemigrations", name=updater_name, count=1)
    await wait_until(lambda: fired(sim, read_fault) == 1, what="nicflow to read the workload updater's VMIM")
    sim.faults.clear()
    result = await finish(handle)
    sim.http_faults.clear()

    assert updater_name.startswith("kubevirt-workload-update-")
    assert result.status == OperationStatus.SUCCEEDED, result.message
    migrations = kube.list_migrations("default", "web-01")
    assert [m["metadata"]["name"] for m in migrations] == [updater_name]
    assert migrations[0]["status"]["phase"] == "Succeeded"
    migrate = [e for e in ledger.list_events(result.operation_id) if e.step == "migrate"]
    assert len(migrate) == 1
    assert migrate[0].details["migration_name"] == updater_name
    assert migrate[0].details["adopted"] is True
    assert migrate[0].details["created_by"] == "kubevirt-workload-update"


# 5. The guest agent does not report the interface in time.


async def test_verify_timeout_without_agent_warns(sim, client, settings, worker, kube: KubeVirtClient, ledger: Ledger):
    sim.faults.disconnect_agent("default/web-01")
    await wait_until(lambda: not any(c["type"] == "AgentConnected" and c["status"] == "True"
                                     for c in kube.get_vmi("default", "web-01")["status"].get("conditions", [])),
                     what="AgentConnected to turn False")

    result = await run_operation(client, settings, hotplug_request(verify_timeout_seconds=1.0))

    assert result.status == OperationStatus.SUCCEEDED, result.message
    assert len(result.warnings) == 1
    assert "guest agent is not connected" in result.warnings[0]
    assert result.guest_interface_name is None
    entry = status_interface(kube.get_vmi("default", "web-01"), "nic-2")
    assert "domain" in info_sources(entry)
    assert "guest-agent" not in info_sources(entry)
    verify = [e for e in ledger.list_events(result.operation_id) if e.step == "verify"]
    assert [e.outcome for e in verify] == ["succeeded"]
    assert verify[0].details["warning"] == result.warnings[0]


async def test_verify_timeout_with_agent_undoes(sim, client, settings, worker, kube: KubeVirtClient, ledger: Ledger):
    before = spec_lists(kube)
    sim.faults.hide_from_agent("default/web-01", "nic-2")

    result = await run_operation(client, settings, hotplug_request(verify_timeout_seconds=1.0))

    sim.faults.clear()
    assert result.status == OperationStatus.UNDONE, result.message
    assert result.reason_code == "VERIFY_FAILED"
    assert "interface nic-2 not verified in the guest within 1 s" in result.message
    interfaces, networks = spec_lists(kube)
    assert by_name(interfaces) == by_name(before[0])
    assert by_name(networks) == by_name(before[1])
    assert status_interface(kube.get_vmi("default", "web-01"), "nic-2") is None
    events = ledger.list_events(result.operation_id)
    assert [(e.step, e.outcome) for e in events][-3:] == [("verify", "failed"), ("undo", "undone"), ("result", "undone")]
    assert events[-3].details["error_type"] == "VerifyTimeout"
