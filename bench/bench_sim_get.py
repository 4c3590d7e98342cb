"""Time VM GETs through the official kubernetes client against the simulator holding 1,000 VMs.

Run: .venv/bin/python bench/bench_sim_get.py [--vms 1000] [--requests 2000]
Prints the median and 95th percentile latency of one GET in milliseconds. The target is a
median under 5 ms; this script only reports the figure.
"""

from __future__ import annotations

import argparse
import copy
import logging
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import kubernetes
import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# The editable install in .venv registers kubevirt_sim as a namespace package, which hides
# Simulator when the script runs from bench/. Putting the project root first avoids that.
sys.path.insert(0, str(PROJECT_ROOT))

from kubevirt_sim import Simulator  # noqa: E402
WEB_01 = PROJECT_ROOT / "nicflow" / "manifests" / "vm-web-01.yaml"


def generated_vms(count: int) -> list[dict]:
    """VMs shaped like web-01, each with its own name, uid and MACs."""
    template = next(doc for doc in yaml.safe_load_all(WEB_01.read_text()) if doc["kind"] == "VirtualMachine")
    vms = []
    for index in range(count):
        vm = copy.deepcopy(template)
        name = f"bench-{index:04d}"
        vm["metadata"]["name"] = name
        vm["metadata"]["uid"] = f"00000000-0000-4000-8000-{index:012d}"
        vm["spec"]["template"]["metadata"]["labels"]["harvesterhci.io/vmName"] = name
        interfaces = vm["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"]
        for position, interface in enumerate(interfaces):
            interface["macAddress"] = f"02:00:{index >> 8:02x}:{index & 0xff:02x}:00:{position:02x}"
        vms.append(vm)
    return vms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=1000, help="VMs loaded into the simulator (default: %(default)s)")
    parser.add_argument("--requests", type=int, default=2000, help="timed GETs (default: %(default)s)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory() as workdir:
        manifest = Path(workdir) / "vms.yaml"
        manifest.write_text(yaml.safe_dump_all(generated_vms(args.vms)))

        with Simulator([manifest], controllers=False, admission=False) as sim:
            client = kubernetes.config.new_client_from_config(config_file=str(sim.write_kubeconfig(Path(workdir) / "kc")))
            custom = kubernetes.client.CustomObjectsApi(client)

            # Warm up the connection pool and the client's deserialization path.
            for index in range(50):
                custom.get_namespaced_custom_object("kubevirt.io", "v1", "default", "virtualmachines", f"bench-{index:04d}")

            samples = []
            for index in range(args.requests):
                name = f"bench-{index % args.vms:04d}"
                started = time.perf_counter()
                custom.get_namespaced_custom_object("kubevirt.io", "v1", "default", "virtualmachines", name)
                samples.append((time.perf_counter() - started) * 1000)
            client.close()

    samples.sort()
    p95 = samples[int(len(samples) * 0.95) - 1]
    print(f"{args.requests} VM GETs with {args.vms} VMs loaded, {platform.python_implementation()} {platform.python_version()}")
    print(f"median {statistics.median(samples):.2f} ms, p95 {p95:.2f} ms, max {samples[-1]:.2f} ms")


if __name__ == "__main__":
    main()
