"""Simulated KubeVirt and Harvester controllers."""
