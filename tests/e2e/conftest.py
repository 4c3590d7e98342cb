"""End-to-end fixtures: the real Temporal dev server, the simulator over HTTP and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import pytest_asyncio
from kubernetes.client.exceptions import ConflictException
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

import worker as worker_module
from kubevirt_sim import Simulator
from nicflow.devstack import BUNDLED_MANIFESTS, temporal_binary
from nicflow.kube import KubeVirtClient
from nicflow.ledger import Ledger, upgrade
from nicflow.models import NicRequest, OperationResult
from nicflow.operations import follow, start_operation
from nicflow.settings import Settings

# Simulated seconds per real second: a 20 s migration takes 0.2 s and KubeVirt's 15 s grace
# before MigrationRequired turns True takes 0.15 s, so the whole suite runs in real time budgets.
SPEED = 100.0


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    environment = await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter,
        ui=False,
        dev_server_existing_path=str(temporal_binary()),
        dev_server_log_level="error",
    )
    try:
        yield environment
    finally:
        await environment.shutdown()


@pytest.fixture
def sim(tmp_path: Path, kubevirt_schema_path: Path) -> Iterator[Simulator]:
    simulator = Simulator([BUNDLED_MANIFESTS], migration_seconds=20.0, speed=SPEED, schema_path=kubevirt_schema_path)
    simulator.start()
    try:
        yield simulator
    finally:
        simulator.stop()


@pytest.fixture
def kube(sim: Simulator, tmp_path: Path) -> Iterator[KubeVirtClient]:
    path = sim.write_kubeconfig(tmp_path / "kubeconfig")
    client = KubeVirtClient(str(path), "kubevirt-sim")
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def ledger_url(pg_url: str) -> str:
    upgrade(pg_url)
    return pg_url


@pytest.fixture
def ledger(ledger_url: str) -> Ledger:
    return Ledger(ledger_url)


@pytest.fixture
def settings(temporal_env: WorkflowEnvironment, sim: Simulator, ledger_url: str, tmp_path: Path) -> Settings:
    kubeconfig = sim.write_kubeconfig(tmp_path / "worker-kubeconfig")
    return Settings(
        temporal_address=temporal_env.client.service_client.config.target_host,
        task_queue=f"nicflow-test-{uuid.uuid4().hex[:8]}",
        database_url=ledger_url,
        kubeconfig=str(kubeconfig),
        kube_context="kubevirt-sim",
    )


@pytest_asyncio.fixture(loop_scope="session")
async def worker(temporal_env: WorkflowEnvironment, settings: Settings) -> AsyncIterator[None]:
    running = worker_module.build_worker(temporal_env.client, settings, poll_seconds=0.05)
    task = asyncio.ensure_future(running.run())
    try:
        yield
    finally:
        await running.shutdown()
        await asyncio.gather(task, return_exceptions=True)


@pytest.fixture
def client(temporal_env: WorkflowEnvironment) -> Client:
    return temporal_env.client


async def run_operation(client: Client, settings: Settings, request: NicRequest) -> OperationResult:
    """Start an operation the way the CLI does and wait for its result."""
    handle = await start_operation(client, settings.task_queue, request)
    return await asyncio.wait_for(follow(handle, lambda report: None, poll_seconds=0.1), timeout=120)


T = TypeVar("T")

# Maximum wait, in seconds, for the simulated controllers to reach a state. A test that hits it fails.
WAIT_SECONDS = 30.0


async def wait_until(condition: Callable[[], T], description: str) -> T:
    """Poll `condition` until it returns a truthy value and return that value.

    Fails the test after WAIT_SECONDS. It sleeps with asyncio, because the in-process worker
    shares the event loop.
    """
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {WAIT_SECONDS} s waiting until {description}")
        await asyncio.sleep(0.05)


async def vm_action(kube: KubeVirtClient, name: str, action: str) -> None:
    """Call the start, stop or restart subresource of a VM in namespace default, retrying on 409 Conflict.

    The simulator's virt-api writes the request conditionally on the VM it read, so a
    concurrent controller write makes it fail with 409.
    """
    for attempt in range(1, 11):
        try:
            kube.vm_action("default", name, action)
            return
        except ConflictException:
            if attempt == 10:
                raise
            await asyncio.sleep(0.1)
