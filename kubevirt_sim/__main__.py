"""Run the simulator from the command line: `python -m kubevirt_sim --manifests DIR --port 8080`."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from kubevirt_sim.simulator import DEFAULT_SCHEMA_PATH, Simulator

logger = logging.getLogger("kubevirt_sim")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m kubevirt_sim",
        description="Serve a simulated Harvester v1.7 / KubeVirt 1.6 cluster over the Kubernetes API.",
    )
    parser.add_argument("--manifests", type=Path, action="append", default=[],
                        help="YAML file or directory of YAML files to load at start; repeatable")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=0, help="TCP port; 0 picks a free one (default: %(default)s)")
    parser.add_argument("--kubeconfig", type=Path, help="write a kubeconfig for the simulator to this path")
    parser.add_argument("--migration-seconds", type=float, default=20.0,
                        help="simulated duration of a live migration, in seconds (default: %(default)s)")
    parser.add_argument("--speed", type=float, default=1.0,
                        help="simulated seconds per real second (default: %(default)s)")
    parser.add_argument("--schema", type=Path, default=DEFAULT_SCHEMA_PATH,
                        help="KubeVirt Swagger 2.0 file that writes are validated against (default: %(default)s)")
    parser.add_argument("--no-schema", action="store_true", help="turn schema validation off")
    parser.add_argument("--state-file", type=Path,
                        help="JSON file the objects are saved to and, when it exists, loaded from instead of the manifests")
    parser.add_argument("--no-admission", action="store_true", help="run no admission webhooks")
    parser.add_argument("--no-controllers", action="store_true", help="run no controllers")
    parser.add_argument("--allow-strategic-merge", action="store_true",
                        help="accept strategic merge patches of custom resources, which a real apiserver rejects with 415")
    parser.add_argument("--log-level", default="INFO", help="logging level (default: %(default)s)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    sim = Simulator(
        args.manifests,
        migration_seconds=args.migration_seconds,
        speed=args.speed,
        schema_path=None if args.no_schema else args.schema,
        state_file=args.state_file,
        host=args.host,
        port=args.port,
        controllers=not args.no_controllers,
        admission=not args.no_admission,
        strategic_merge_on_custom_resources=args.allow_strategic_merge,
    )
    stopping = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        logger.info("received %s, stopping", signal.Signals(signum).name)
        stopping.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    sim.start()
    try:
        print(f"url: {sim.url}", flush=True)
        if args.kubeconfig:
            print(f"kubeconfig: {sim.write_kubeconfig(args.kubeconfig)}", flush=True)
        while not stopping.wait(1.0):
            pass
    finally:
        sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
