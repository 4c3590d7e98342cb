"""A PostgreSQL outage in the middle of a hot-plug: ledger writes retry and nothing is lost.

The ledger runs on a private cluster (tests/pgcluster.py) because the tests stop the server,
which they may not do to the machine's shared one. The migration is held in phase Running while
the server goes down. The hold is released during the outage, because the migrate activity does
not touch the ledger: only then does a ledger write (the migrate step's event) meet the outage.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from temporalio.api.enums.v1 import EventType
from temporalio.api.workflow.v1 import PendingActivityInfo
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle

from nicflow.contracts import RecordStepInput
from nicflow.kube import KubeVirtClient
from nicflow.ledger import Ledger, upgrade
from nicflow.models import HotplugRequest, OperationStatus, Step
from nicflow.operations import follow, query_progress, start_operation
from nicflow.patches import find_interface, status_interface
from tests.pgcluster import PgCluster

pytestmark = pytest.mark.e2e

logger = logging.getLogger(__name__)

# Real seconds the database stays down. LEDGER_RETRY backs off to one attempt every 15 s, so
# an outage of 30 s spans several attempts.
OUTAGE_SECONDS = 30.0

EXPECTED_EVENTS = [
    ("request", "started"),
    ("validate", "succeeded"),
    ("backfill", "skipped"),
    ("patch", "succeeded"),
    ("migrate", "succeeded"),
    ("verify", "succeeded"),
    ("result", "succeeded"),
]


def hotplug_request() -> HotplugRequest:
    return HotplugRequest(vm="default/web-01", network="default/vlan200", interface="nic-2", actor="e2e", reason="db outage")


@pytest.fixture
def pg_cluster() -> Iterator[PgCluster]:
    with PgCluster() as cluster:
        yield cluster


@pytest.fixture
def ledger_url(pg_cluster: PgCluster) -> str:
    """Create the ledger database on the private cluster, in place of the e2e one on the shared server."""
    url = pg_cluster.create_database("nicflow")
    upgrade(url)
    return url


@pytest_asyncio.fixture(loop_scope="session")
async def started(client: Client, settings) -> AsyncIterator[list[WorkflowHandle]]:
    """Collect the handles a test starts and terminate any still running at teardown.

    The workflow id is per VM and the Temporal server lives for the whole session, so a
    workflow left running by a failed test would make later tests on web-01 fail as busy.
    """
    handles: list[WorkflowHandle] = []
    yield handles
    for handle in handles:
        description = await handle.describe()
        if description.status == WorkflowExecutionStatus.RUNNING:
            logger.warning("terminating workflow %s left running by a failed test", handle.id)
            await handle.terminate(reason="test teardown")


async def wait_for_migration_phase(kube: KubeVirtClient, phase: str, timeout: float = 60.0) -> str:
    """Wait until a VMIM of default/web-01 is in `phase` and return its name."""

    async def reached() -> str:
        while True:
            migrations = await asyncio.to_thread(kube.list_migrations, "default", "web-01")
            for migration in migrations:
                if migration.get("status", {}).get("phase") == phase:
                    return migration["metadata"]["name"]
            await asyncio.sleep(0.1)

    return await asyncio.wait_for(reached(), timeout)


async def wait_for_ledger_retry(handle: WorkflowHandle, activity_type: str, timeout: float) -> PendingActivityInfo:
    """Wait until a pending activity of `activity_type` is on its second attempt or later, and return it."""

    async def retried() -> PendingActivityInfo:
        while True:
            description = await handle.describe()
            for pending in description.raw_description.pending_activities:
                if pending.activity_type.name == activity_type and pending.attempt > 1:
                    return pending
            await asyncio.sleep(0.2)

    return await asyncio.wait_for(retried(), timeout)


async def record_step_attempts(client: Client, handle: WorkflowHandle) -> dict[tuple[str, str], int]:
    """Map each (step, outcome) written by record_step to the attempt that completed it, from the history."""
    inputs: dict[int, RecordStepInput] = {}
    attempts: dict[tuple[str, str], int] = {}
    history = await handle.fetch_history()
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            attributes = event.activity_task_scheduled_event_attributes
            if attributes.activity_type.name == "record_step":
                [decoded] = await client.data_converter.decode(list(attributes.input.payloads), [RecordStepInput])
                inputs[event.event_id] = decoded
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            attributes = event.activity_task_started_event_attributes
            recorded = inputs.get(attributes.scheduled_event_id)
            if recorded is not None:
                attempts[(str(recorded.step), str(recorded.outcome))] = attributes.attempt
    return attempts


def ledger_retry_logs(records: list[logging.LogRecord]) -> list[logging.LogRecord]:
    """Return the worker's log records of failed record_step attempts."""
    return [
        record
        for record in records
        if record.name == "temporalio.activity"
        and record.getMessage().startswith("Completing activity as failed")
        and getattr(record, "temporal_activity", {}).get("activity_type") == "record_step"
    ]


async def test_ledger_outage_during_migration(
    sim, pg_cluster: PgCluster, client, settings, worker, started, kube: KubeVirtClient, ledger: Ledger, caplog
):
    caplog.set_level(logging.WARNING, logger="temporalio.activity")
    request = hotplug_request()

    # Hold the operation in the migrate step.
    sim.faults.stall_migration("Running")
    handle = await start_operation(client, settings.task_queue, request)
    started.append(handle)
    migration = await wait_for_migration_phase(kube, "Running")
    progress = await query_progress(handle)
    assert progress is not None
    assert progress.current_step == Step.MIGRATE

    # Take the database down, then let the migration finish, so that the ledger write of the
    # migrate step runs into the outage.
    pg_cluster.stop()
    outage_started = time.monotonic()
    sim.faults.clear()
    pending = await wait_for_ledger_retry(handle, "record_step", timeout=OUTAGE_SECONDS)
    assert pending.attempt > 1

    # The operation waits for the ledger: still running, no result yet.
    progress = await query_progress(handle)
    assert progress.status == OperationStatus.RUNNING
    assert progress.result is None

    # The rest of the outage, in real seconds, then the database comes back.
    await asyncio.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - outage_started)))
    pg_cluster.start()
    result = await asyncio.wait_for(follow(handle, lambda report: None, poll_seconds=0.1), timeout=120)

    # The operation completed and the change landed in the cluster.
    assert result.status == OperationStatus.SUCCEEDED, result.message
    vm = kube.get_vm("default", "web-01")
    _, interface = find_interface(vm, "nic-2")
    assert interface["macAddress"] == result.mac
    vmi = kube.get_vmi("default", "web-01")
    assert status_interface(vmi, "nic-2")["mac"] == result.mac

    # Ledger writes were retried: the history shows the attempt that finally wrote the migrate
    # event, and the worker logged the attempts that failed.
    attempts = await record_step_attempts(client, handle)
    assert attempts[("migrate", "succeeded")] > 1
    assert attempts[("validate", "succeeded")] == 1
    assert len(ledger_retry_logs(caplog.records)) >= attempts[("migrate", "succeeded")] - 1

    # Nothing is lost and nothing is doubled: every step event once, in order.
    events = ledger.list_events()
    assert [(event.step, event.outcome) for event in events] == EXPECTED_EVENTS
    assert {event.operation_id for event in events} == {result.operation_id}
    assert [event.seq for event in events] == list(range(1, len(EXPECTED_EVENTS) + 1))
    assert len({event.idempotency_key for event in events}) == len(events)
    migrate_event = next(event for event in events if event.step == "migrate")
    assert migrate_event.details["migration_name"] == migration

    # The chain is intact and the operations table equals its projection from the events.
    report = ledger.verify_chain()
    assert report.ok, report.problem
    assert report.events == len(EXPECTED_EVENTS)
    rebuilt = ledger.rebuild_projection()
    assert rebuilt == ledger.list_operations()
    row = ledger.get_operation(result.operation_id)
    assert row.status == "succeeded"
    assert row.mac == result.mac
    assert row.finished_at is not None
    assert ledger.active_reservations() == []


async def test_ledger_outage_reason_visible(pg_cluster: PgCluster, client, settings, worker, started):
    # The database is down before the operation starts, so its first ledger write fails.
    pg_cluster.stop()
    handle = await start_operation(client, settings.task_queue, hotplug_request())
    started.append(handle)
    pending = await wait_for_ledger_retry(handle, "open_operation", timeout=OUTAGE_SECONDS)
    pg_cluster.start()
    result = await asyncio.wait_for(follow(handle, lambda report: None, poll_seconds=0.1), timeout=120)

    assert result.status == OperationStatus.SUCCEEDED, result.message

    # The top-level message of the last failure is what `temporal workflow describe` and the
    # Temporal UI show an operator while the operation waits for the database.
    assert pending.last_failure.message != "Failure exceeds size limit."
    assert "connection" in pending.last_failure.message.lower(), pending.last_failure.message
