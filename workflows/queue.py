"""The per-VM queue: requests sent with `--queue` run one after another, each as the VM's workflow.

Deterministic code only. The queue lives in Temporal, so queued requests survive a crash of
the CLI, the worker or the server.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import WorkflowAlreadyStartedError

with workflow.unsafe.imports_passed_through():
    from nicflow.models import OperationResult, QueuedRequest, QueueState, workflow_id_for

# How long an empty queue waits for another request before it completes; a later request
# starts it again through signal-with-start.
IDLE = timedelta(seconds=30)

# How often the queue checks whether an operation started outside the queue has ended.
BUSY_RETRY = timedelta(seconds=2)

# Finished results kept in the queue's state (and history) before it continues as new.
MAX_RESULTS = 100


@workflow.defn(name="NicQueue")
class NicQueue:
    def __init__(self) -> None:
        self._pending: list[QueuedRequest] = []
        self._seen: set[str] = set()
        self._current: str | None = None
        self._current_started = False
        self._results: dict[str, OperationResult] = {}

    @workflow.signal(name="enqueue")
    def enqueue(self, item: QueuedRequest) -> None:
        request = item.request()
        if request.request_id in self._seen:
            return
        self._seen.add(request.request_id)
        self._pending.append(item)
        workflow.logger.info("queued operation %s on VM %s", request.operation_id, request.vm)

    @workflow.query(name="state")
    def state(self) -> QueueState:
        return QueueState(
            pending=[item.request().operation_id for item in self._pending],
            current=self._current,
            current_started=self._current_started,
            results=dict(self._results),
        )

    @workflow.run
    async def run(self, carried: list[QueuedRequest] | None = None) -> QueueState:
        for item in carried or []:
            self.enqueue(item)

        while True:
            try:
                await workflow.wait_condition(lambda: bool(self._pending), timeout=IDLE)
            except TimeoutError:
                return self.state()

            item = self._pending.pop(0)
            request = item.request()
            self._current = request.operation_id
            self._current_started = False
            self._results[request.operation_id] = await self._run_one(item)
            self._current = None

            if len(self._results) >= MAX_RESULTS:
                # Keep the history short on a busy VM: start a fresh run with what is still queued.
                workflow.continue_as_new(args=[self._pending])

    async def _run_one(self, item: QueuedRequest) -> OperationResult:
        """Run one request as the VM's workflow, waiting while another operation runs on the VM."""
        request = item.request()
        while True:
            try:
                handle = await workflow.start_child_workflow(
                    item.workflow_name(),
                    request,
                    id=workflow_id_for(request.vm),
                    result_type=OperationResult,
                    parent_close_policy=workflow.ParentClosePolicy.ABANDON,
                )
                self._current_started = True
                break
            except WorkflowAlreadyStartedError:
                await workflow.sleep(BUSY_RETRY)
        return await handle
