"""The `nicflow` command. Exit codes: 0 done, 1 rejected or failed, 2 bad usage."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from pydantic import ValidationError

from nicflow.models import HotplugRequest, NicRequest, OperationResult, UnplugRequest
from nicflow.settings import Settings, state_dir

logger = logging.getLogger("nicflow.cli")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad input: printed as it is, exit code 2."""


def _add_connection_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection (default: NICFLOW_* variables, then a running `nicflow dev`)")
    group.add_argument("--temporal-address", help="Temporal frontend HOST:PORT (NICFLOW_TEMPORAL_ADDRESS)")
    group.add_argument("--temporal-namespace", help="Temporal namespace (NICFLOW_TEMPORAL_NAMESPACE)")
    group.add_argument("--task-queue", help="Temporal task queue of the workers (NICFLOW_TASK_QUEUE)")
    group.add_argument("--database-url", help="ledger SQLAlchemy URL (NICFLOW_DATABASE_URL)")
    group.add_argument("--kubeconfig", help="kubeconfig file (NICFLOW_KUBECONFIG)")
    group.add_argument("--context", dest="kube_context", help="kubeconfig context (NICFLOW_KUBE_CONTEXT)")


def _settings(args: argparse.Namespace) -> Settings:
    names = ("temporal_address", "temporal_namespace", "task_queue", "database_url", "kubeconfig", "kube_context")
    return Settings.load(**{name: getattr(args, name, None) for name in names})


def _add_request_flags(parser: argparse.ArgumentParser, reason_required: bool = True) -> None:
    parser.add_argument("--vm", required=True, help="VM as NAMESPACE/NAME")
    parser.add_argument("--interface", required=True, help="interface name in the VM spec, e.g. nic-2")
    parser.add_argument("--reason", required=reason_required, default="plan",
                        help="why the change is made, or a ticket id (kept in the ledger)")
    parser.add_argument("--actor", default=None, help="who asks for the change (default: the login name)")
    parser.add_argument("--request-id", help="idempotency key: a repeated request id returns the first result")
    parser.add_argument("--allow-restart", action="store_true", help="allow a VM restart to write missing MACs into its spec")
    parser.add_argument("--no-wait", action="store_true", help="print the operation id and return at once")
    parser.add_argument("--queue", action="store_true",
                        help="when the VM is busy, queue the request behind the running operation instead of rejecting it")
    parser.add_argument("--verify-timeout", type=float, default=300.0, metavar="SECONDS",
                        help="how long to wait for the interface to show in the guest (default 300)")
    _add_connection_flags(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nicflow", description="Hot-plug and unplug NICs on running KubeVirt VMs.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    hotplug = commands.add_parser("hotplug", help="attach a network to a VM as a new interface")
    hotplug.add_argument("--network", required=True, help="NetworkAttachmentDefinition as NAMESPACE/NAME")
    hotplug.add_argument("--mac", help="MAC address for the interface (default: a free one is allocated)")
    _add_request_flags(hotplug)

    unplug = commands.add_parser("unplug", help="detach an interface from a VM")
    _add_request_flags(unplug)

    plan = commands.add_parser("plan", help="show what a hot-plug or unplug would do, changing nothing")
    plan_commands = plan.add_subparsers(dest="plan_kind", required=True, metavar="KIND")
    plan_hotplug = plan_commands.add_parser("hotplug", help="plan a hot-plug")
    plan_hotplug.add_argument("--network", required=True, help="NetworkAttachmentDefinition as NAMESPACE/NAME")
    plan_hotplug.add_argument("--mac", help="MAC address for the interface (default: allocated at run time)")
    plan_unplug = plan_commands.add_parser("unplug", help="plan an unplug")
    for planned in (plan_hotplug, plan_unplug):
        _add_request_flags(planned, reason_required=False)
        planned.add_argument("-o", "--output", choices=("text", "json"), default="text", help="output format (default text)")

    cancel = commands.add_parser("cancel", help="cancel a running operation; its change is undone")
    cancel.add_argument("operation_id")
    cancel.add_argument("--no-wait", action="store_true", help="return once the cancellation is requested")
    _add_connection_flags(cancel)

    status = commands.add_parser("status", help="show an operation and its steps")
    status.add_argument("operation_id")
    _add_connection_flags(status)

    ledger = commands.add_parser("ledger", help="read the ledger")
    ledger_commands = ledger.add_subparsers(dest="ledger_command", required=True, metavar="LEDGER_COMMAND")
    listing = ledger_commands.add_parser("list", help="list operations, newest first")
    listing.add_argument("--vm", help="only operations on this VM (NAMESPACE/NAME)")
    listing.add_argument("--limit", type=int, default=50, help="number of operations (default 50)")
    listing.add_argument("--events", action="store_true", help="show each operation's events too")
    _add_connection_flags(listing)
    verify = ledger_commands.add_parser("verify", help="check the hash chain of the events")
    _add_connection_flags(verify)

    database = commands.add_parser("db", help="manage the ledger database")
    database_commands = database.add_subparsers(dest="db_command", required=True, metavar="DB_COMMAND")
    upgrade = database_commands.add_parser("upgrade", help="create or upgrade the ledger schema (Alembic)")
    _add_connection_flags(upgrade)

    dev = commands.add_parser("dev", help="run the embedded stack in the foreground until interrupted")
    dev.add_argument("--manifests", action="append", type=Path, help="YAML file or folder to load (default: the bundled Harvester cluster)")
    dev.add_argument("--no-worker", action="store_true", help="leave the worker out; run `nicflow worker` separately")
    dev.add_argument("--migration-seconds", type=float, default=20.0, help="how long a simulated migration takes (default 20)")
    dev.add_argument("--temporal-port", type=int, default=7233, help="Temporal dev server port (default 7233)")
    dev.add_argument("--simulator-port", type=int, default=6443, help="simulated API server port (default 6443)")

    commands.add_parser("worker", help="run one worker (the same as `python worker.py`)")

    demo = commands.add_parser("demo", help="hot-plug and unplug a NIC on the embedded stack, then stop")
    demo.add_argument("--migration-seconds", type=float, default=6.0, help="how long a simulated migration takes (default 6)")
    return parser


def _request(args: argparse.Namespace, kind: str) -> NicRequest:
    fields = {
        "vm": args.vm,
        "interface": args.interface,
        "reason": args.reason,
        "actor": args.actor or getpass.getuser(),
        "allow_restart": args.allow_restart,
        "verify_timeout_seconds": args.verify_timeout,
    }
    if args.request_id:
        fields["request_id"] = args.request_id
    try:
        if kind == "hotplug":
            return HotplugRequest(network=args.network, mac=args.mac, **fields)
        return UnplugRequest(**fields)
    except ValidationError as error:
        messages = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg'].removeprefix('Value error, ')}" for e in error.errors()]
        raise UsageError("; ".join(messages)) from None


async def _run_operation(settings: Settings, request: NicRequest, wait: bool, queue: bool = False, out=print) -> int:
    import worker as worker_module
    from nicflow import operations

    client = await worker_module.connect(settings)
    if queue:
        queue_handle = await operations.enqueue_operation(client, settings.task_queue, request)
        out(f"operation {request.operation_id} queued (request {request.request_id}, queue {queue_handle.id})")
        if not wait:
            return EXIT_OK
        result = await operations.follow_queued(
            client, queue_handle, request, lambda report: out(operations.format_step(report)), out
        )
        for line in operations.describe_result(result):
            out(line)
        return operations.exit_code(result)

    try:
        handle = await operations.start_operation(client, settings.task_queue, request)
    except operations.VmBusy as busy:
        out(f"rejected: {busy}")
        return EXIT_FAILED
    out(f"operation {request.operation_id} started (request {request.request_id}, workflow {handle.id})")
    if not wait:
        return EXIT_OK
    result = await operations.follow(handle, lambda report: out(operations.format_step(report)))
    for line in operations.describe_result(result):
        out(line)
    return operations.exit_code(result)


def _ledger(settings: Settings):
    from nicflow.ledger import Ledger

    return Ledger(settings.require_database_url())


def _print_operation(row, out=print) -> None:
    network = f" network={row.network}" if row.network else ""
    mac = f" mac={row.mac}" if row.mac else ""
    out(
        f"{row.operation_id}  {row.status:<9} {row.kind:<7} vm={row.vm_namespace}/{row.vm_name} "
        f"interface={row.interface}{network}{mac} actor={row.actor} reason={row.reason!r} "
        f"code={row.reason_code or '-'} created={row.created_at:%Y-%m-%dT%H:%M:%SZ}"
    )


def _print_events(ledger, operation_id: str, out=print) -> None:
    for event in ledger.list_events(operation_id):
        message = event.details.get("message", "")
        if event.step == "request":
            message = f"requested by {event.details.get('actor')}: {event.details.get('reason')} (request {event.details.get('request_id')})"
        out(f"    #{event.seq:<4} {event.step:<9} {event.outcome:<9} {message}")


async def _status(settings: Settings, operation_id: str) -> int:
    ledger = _ledger(settings)
    row = ledger.get_operation(operation_id)
    if row is None:
        print(f"operation {operation_id} not found in the ledger; list them with `nicflow ledger list`")
        return EXIT_FAILED
    _print_operation(row)
    _print_events(ledger, operation_id)
    return EXIT_OK if row.status in ("succeeded", "running") else EXIT_FAILED


async def _cancel(settings: Settings, operation_id: str, wait: bool) -> int:
    import worker as worker_module
    from nicflow import operations

    row = _ledger(settings).get_operation(operation_id)
    if row is None or not row.workflow_id:
        print(f"operation {operation_id} not found in the ledger; list them with `nicflow ledger list`")
        return EXIT_FAILED
    if row.status != "running":
        print(f"operation {operation_id} already ended with status {row.status}; nothing to cancel")
        return EXIT_FAILED

    client = await worker_module.connect(settings)
    handle = client.get_workflow_handle(row.workflow_id, run_id=row.run_id, result_type=OperationResult)
    await handle.cancel()
    print(f"cancellation of operation {operation_id} requested; the change is being undone")
    if not wait:
        return EXIT_OK
    result = await operations.follow(handle, lambda report: print(operations.format_step(report)))
    for line in operations.describe_result(result):
        print(line)
    return EXIT_OK if result.status == "cancelled" else EXIT_FAILED


async def _dev(args: argparse.Namespace) -> int:
    from nicflow.devstack import DevStack

    stack = DevStack(
        state_dir=state_dir(),
        manifests=args.manifests or DevStack.__dataclass_fields__["manifests"].default_factory(),
        migration_seconds=args.migration_seconds,
        temporal_port=args.temporal_port,
        simulator_port=args.simulator_port,
        run_worker=not args.no_worker,
        publish=True,
    )
    async with stack:
        settings = stack.settings
        print("nicflow dev stack is running; press Ctrl-C to stop it.")
        print(f"  Temporal:   {settings.temporal_address} (namespace {settings.temporal_namespace}, task queue {settings.task_queue})")
        print(f"  simulator:  {stack.simulator.url}")
        print(f"  kubeconfig: {settings.kubeconfig} (context {settings.kube_context})")
        print(f"  ledger:     {settings.database_url}")
        print(f"  worker:     {'running' if stack.run_worker else 'not started (run `nicflow worker`)'}")
        print("Other nicflow commands in another terminal reach this stack with no settings.")
        sys.stdout.flush()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        import signal

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        print("stopping the dev stack")
    return EXIT_OK


async def _demo(args: argparse.Namespace) -> int:
    from nicflow.devstack import DevStack

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="nicflow-demo-") as folder:
        stack = DevStack(state_dir=Path(folder), migration_seconds=args.migration_seconds, temporal_port=None, poll_seconds=0.5)
        async with stack:
            settings = stack.settings
            print(f"embedded stack up: Temporal {settings.temporal_address}, simulator {stack.simulator.url}")
            operations_run: list[OperationResult] = []
            code = EXIT_OK
            for request in (
                HotplugRequest(vm="default/web-01", network="default/vlan200", interface="nic-2", actor="demo",
                               reason="demo: attach VLAN 200"),
                UnplugRequest(vm="default/web-01", interface="nic-2", actor="demo", reason="demo: detach VLAN 200"),
            ):
                print(f"\n== {type(request).__name__.removesuffix('Request').lower()} {request.interface} on {request.vm}")
                result = await _follow_request(settings, request)
                operations_run.append(result)
                if result.status != "succeeded":
                    code = EXIT_FAILED
                    break

            print("\n== ledger")
            ledger = _ledger(settings)
            for result in operations_run:
                row = ledger.get_operation(result.operation_id)
                _print_operation(row)
                _print_events(ledger, result.operation_id)
            report = ledger.verify_chain()
            print(f"hash chain: {'valid' if report.ok else 'BROKEN'} over {report.events} events")
    print(f"\ndemo finished in {time.monotonic() - started:.1f} s")
    return code


async def _follow_request(settings: Settings, request: NicRequest) -> OperationResult:
    import worker as worker_module
    from nicflow import operations

    client = await worker_module.connect(settings)
    handle = await operations.start_operation(client, settings.task_queue, request)
    result = await operations.follow(handle, lambda report: print(operations.format_step(report)))
    for line in operations.describe_result(result):
        print(line)
    return result


def _plan(args: argparse.Namespace) -> int:
    from nicflow.kube import KubeVirtClient
    from nicflow.planning import plan_operation

    request = _request(args, args.plan_kind)
    settings = _settings(args)
    kube = KubeVirtClient(settings.kubeconfig, settings.kube_context)
    try:
        plan = plan_operation(
            kube,
            request_kind(request),
            request.vm,
            request.interface,
            network=getattr(request, "network", None),
            mac=getattr(request, "mac", None),
            allow_restart=request.allow_restart,
        )
    finally:
        kube.close()

    if args.output == "json":
        print(plan.model_dump_json(indent=2))
        return EXIT_OK if plan.allowed else EXIT_FAILED

    print(f"plan: {plan.kind} interface {plan.interface} on VM {plan.vm}" + (f" (network {plan.network})" if plan.network else ""))
    for verdict in plan.verdicts:
        mark = "pass" if verdict.passed else "FAIL"
        code = f" [{verdict.reason}]" if verdict.reason else ""
        print(f"  {mark}  {verdict.rule:<24}{code} {verdict.message}")
    if not plan.allowed:
        print(f"rejected [{plan.reason_code}]: {plan.message}")
        return EXIT_FAILED
    for step in plan.steps:
        print(f"  - {step}")
    if plan.backfill_patch:
        print("backfill patch (JSON patch):")
        print(json.dumps(plan.backfill_patch, indent=2))
    print("spec patch (JSON patch):")
    print(json.dumps(plan.patch, indent=2))
    return EXIT_OK


def request_kind(request: NicRequest):
    from nicflow.models import OperationKind

    return OperationKind.HOTPLUG if isinstance(request, HotplugRequest) else OperationKind.UNPLUG


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "plan":
        return _plan(args)
    if args.command in ("hotplug", "unplug"):
        request = _request(args, args.command)
        return asyncio.run(_run_operation(_settings(args), request, wait=not args.no_wait, queue=args.queue))
    if args.command == "status":
        return asyncio.run(_status(_settings(args), args.operation_id))
    if args.command == "cancel":
        return asyncio.run(_cancel(_settings(args), args.operation_id, wait=not args.no_wait))
    if args.command == "ledger":
        ledger = _ledger(_settings(args))
        if args.ledger_command == "verify":
            report = ledger.verify_chain()
            print(json.dumps(report.model_dump(mode="json") if hasattr(report, "model_dump") else report.__dict__, default=str))
            return EXIT_OK if report.ok else EXIT_FAILED
        rows = ledger.list_operations(limit=args.limit, vm=args.vm)
        for row in rows:
            _print_operation(row)
            if args.events:
                _print_events(ledger, row.operation_id)
        if not rows:
            print("the ledger has no operations yet")
        return EXIT_OK
    if args.command == "db":
        from nicflow.ledger import upgrade

        url = _settings(args).require_database_url()
        upgrade(url)
        print("ledger schema is up to date")
        return EXIT_OK
    if args.command == "dev":
        return asyncio.run(_dev(args))
    if args.command == "worker":
        import worker as worker_module

        worker_module.main()
        return EXIT_OK
    if args.command == "demo":
        return asyncio.run(_demo(args))
    raise UsageError(f"unknown command {args.command!r}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return _dispatch(args)
    except UsageError as error:
        print(f"nicflow: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError as error:
        print(f"nicflow: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_FAILED


def run() -> None:
    """Console entry point: run main() and exit without interpreter finalization.

    The Temporal client's native runtime keeps threads that can abort the interpreter during
    finalization ("PyGILState_Release: thread state ... must be current"), which would turn a
    finished command into exit code -6. Its work is done by then, so flush and leave at once.
    """
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
