"""Start a nicflow worker: it serves the HotplugNic and UnplugNic workflows and their activities.

Run it as `python worker.py` or `nicflow worker`; settings come from `NICFLOW_*` variables or a
running `nicflow dev` stack. Several workers may serve one task queue.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Worker

from activities.cluster import ClusterActivities
from activities.ledger import LedgerActivities
from nicflow.kube import KubeVirtClient
from nicflow.ledger import Ledger
from nicflow.settings import Settings
from workflows.nic import HotplugNic, UnplugNic
from workflows.queue import NicQueue

logger = logging.getLogger("nicflow.worker")

# Activities are synchronous because the kubernetes client and SQLAlchemy block, so each runs in
# a thread. Long polls (migrate, verify) hold a thread each, hence more threads than CPU cores.
ACTIVITY_THREADS = 32


async def connect(settings: Settings) -> Client:
    return await Client.connect(
        settings.temporal_address, namespace=settings.temporal_namespace, data_converter=pydantic_data_converter
    )


def build_worker(client: Client, settings: Settings, *, poll_seconds: float = 1.0) -> Worker:
    """Build a worker bound to the configured cluster, ledger and task queue."""
    ledger = Ledger(settings.require_database_url())
    cluster = ClusterActivities(
        lambda: KubeVirtClient(settings.kubeconfig, settings.kube_context), ledger, poll_seconds=poll_seconds
    )
    ledger_activities = LedgerActivities(ledger)
    return Worker(
        client,
        task_queue=settings.task_queue,
        workflows=[HotplugNic, UnplugNic, NicQueue],
        activities=[
            cluster.validate,
            cluster.backfill,
            cluster.patch_spec,
            cluster.migrate,
            cluster.verify,
            cluster.undo,
            ledger_activities.open_operation,
            ledger_activities.record_step,
            ledger_activities.finish_operation,
        ],
        activity_executor=ThreadPoolExecutor(ACTIVITY_THREADS, thread_name_prefix="nicflow-activity"),
        max_concurrent_activities=ACTIVITY_THREADS,
        # On SIGTERM, running activities get 15 s to finish a ledger write or an API call instead
        # of being interrupted in their threads. An activity still running after that is retried.
        graceful_shutdown_timeout=timedelta(seconds=15),
    )


async def run(settings: Settings) -> None:
    """Run a worker until SIGINT or SIGTERM."""
    client = await connect(settings)
    worker = build_worker(client, settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    logger.info("worker started: temporal=%s namespace=%s task_queue=%s", settings.temporal_address,
                settings.temporal_namespace, settings.task_queue)
    async with worker:
        await stop.wait()
    logger.info("worker stopped")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(run(Settings.load()))


if __name__ == "__main__":
    main()
