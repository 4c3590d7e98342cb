"""Replay committed workflow histories, so that a workflow change which breaks determinism fails CI.

The histories come from real runs on the embedded stack (`python -m tests.record_histories`).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from workflows.nic import HotplugNic, UnplugNic

HISTORIES = Path(__file__).resolve().parent / "histories"
EXPECTED = ["hotplug", "unplug", "rejection", "undo"]


@pytest.mark.parametrize("name", EXPECTED)
async def test_history_replays(name):
    path = HISTORIES / f"{name}.json"
    assert path.exists(), f"{path} is missing; record it with: python -m tests.record_histories"
    history = WorkflowHistory.from_json(f"replay-{name}", path.read_text())
    replayer = Replayer(workflows=[HotplugNic, UnplugNic], data_converter=pydantic_data_converter)

    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)

    assert result.replay_failure is None
