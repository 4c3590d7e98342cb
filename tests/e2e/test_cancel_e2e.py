"""Cancelling a running operation: the change is undone and both land in the ledger."""

from __future__ import annotations

import asyncio

import pytest

from nicflow.kube import KubeVirtClient
from nicflow.ledger import Ledger
from nicflow.models import HotplugRequest, OperationStatus, Step, UnplugRequest
from nicflow.operations import follow, query_progress, start_operation

pytestmark = pytest.mark.e2e


async def wait_for_step(handle, step: Step, timeout: float = 60.0) -> None:
    async def reached() -> None:
        while True:
            progress = await query_progress(handle)
            if progress is not None and progress.current_step == step:
                return
            await asyncio.sleep(0.05)

    await asyncio.wait_for(reached(), timeout)


def interfaces_and_networks(kube: KubeVirtClient) -> tuple[list, list]:
    spec = kube.get_vm("default", "web-01")["spec"]["template"]["spec"]
    return spec["domain"]["devices"]["interfaces"], spec["networks"]


@pytest.mark.parametrize(
    "request_",
    [
        pytest.param(HotplugRequest(vm="default/web-01", network="default/vlan200", interface="nic-2", actor="e2e", reason="cancel"), id="hotplug"),
        pytest.param(UnplugRequest(vm="default/web-01", interface="nic-vlan100", actor="e2e", reason="cancel"), id="unplug"),
    ],
)
async def test_cancel_during_migration_undoes(request_, sim, client, settings, worker, kube: KubeVirtClient, ledger: Ledger):
    before = interfaces_and_networks(kube)
    sim.faults.stall_migration("Running")
    handle = await start_operation(client, settings.task_queue, request_)
    await wait_for_step(handle, Step.MIGRATE)

    await handle.cancel()
    result = await asyncio.wait_for(follow(handle, lambda report: None, poll_seconds=0.1), timeout=120)

    assert result.status == OperationStatus.CANCELLED
    assert result.reason_code == "CANCELLED"
    interfaces, networks = interfaces_and_networks(kube)
    assert sorted(interfaces, key=lambda i: i["name"]) == sorted(before[0], key=lambda i: i["name"])
    assert sorted(networks, key=lambda n: n["name"]) == sorted(before[1], key=lambda n: n["name"])
    steps = [(event.step, event.outcome) for event in ledger.list_events(result.operation_id)]
    assert ("undo", "started") in steps
    assert ("undo", "undone") in steps
    assert steps[-1] == ("result", "cancelled")
    assert ledger.get_operation(result.operation_id).status == "cancelled"
