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


def web_02_manifest(sim) -> str:
    vm = sim.store.get("virtualmachines", "default", "web-01")
    vm["metadata"] = {"name": "web-02", "namespace": "default", "labels": {"app": "web"}}
    vm.pop("status")
    return yaml.safe_dump(vm)


def test_kubectl_apply_creates_then_configures(kubeconfig, sim):
    manifest = web_02_manifest(sim)
    created = kubectl_input(kubeconfig, manifest, "apply", "-f", "-")
    changed = kubectl_input(kubeconfig, manifest.replace("runStrategy: RerunOnFailure", "runStrategy: Always"), "apply", "-f", "-")
    vm = sim.store.get("virtualmachines", "default", "web-02")

    assert created.returncode == 0, created.stderr
    assert "created" in created.stdout
    assert changed.returncode == 0, changed.stderr
    assert "configured" in changed.stdout
    assert vm["spec"]["runStrategy"] == "Always"
    assert "kubectl.kubernetes.io/last-applied-configuration" in vm["metadata"]["annotations"]


def test_kubectl_apply_rejects_unknown_field(kubeconfig, sim):
    manifest = web_02_manifest(sim).replace("runStrategy:", "notAField: 1\n  runStrategy:")
    result = kubectl_input(kubeconfig, manifest, "apply", "-f", "-")

    assert result.returncode != 0
    assert 'unknown field "spec.notAField"' in result.stderr
    assert sim.store.try_get("virtualmachines", "default", "web-02") is None


def test_kubectl_explain_vm_field(kubeconfig):
    result = kubectl(kubeconfig, "explain", "vm.spec.runStrategy")

    assert result.returncode == 0, result.stderr
    assert "RerunOnFailure" in result.stdout


def kubectl_input(kubeconfig, stdin: str, *args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("kubectl")
    if binary is None:
        pytest.fail("kubectl is not installed: install Debian's kubernetes-client package (apt-get install kubernetes-client)")
    env = dict(os.environ, KUBECONFIG=str(kubeconfig))
    return subprocess.run([binary, *args], env=env, capture_output=True, text=True, timeout=60, input=stdin)


def test_kubectl_get_vm_prints_columns(kubeconfig):
    result = kubectl(kubeconfig, "get", "vm", "web-01")
    header, row = result.stdout.splitlines()

    assert result.returncode == 0, result.stderr
    assert header.split() == ["NAME", "AGE", "STATUS", "READY"]
    assert row.split()[0] == "web-01"
    assert row.split()[2:] == ["Running", "True"]


def test_kubectl_get_vmi_wide_prints_node(kubeconfig):
    result = kubectl(kubeconfig, "get", "vmi", "web-01", "-o", "wide")
    header, row = result.stdout.splitlines()

    assert result.returncode == 0, result.stderr
    assert header.split()[:6] == ["NAME", "AGE", "PHASE", "IP", "NODENAME", "READY"]
    assert row.split()[2:5] == ["Running", "10.52.1.41", "node-1"]


def test_kubectl_patch_default_type_rejected_for_vm(kubeconfig):
    # kubectl patch sends a strategic merge patch unless --type says otherwise, which a real apiserver
    # rejects for custom resources.
    result = kubectl(kubeconfig, "patch", "vm", "web-01", "-p", '{"spec":{"runStrategy":"Halted"}}')

    assert result.returncode != 0
    assert "application/strategic-merge-patch+json is not supported" in result.stderr
