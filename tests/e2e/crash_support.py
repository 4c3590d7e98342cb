"""Helpers for crash tests: worker and Temporal dev server processes that a test can SIGKILL.

Every process here is started by the test itself, on loopback, and stopped by its own pid.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psycopg
from temporalio.api.enums.v1 import PendingActivityState
from temporalio.api.workflowservice.v1 import GetSystemInfoRequest
from temporalio.client import Client, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter
from temporalio.service import RPCError

from kubevirt_sim import Simulator
from nicflow.ledger import upgrade
from nicflow.settings import ENVIRONMENT, Settings
from tests.conftest import ADMIN_URL, PROJECT_ROOT

logger = logging.getLogger(__name__)

# Alembic's command API keeps its context in module globals, so two upgrades in one process at
# the same time collide.
_UPGRADE_LOCK = threading.Lock()

# Real seconds a stopped process gets to exit after SIGTERM before it is killed.
STOP_GRACE_SECONDS = 10.0


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _end_process(process: subprocess.Popen, signum: int) -> None:
    """Send `signum` to one process we started, wait for it, and SIGKILL it if it lingers."""
    if process.poll() is not None:
        return
    os.kill(process.pid, signum)
    try:
        process.wait(STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()


class WorkerProcess:
    """`python worker.py` run from the project root as its own process, configured by NICFLOW_* variables."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        environment = dict(os.environ)
        for field, variable in ENVIRONMENT.items():
            value = getattr(self.settings, field)
            if value:
                environment[variable] = str(value)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "worker.py"], cwd=PROJECT_ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT
            )
        logger.info("worker pid %d started on task queue %s", self.process.pid, self.settings.task_queue)

    def kill(self) -> None:
        """SIGKILL the worker, as a crash or an OOM kill would end it, and reap it."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()
        logger.info("worker pid %d killed", self.process.pid)

    def stop(self) -> None:
        """Stop the worker with SIGTERM, its normal shutdown, if it still runs."""
        if self.process is not None:
            _end_process(self.process, signal.SIGTERM)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class DevServer:
    """`temporal server start-dev` on 127.0.0.1, optionally persisted to a SQLite file so it survives a restart."""

    def __init__(self, binary: Path, log_path: Path, *, db_file: Path | None = None, namespaces: tuple[str, ...] = ()) -> None:
        self.binary = binary
        self.log_path = log_path
        self.db_file = db_file
        self.namespaces = namespaces
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the server on the same port and file as any earlier start, without waiting until it serves."""
        command = [str(self.binary), "server", "start-dev", "--headless", "--ip", "127.0.0.1", "--port", str(self.port),
                   "--log-level", "error"]
        if self.db_file is not None:
            command += ["--db-filename", str(self.db_file)]
        for namespace in self.namespaces:
            command += ["--namespace", namespace]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        logger.info("Temporal dev server pid %d starting on %s", self.process.pid, self.address)

    def kill(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()
        logger.info("Temporal dev server pid %d killed", self.process.pid)

    def stop(self) -> None:
        if self.process is not None:
            _end_process(self.process, signal.SIGTERM)

    async def connect(self, namespace: str = "default", timeout: float = 60.0) -> Client:
        """Connect once the frontend accepts calls in `namespace`, or raise TimeoutError after `timeout` s."""
        async def attempt() -> Client:
            while True:
                if self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(f"Temporal dev server exited with code {self.process.returncode}, see {self.log_path}")
                try:
                    client = await Client.connect(self.address, namespace=namespace, data_converter=pydantic_data_converter)
                    await client.workflow_service.get_system_info(GetSystemInfoRequest())
                    return client
                except (RuntimeError, RPCError) as error:
                    logger.debug("Temporal dev server on %s not ready: %s", self.address, error)
                await asyncio.sleep(0.2)

        return await asyncio.wait_for(attempt(), timeout)


async def wait_until(condition: Callable[[], Awaitable[bool]], timeout: float, description: str) -> None:
    """Poll `condition` every 50 ms, and raise TimeoutError naming `description` when it stays False for `timeout` s."""
    async def poll() -> None:
        while not await condition():
            await asyncio.sleep(0.05)

    try:
        await asyncio.wait_for(poll(), timeout)
    except TimeoutError:
        raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {description}") from None


async def activity_started(handle: WorkflowHandle, activity_type: str, min_attempt: int = 1) -> bool:
    """Tell whether a worker has picked up `activity_type` (attempt `min_attempt` or later) and not finished it."""
    description = await handle.describe()
    for pending in description.raw_description.pending_activities:
        if (pending.activity_type.name == activity_type
                and pending.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
                and pending.attempt >= min_attempt):
            return True
    return False


async def heartbeat_details(handle: WorkflowHandle, activity_type: str) -> list[Any]:
    """Return the decoded details of the last heartbeat the server holds for a running `activity_type`.

    The Python SDK sends the first heartbeat at once and later ones at most every 80% of the heartbeat
    timeout, so the server's copy can lag the activity by that much. Empty when none arrived.
    """
    description = await handle.describe()
    for pending in description.raw_description.pending_activities:
        if pending.activity_type.name == activity_type and pending.heartbeat_details.payloads:
            return DataConverter.default.payload_converter.from_payloads(list(pending.heartbeat_details.payloads))
    return []


async def final_attempts(handle: WorkflowHandle, activity_type: str) -> list[int]:
    """Return the attempt number that ended each run of `activity_type`, read from the workflow history.

    Temporal (server 1.32 here) writes only the last attempt of an activity into the history, so
    a value of 2 or more shows that an attempt was lost (for example with its worker) and retried.
    """
    scheduled: set[int] = set()
    attempts: list[int] = []
    async for event in handle.fetch_history_events():
        if event.HasField("activity_task_scheduled_event_attributes"):
            if event.activity_task_scheduled_event_attributes.activity_type.name == activity_type:
                scheduled.add(event.event_id)
        elif event.HasField("activity_task_started_event_attributes"):
            started = event.activity_task_started_event_attributes
            if started.scheduled_event_id in scheduled:
                attempts.append(started.attempt)
    return attempts


def http_fault_fired(sim: Simulator, fault_id: str) -> bool:
    """Tell whether an HTTP fault has hit a request, which for a timeout fault means a request is being held."""
    return any(rule["id"] == fault_id and rule["fired"] > 0 for rule in sim.http_faults.list())


def spec_writes(sim: Simulator, namespace: str, name: str) -> list[int]:
    """Return the resourceVersions of the writes that API clients (nicflow, not a controller) made to a VM's spec.

    The simulator records one entry per changed field, so a write that changes several fields
    counts once here.
    """
    changes = sim.recorder.query(plural="virtualmachines", namespace=namespace, name=name, field_prefix="spec", actor="client")
    return sorted({change.resource_version for change in changes})


def disable_workload_updates(sim: Simulator) -> None:
    """Turn off KubeVirt's automatic LiveMigrate workload updates in the simulated cluster.

    Then every migration of a VM is one that nicflow created, so a duplicate after a crash shows
    as a second VMIM labelled with the operation id instead of being hidden by an adoption.
    """
    sim.store.patch(
        "kubevirts", "harvester-system", "kubevirt", "merge",
        {"spec": {"workloadUpdateStrategy": {"workloadUpdateMethods": []}}}, actor="test",
    )


def create_database() -> str:
    """Create an empty PostgreSQL database and return its SQLAlchemy URL. drop_database() removes it."""
    name = f"nicflow_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def upgrade_database(url: str) -> None:
    """Create the ledger schema, one upgrade at a time, so that several threads may call it at once."""
    with _UPGRADE_LOCK:
        upgrade(url)


def drop_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
