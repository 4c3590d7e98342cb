"""Record the workflow histories that tests/test_replay.py replays.

Runs a hot-plug, an unplug, a rejection and an undo on the embedded stack and writes each
history to tests/histories/. Run it after a deliberate workflow change:
    python -m tests.record_histories
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from nicflow.devstack import DevStack
from nicflow.models import HotplugRequest, UnplugRequest
from nicflow.operations import follow, start_operation

HISTORIES = Path(__file__).resolve().parent / "histories"


async def record() -> None:
    with tempfile.TemporaryDirectory() as folder:
        async with DevStack(state_dir=Path(folder), migration_seconds=20, speed=100, temporal_port=None, poll_seconds=0.05) as stack:
            client = stack.environment.client
            cases = {
                "hotplug": HotplugRequest(vm="default/web-01", network="default/vlan200", interface="nic-2", actor="recorder", reason="history"),
                "unplug": UnplugRequest(vm="default/web-01", interface="nic-2", actor="recorder", reason="history"),
                "rejection": HotplugRequest(vm="default/rke2-pool1-abcde", network="default/vlan200", interface="nic-2", actor="recorder", reason="history"),
            }
            for name, request in cases.items():
                await _record_one(client, stack.settings.task_queue, name, request)

            # An undo: the migration fails in every attempt, so the hot-plug is cancelled again.
            stack.simulator.faults.fail_migration("Running")
            undo = HotplugRequest(vm="default/web-01", network="default/vlan100", interface="nic-3", actor="recorder", reason="history")
            await _record_one(client, stack.settings.task_queue, "undo", undo)


async def _record_one(client, task_queue: str, name: str, request) -> None:
    handle = await start_operation(client, task_queue, request)
    result = await follow(handle, lambda report: None, poll_seconds=0.1)
    history = await handle.fetch_history()
    (HISTORIES / f"{name}.json").write_text(history.to_json())
    print(f"{name}: {result.status} ({result.message})")


if __name__ == "__main__":
    asyncio.run(record())
