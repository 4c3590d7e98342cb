"""A simulated Harvester v1.7 / KubeVirt 1.6 cluster that speaks the Kubernetes API over HTTP."""

from kubevirt_sim.simulator import Simulator

__all__ = ["Simulator"]
