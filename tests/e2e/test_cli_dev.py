"""`nicflow dev` in one process and the other commands in another, with no settings, as a user runs them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nicflow.devstack import free_port

pytestmark = pytest.mark.e2e

NICFLOW = [sys.executable, "-m", "nicflow.cli"]


@pytest.fixture(scope="module")
def dev_stack(tmp_path_factory) -> Iterator[dict[str, str]]:
    state = tmp_path_factory.mktemp("nicflow-state")
    environment = {key: value for key, value in os.environ.items() if not key.startswith("NICFLOW_")}
    environment["NICFLOW_STATE_DIR"] = str(state)
    log = (state / "dev.log").open("w")
    process = subprocess.Popen(
        [*NICFLOW, "dev", "--temporal-port", str(free_port()), "--simulator-port", str(free_port()),
         "--migration-seconds", "2"],
        env=environment, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while not (state / "dev-stack.json").exists():
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"nicflow dev did not start: {(state / 'dev.log').read_text()}")
            time.sleep(0.2)
        yield environment
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def nicflow(environment: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*NICFLOW, *args], env=environment, capture_output=True, text=True, timeout=180)


def test_dev_stack_hotplug_and_unplug(dev_stack):
    plugged = nicflow(dev_stack, "hotplug", "--vm", "default/web-01", "--network", "default/vlan200",
                      "--interface", "nic-2", "--reason", "CHG-1")
    assert plugged.returncode == 0, plugged.stdout + plugged.stderr
    assert "hotplug succeeded" in plugged.stdout
    assert "guest interface: enp" in plugged.stdout
    for step in ("validate", "backfill", "patch", "migrate", "verify"):
        assert f"  {step}" in plugged.stdout

    unplugged = nicflow(dev_stack, "unplug", "--vm", "default/web-01", "--interface", "nic-2", "--reason", "CHG-2")
    assert unplugged.returncode == 0, unplugged.stdout + unplugged.stderr
    assert "unplug succeeded" in unplugged.stdout

    listing = nicflow(dev_stack, "ledger", "list")
    assert listing.returncode == 0
    assert listing.stdout.count("succeeded") == 2


def test_dev_stack_rejects_guest_cluster_node(dev_stack):
    rejected = nicflow(dev_stack, "hotplug", "--vm", "default/rke2-pool1-abcde", "--network", "default/vlan200",
                       "--interface", "nic-2", "--reason", "CHG-3")
    assert rejected.returncode == 1
    assert "GUEST_CLUSTER_NODE" in rejected.stdout
    assert "guest cluster node" in rejected.stdout


def test_dev_stack_status_of_operation(dev_stack):
    started = nicflow(dev_stack, "hotplug", "--vm", "default/web-01", "--network", "default/untagged-data",
                      "--interface", "nic-3", "--reason", "CHG-4", "--no-wait")
    assert started.returncode == 0, started.stderr
    operation_id = started.stdout.split()[1]
    assert operation_id.startswith("op-")

    status = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = nicflow(dev_stack, "status", operation_id)
        if "succeeded" in status.stdout.splitlines()[0]:
            break
        time.sleep(1)
    assert status is not None
    assert status.returncode == 0, status.stdout + status.stderr
    assert "verify" in status.stdout


def test_bad_usage_exits_2(dev_stack):
    bad = nicflow(dev_stack, "hotplug", "--vm", "web-01", "--network", "default/vlan200", "--interface", "nic-2",
                  "--reason", "x")
    assert bad.returncode == 2
    assert "web-01" in bad.stderr
    assert "NAMESPACE/NAME" in bad.stderr


def simulator_fault(environment: dict[str, str], method: str, body: dict | None = None) -> None:
    """Set or clear a fault through the simulator's control endpoint, as an operator's test rig would."""
    import json
    import urllib.request

    stack = json.loads((Path(environment["NICFLOW_STATE_DIR"]) / "dev-stack.json").read_text())
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{stack['simulator_url']}/sim/faults", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 200


def test_dev_stack_cancel_undoes(dev_stack):
    simulator_fault(dev_stack, "POST", {"kind": "stall_migration", "args": {"phase": "Running"}})
    try:
        started = nicflow(dev_stack, "hotplug", "--vm", "default/web-01", "--network", "default/vlan100",
                          "--interface", "nic-9", "--reason", "CHG-5", "--no-wait")
        assert started.returncode == 0, started.stderr
        operation_id = started.stdout.split()[1]
        deadline = time.monotonic() + 60
        while "patch" not in nicflow(dev_stack, "status", operation_id).stdout:
            assert time.monotonic() < deadline, "the operation never reached the patch step"
            time.sleep(0.5)

        cancelled = nicflow(dev_stack, "cancel", operation_id)
    finally:
        simulator_fault(dev_stack, "DELETE")

    assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr
    assert "cancelled" in cancelled.stdout
    status = nicflow(dev_stack, "status", operation_id)
    assert "cancelled" in status.stdout.splitlines()[0]
    assert "undo" in status.stdout
    again = nicflow(dev_stack, "cancel", operation_id)
    assert again.returncode == 1
    assert "already ended" in again.stdout
