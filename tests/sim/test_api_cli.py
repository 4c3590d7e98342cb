"""`python -m kubevirt_sim` as a process: start, serve, stop on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import urllib.request

from tests.conftest import HARVESTER_FIXTURES, PROJECT_ROOT


def test_cli_serves_until_sigterm(tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    process = subprocess.Popen(
        [sys.executable, "-m", "kubevirt_sim", "--manifests", str(HARVESTER_FIXTURES), "--port", "0",
         "--kubeconfig", str(kubeconfig), "--no-controllers", "--no-admission"],
        cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        url_line = process.stdout.readline().strip()
        kubeconfig_line = process.stdout.readline().strip()
        url = url_line.removeprefix("url: ")
        with urllib.request.urlopen(url + "/sim/healthz", timeout=10) as response:
            health = response.read()
        with urllib.request.urlopen(url + "/api/v1/nodes/node-1", timeout=10) as response:
            node_status = response.status
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
        stderr = process.stderr.read()

    assert url_line.startswith("url: http://127.0.0.1:")
    assert kubeconfig_line == f"kubeconfig: {kubeconfig}"
    assert kubeconfig.exists()
    assert health == b"ok"
    assert node_status == 200
    assert code == 0, stderr
    assert "stopped" in stderr
