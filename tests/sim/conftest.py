"""Fixtures for the simulator tests: a simulator on a free loopback port and clients for it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import kubernetes
import pytest

from kubevirt_sim import Simulator
from tests.conftest import HARVESTER_FIXTURES


@pytest.fixture
def sim() -> Iterator[Simulator]:
    """The Harvester fixtures served without controllers and admission webhooks."""
    simulator = Simulator([HARVESTER_FIXTURES], controllers=False, admission=False)
    simulator.start()
    try:
        yield simulator
    finally:
        simulator.stop()


@pytest.fixture
def kubeconfig(sim: Simulator, tmp_path: Path) -> Path:
    return sim.write_kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture
def kube(kubeconfig: Path) -> Iterator[kubernetes.client.ApiClient]:
    """The official client configured from the simulator's kubeconfig."""
    client = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def custom(kube: kubernetes.client.ApiClient) -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi(kube)


@pytest.fixture
def core(kube: kubernetes.client.ApiClient) -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(kube)
