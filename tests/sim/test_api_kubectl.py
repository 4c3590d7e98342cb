"""kubectl against the simulator, with the kubeconfig the Simulator writes."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import yaml


def kubectl(kubeconfig, *args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("kubectl")
    if binary is None:
        pytest.fail("kubectl is not installed: install Debian's kubernetes-client package (apt-get install kubernetes-client)")
    env = dict(os.environ, KUBECONFIG=str(kubeconfig))
    return subprocess.run([binary, *args], env=env, capture_output=True, text=True, timeout=60)


def test_kubectl_get_vm_yaml(kubeconfig):
    result = kubectl(kubeconfig, "get", "vm", "web-01", "-o", "yaml")
    vm = yaml.safe_load(result.stdout)

    assert result.returncode == 0, result.stderr
    assert vm["kind"] == "VirtualMachine"
    assert vm["metadata"]["name"] == "web-01"
    assert vm["spec"]["template"]["spec"]["networks"][1]["multus"]["networkName"] == "default/vlan100"


def test_kubectl_patch_vm_merge(kubeconfig, sim):
    result = kubectl(kubeconfig, "patch", "vm", "web-01", "--type", "merge", "-p", '{"spec":{"runStrategy":"Halted"}}')
    vm = sim.store.get("virtualmachines", "default", "web-01")

    assert result.returncode == 0, result.stderr
    assert "patched" in result.stdout
    assert vm["spec"]["runStrategy"] == "Halted"


def test_kubectl_get_missing_vm_fails(kubeconfig):
    result = kubectl(kubeconfig, "get", "vmi", "nope")

    assert result.returncode != 0
    assert 'virtualmachineinstances.kubevirt.io "nope" not found' in result.stderr
