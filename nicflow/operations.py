"""Start operations on Temporal and follow them: what `nicflow hotplug`, `unplug`, `status` and the demo share."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

from nicflow.models import (
    HotplugRequest,
    NicRequest,
    OperationResult,
    OperationStatus,
    Progress,
    QueuedRequest,
    QueueState,
    StepReport,
    queue_workflow_id_for,
    workflow_id_for,
)

logger = logging.getLogger(__name__)



class VmBusy(Exception):
    """Another operation runs on the VM."""

    def __init__(self, vm: str, operation_id: str | None) -> None:
        running = f"operation {operation_id}" if operation_id else "another operation"
        super().__init__(
            f"VM {vm} is busy with {running}; wait for it (nicflow status {operation_id or '<id>'}) and try again, "
            "or add --queue to run this request after it"
        )
        self.operation_id = operation_id


def workflow_name(request: NicRequest) -> str:
    return "HotplugNic" if isinstance(request, HotplugRequest) else "UnplugNic"


async def start_operation(client: Client, task_queue: str, request: NicRequest) -> WorkflowHandle:
    """Start the workflow of a request; a running workflow for the same request id is joined instead."""
    workflow_id = workflow_id_for(request.vm)
    try:
        return await client.start_workflow(
            workflow_name(request),
            request,
            id=workflow_id,
            task_queue=task_queue,
            result_type=OperationResult,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
        )
    except WorkflowAlreadyStartedError:
        handle = client.get_workflow_handle(workflow_id, result_type=OperationResult)
        progress = await query_progress(handle)
        if progress is not None and progress.request_id == request.request_id:
            logger.info("request %s is already running as %s; following it", request.request_id, progress.operation_id)
            return handle
        raise VmBusy(request.vm, progress.operation_id if progress else None) from None


async def enqueue_operation(client: Client, task_queue: str, request: NicRequest) -> WorkflowHandle:
    """Put a request in its VM's queue, starting the queue if it is not running (signal-with-start)."""
    return await client.start_workflow(
        "NicQueue",
        id=queue_workflow_id_for(request.vm),
        task_queue=task_queue,
        result_type=QueueState,
        start_signal="enqueue",
        start_signal_args=[QueuedRequest.of(request)],
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )


async def follow_queued(client: Client, queue: WorkflowHandle, request: NicRequest,
                        on_step: Callable[[StepReport], None], on_wait: Callable[[str], None],
                        poll_seconds: float = 0.5) -> OperationResult:
    """Wait until the queue has run the request, reporting the wait and then each step."""
    printed = 0
    announced = False
    while True:
        try:
            state = await queue.query("state", result_type=QueueState)
        except RPCError as error:
            logger.debug("state query of %s failed: %s", queue.id, error)
            state = None
        if state is not None:
            if request.operation_id in state.results:
                result = state.results[request.operation_id]
                for report in result.steps[printed:]:
                    on_step(report)
                return result
            if state.current == request.operation_id and state.current_started:
                progress = await query_progress(client.get_workflow_handle(workflow_id_for(request.vm)))
                if progress is not None and progress.operation_id == request.operation_id:
                    for report in progress.steps[printed:]:
                        on_step(report)
                    printed = max(printed, len(progress.steps))
            elif not announced:
                ahead = state.pending.index(request.operation_id) if request.operation_id in state.pending else 0
                running = 1 if state.current != request.operation_id or not state.current_started else 0
                on_wait(f"queued behind {ahead + running} operation(s) on VM {request.vm}")
                announced = True
        await asyncio.sleep(poll_seconds)


async def query_progress(handle: WorkflowHandle) -> Progress | None:
    try:
        return await handle.query("progress", result_type=Progress)
    except RPCError as error:
        logger.debug("progress query of %s failed: %s", handle.id, error)
        return None


async def follow(handle: WorkflowHandle, on_step: Callable[[StepReport], None], poll_seconds: float = 0.5) -> OperationResult:
    """Wait for the result, calling on_step once for each step as it finishes."""
    printed = 0
    result_task = asyncio.ensure_future(handle.result())
    try:
        while not result_task.done():
            progress = await query_progress(handle)
            if progress is not None:
                for report in progress.steps[printed:]:
                    on_step(report)
                printed = max(printed, len(progress.steps))
            await asyncio.wait({result_task}, timeout=poll_seconds)
        result: OperationResult = result_task.result()
    finally:
        if not result_task.done():
            result_task.cancel()
    for report in result.steps[printed:]:
        on_step(report)
    return result


def format_step(report: StepReport) -> str:
    return f"  {report.step:<9} {report.outcome:<9} {report.duration_seconds:6.1f}s  {report.message}"


def describe_result(result: OperationResult) -> list[str]:
    lines = [f"{result.kind} {result.status}: {result.message}"]
    if result.reason_code:
        lines.append(f"  reason code: {result.reason_code}")
    if result.mac:
        lines.append(f"  MAC: {result.mac}")
    if result.guest_interface_name:
        lines.append(f"  guest interface: {result.guest_interface_name}")
    for warning in result.warnings:
        lines.append(f"  warning: {warning}")
    if result.replayed:
        lines.append(f"  (request {result.request_id} was seen before: this is the result of operation {result.operation_id})")
    return lines


def exit_code(result: OperationResult) -> int:
    return 0 if result.status == OperationStatus.SUCCEEDED else 1


__all__ = [
    "VmBusy",
    "WorkflowFailureError",
    "describe_result",
    "exit_code",
    "follow",
    "format_step",
    "query_progress",
    "start_operation",
    "enqueue_operation",
    "follow_queued",
]
