"""CLI input handling and settings precedence, without servers."""

from __future__ import annotations

import json
import os

import pytest

from nicflow.cli import main
from nicflow.settings import Settings


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["--vm", "web-01"], "web-01"),
        (["--vm", "default/Web_01"], "default/Web_01"),
        (["--interface", "nic 2"], "nic 2"),
        (["--network", "vlan200"], "vlan200"),
    ],
)
def test_invalid_hotplug_input_exits_2(arguments, expected, capsys):
    fields = {"--vm": "default/web-01", "--network": "default/vlan200", "--interface": "nic-2", "--reason": "CHG-1"}
    fields.update(dict(zip(arguments[::2], arguments[1::2])))
    argv = ["hotplug"] + [item for pair in fields.items() for item in pair]

    code = main(argv)

    assert code == 2
    error = capsys.readouterr().err
    assert expected in error
    assert "for example" in error


def test_missing_reason_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["unplug", "--vm", "default/web-01", "--interface", "nic-2"])

    assert exit_info.value.code == 2
    assert "--reason" in capsys.readouterr().err


def test_ledger_without_database_exits_2(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("NICFLOW_STATE_DIR", str(tmp_path))
    monkeypatch.delenv("NICFLOW_DATABASE_URL", raising=False)

    code = main(["ledger", "list"])

    assert code == 2
    assert "NICFLOW_DATABASE_URL" in capsys.readouterr().err


def test_settings_flag_beats_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("NICFLOW_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("NICFLOW_TASK_QUEUE", "from-environment")

    assert Settings.load().task_queue == "from-environment"
    assert Settings.load(task_queue="from-flag").task_queue == "from-flag"


def test_settings_read_running_dev_stack(monkeypatch, tmp_path):
    monkeypatch.setenv("NICFLOW_STATE_DIR", str(tmp_path))
    monkeypatch.delenv("NICFLOW_TEMPORAL_ADDRESS", raising=False)
    (tmp_path / "dev-stack.json").write_text(json.dumps({"pid": os.getpid(), "temporal_address": "127.0.0.1:17233"}))

    assert Settings.load().temporal_address == "127.0.0.1:17233"


def test_settings_ignore_stopped_dev_stack(monkeypatch, tmp_path):
    monkeypatch.setenv("NICFLOW_STATE_DIR", str(tmp_path))
    monkeypatch.delenv("NICFLOW_TEMPORAL_ADDRESS", raising=False)
    (tmp_path / "dev-stack.json").write_text(json.dumps({"pid": 2**22 + 12345, "temporal_address": "127.0.0.1:17233"}))

    assert Settings.load().temporal_address == "127.0.0.1:7233"
