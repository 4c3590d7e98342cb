"""One operation per VM: a second request is rejected with the running operation's id, or queued."""

from __future__ import annotations

import asyncio

import pytest

from nicflow.kube import KubeVirtClient
from nicflow.ledger import Ledger
from nicflow.models import HotplugRequest, OperationStatus, Step, UnplugRequest
from nicflow.operations import VmBusy, enqueue_operation, follow, follow_queued, start_operation
from tests.e2e.test_cancel_e2e import wait_for_step

pytestmark = pytest.mark.e2e


def first_request() -> HotplugRequest:
    return HotplugRequest(vm="default/web-01", network="default/vlan200", interface="nic-2", actor="e2e", reason="first")


def second_request() -> UnplugRequest:
    return UnplugRequest(vm="default/web-01", interface="nic-vlan100", actor="e2e", reason="second")


async def test_busy_vm_rejects_with_running_id(sim, client, settings, worker, kube: KubeVirtClient):
    sim.faults.stall_migration("Running")
    running = await start_operation(client, settings.task_queue, first_request())
    await wait_for_step(running, Step.MIGRATE)

    with pytest.raises(VmBusy) as busy:
        await start_operation(client, settings.task_queue, second_request())

    assert busy.value.operation_id is not None
    assert busy.value.operation_id.startswith("op-")
    assert busy.value.operation_id in str(busy.value)
    sim.faults.clear()
    result = await asyncio.wait_for(follow(running, lambda report: None, poll_seconds=0.1), timeout=120)
    assert result.operation_id == busy.value.operation_id
    assert result.status == OperationStatus.SUCCEEDED


async def test_same_request_joins_running_operation(sim, client, settings, worker):
    sim.faults.stall_migration("Running")
    request = first_request()
    running = await start_operation(client, settings.task_queue, request)
    await wait_for_step(running, Step.MIGRATE)

    joined = await start_operation(client, settings.task_queue, request)
    sim.faults.clear()

    assert joined.id == running.id
    result = await asyncio.wait_for(follow(joined, lambda report: None, poll_seconds=0.1), timeout=120)
    assert result.operation_id == request.operation_id


async def test_queued_request_runs_after_running_one(sim, client, settings, worker, kube: KubeVirtClient, ledger: Ledger):
    sim.faults.stall_migration("Running")
    first = first_request()
    running = await start_operation(client, settings.task_queue, first)
    await wait_for_step(running, Step.MIGRATE)

    second = second_request()
    queue = await enqueue_operation(client, settings.task_queue, second)
    waits: list[str] = []
    queued = asyncio.ensure_future(follow_queued(client, queue, second, lambda report: None, waits.append, poll_seconds=0.1))
    await asyncio.sleep(0.5)
    sim.faults.clear()

    first_result = await asyncio.wait_for(follow(running, lambda report: None, poll_seconds=0.1), timeout=120)
    second_result = await asyncio.wait_for(queued, timeout=120)

    assert first_result.status == OperationStatus.SUCCEEDED
    assert second_result.status == OperationStatus.SUCCEEDED, second_result.message
    assert waits and "queued behind" in waits[0]
    first_end = ledger.get_operation(first.operation_id).last_seq
    second_events = ledger.list_events(second.operation_id)
    assert second_events[0].seq > first_end
    interfaces = [i["name"] for i in kube.get_vm("default", "web-01")["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"]]
    assert interfaces == ["default", "nic-2"]
