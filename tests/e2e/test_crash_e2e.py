"""Operations survive crashes: a worker SIGKILLed inside each step or the undo, and a Temporal restart.

Every case runs against the real Temporal dev server, `python worker.py` processes, the
simulator over HTTP and PostgreSQL. A simulator fault holds a step open, the worker is killed
while it runs the step's activity, and a new worker takes over. The tests then check that the
operation ends as it would without the crash: one spec write per change, one VMIM of the
operation's own per migration, each ledger event once and a valid chain.

Temporal notices a killed worker only through timeouts. The backfill, migrate and verify
activities send heartbeats (10 s heartbeat timeout), but validate and patch_spec do not, so their
retry waits for the whole start-to-close timeout (2 min and 1 min). The cases therefore run at
the same time in one module fixture, each with its own simulator, ledger database, Temporal
namespace and task queue, and each test checks the outcome of one case.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio
from temporalio.client import Client, WorkflowHandle

from kubevirt_sim import Simulator
from nicflow.devstack import BUNDLED_MANIFESTS, temporal_binary
from nicflow.kube import KubeVirtClient
from nicflow.ledger import Ledger
from nicflow.models import HotplugRequest, NicRequest, OperationResult, OperationStatus, Step, UnplugRequest
from nicflow.operations import start_operation
from nicflow.patches import find_interface, find_network, info_sources, status_interface, vmi_has_interface
from nicflow.settings import Settings
from tests.e2e.conftest import SPEED
from tests.e2e.crash_support import (
    DevServer,
    WorkerProcess,
    activity_started,
    create_database,
    disable_workload_updates,
    drop_database,
    final_attempts,
    heartbeat_details,
    http_fault_fired,
    spec_writes,
    upgrade_database,
    wait_until,
)

# The first test also runs the module fixture, which took 145 to 200 s on a 2-core machine shared
# with other test runs, most of it validate's 2 minute timeout. The limit leaves room for more load.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(480)]

logger = logging.getLogger(__name__)

OPERATION_LABEL = "nicflow.io/operation-id"

# Real seconds to wait for an operation after the crash. The retry of validate alone waits for
# its 2 minute start-to-close timeout, because the activity sends no heartbeats.
RESULT_TIMEOUT = 200.0

# Real seconds to reach the point inside a step where the worker is killed. Starting a dozen
# workers at once on 2 busy cores can take a minute.
HOLD_TIMEOUT = 120.0

# Real seconds a held HTTP request stays open. The test releases it with http_faults.clear()
# long before that.
HOLD_SECONDS = 600.0

# Real seconds the Temporal server stays down: more than migrate's 10 s heartbeat timeout.
OUTAGE_SECONDS = 12.0

ACTIVITIES = {
    Step.VALIDATE: "validate",
    Step.BACKFILL: "backfill",
    Step.PATCH: "patch_spec",
    Step.MIGRATE: "migrate",
    Step.VERIFY: "verify",
    Step.UNDO: "undo",
}

NORMAL_EVENTS = [
    ("request", "started"),
    ("validate", "succeeded"),
    ("backfill", "skipped"),
    ("patch", "succeeded"),
    ("migrate", "succeeded"),
    ("verify", "succeeded"),
    ("result", "succeeded"),
]

# Ledger events of an operation whose 3 migration attempts all fail. The two migrate retries are
# the documented ones (MAX_MIGRATION_ATTEMPTS in workflows/policies.py).
UNDONE_EVENTS = [
    ("request", "started"),
    ("validate", "succeeded"),
    ("backfill", "skipped"),
    ("patch", "succeeded"),
    ("migrate", "retried"),
    ("migrate", "retried"),
    ("migrate", "failed"),
    ("undo", "undone"),
    ("result", "undone"),
]

# Ledger events of an operation that backfills MACs and restarts the VM, when nothing crashes.
BACKFILL_EVENTS = [
    ("request", "started"),
    ("validate", "succeeded"),
    ("backfill", "macs-written"),
    ("backfill", "restart-requested"),
    ("backfill", "running-ready"),
    ("backfill", "succeeded"),
    ("patch", "succeeded"),
    ("migrate", "succeeded"),
    ("verify", "succeeded"),
    ("result", "succeeded"),
]


@dataclass(frozen=True)
class CrashCase:
    """One operation kind, the step inside which the worker dies, and the VM it runs on."""

    kind: str
    step: Step
    vm: str
    # Where in the step the worker dies, when the step has more than one point worth testing.
    point: str = ""

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.step}" + (f"-{self.point}" if self.point else "")

    @property
    def interface(self) -> str:
        return "nic-2" if self.kind == "hotplug" else "nic-vlan100"

    @property
    def backfills(self) -> bool:
        return self.step == Step.BACKFILL

    def request(self) -> NicRequest:
        fields = {
            "vm": f"default/{self.vm}",
            "interface": self.interface,
            "actor": "e2e",
            "reason": f"worker crash in {self.step}",
            "allow_restart": self.backfills,
            "verify_timeout_seconds": 60.0,
        }
        if self.kind == "hotplug":
            return HotplugRequest(network="default/vlan200", **fields)
        return UnplugRequest(**fields)


# A backfill crash point: after the MAC write, before the restart request reaches the cluster.
BEFORE_RESTART = "before-restart"

# A migrate crash point: the VMIM is created but the response to the create never arrives.
CREATE_LOST = "create-lost"

# A migrate crash point in the bundled cluster's own configuration, with KubeVirt's workload
# updates on: nicflow adopts the updater's VMIM, dies while following it, and the VMIM finishes
# before the new worker starts.
WORKLOAD_UPDATES = "workload-updates"
UPDATER_PREFIX = "kubevirt-workload-update-"

ADOPTED_CASE = CrashCase("hotplug", Step.MIGRATE, "web-01", WORKLOAD_UPDATES)

# Only db-legacy lacks MACs in its VM spec, so only there does an operation with allow_restart
# backfill them and restart the VM.
CASES = [
    CrashCase(kind, step, "db-legacy" if step == Step.BACKFILL else "web-01")
    for kind in ("hotplug", "unplug")
    for step in (Step.VALIDATE, Step.BACKFILL, Step.PATCH, Step.MIGRATE, Step.VERIFY)
] + [
    CrashCase("hotplug", Step.BACKFILL, "db-legacy", BEFORE_RESTART),
    CrashCase("hotplug", Step.MIGRATE, "web-01", CREATE_LOST),
    ADOPTED_CASE,
]

# Every migration attempt fails, so the operation runs its undo, and the worker dies inside it.
UNDO_CASES = [CrashCase(kind, Step.UNDO, "web-01") for kind in ("hotplug", "unplug")]

RESTART_CASE = "temporal-restart"


@dataclass
class CaseRun:
    """The live pieces of one case while it runs."""

    case: CrashCase
    sim: Simulator
    kube: KubeVirtClient
    handle: WorkflowHandle | None = None
    fault_id: str | None = None


@dataclass
class Outcome:
    """What a case left behind, read after its operation ended and before its simulator stopped."""

    operation_id: str | None = None
    result: OperationResult | None = None
    error: str | None = None
    events: list[tuple[str, str]] = field(default_factory=list)
    migration_names: list[str] = field(default_factory=list)
    chain_ok: bool = False
    chain_problem: str | None = None
    row_status: str | None = None
    spec_writes: list[int] = field(default_factory=list)
    migrations: list[dict] = field(default_factory=list)
    vm: dict | None = None
    vmi: dict | None = None
    worker_alive: bool = False
    step_attempts: list[int] = field(default_factory=list)
    vmi_uid_before: str | None = None
    interfaces_before: list[dict] = field(default_factory=list)
    networks_before: list[dict] = field(default_factory=list)
    logs: str = ""

    def explain(self) -> str:
        """Return the error and the tail of the process logs, for a failed assert."""
        return f"{self.error}\n--- logs (tail) ---\n{self.logs[-4000:]}"


# Holding each step open.


def arm(run: CaseRun) -> None:
    """Set the fault that holds the case's step open, before the operation starts."""
    sim, case = run.sim, run.case
    if case.step == Step.VALIDATE:
        # validate's first cluster call reads the VM.
        run.fault_id = sim.http_faults.add(timeout=True, method="GET", plural="virtualmachines", name=case.vm,
                                           count=1, hold_seconds=HOLD_SECONDS)
    elif case.step == Step.BACKFILL and case.point == BEFORE_RESTART:
        # The MACs are written but the restart request is held before it reaches the cluster.
        run.fault_id = sim.http_faults.add(timeout=True, method="PUT", plural="virtualmachines", name=case.vm,
                                           subresource="restart", count=1, hold_seconds=HOLD_SECONDS)
    elif case.step == Step.BACKFILL:
        # The restart lands but its response never comes, so the worker dies before recording it.
        run.fault_id = sim.http_faults.add(timeout=True, method="PUT", plural="virtualmachines", name=case.vm,
                                           subresource="restart", count=1, after_commit=True,
                                           hold_seconds=HOLD_SECONDS)
    elif case.step == Step.PATCH:
        # The spec patch lands but its response never comes, so the retry must not patch again.
        run.fault_id = sim.http_faults.add(timeout=True, method="PATCH", plural="virtualmachines", name=case.vm,
                                           count=1, after_commit=True, hold_seconds=HOLD_SECONDS)
    elif case.step == Step.UNDO:
        sim.faults.fail_migration("Running", f"default/{case.vm}")
    elif case.step == Step.MIGRATE and case.point == WORKLOAD_UPDATES:
        # nicflow's own VMIM create fails a few times, so the updater's VMIM is there first.
        sim.faults.stall_migration("Running", f"default/{case.vm}")
        sim.http_faults.add(code=500, method="POST", plural="virtualmachineinstancemigrations", count=3)
    elif case.step == Step.MIGRATE and case.point == CREATE_LOST:
        run.fault_id = sim.http_faults.add(timeout=True, method="POST", plural="virtualmachineinstancemigrations",
                                           count=1, after_commit=True, hold_seconds=HOLD_SECONDS)
    elif case.step == Step.MIGRATE or case.kind == "unplug":
        # The unplug's verify is held by an HTTP fault that hold() adds while this stall keeps
        # the migration running.
        sim.faults.stall_migration("Running", f"default/{case.vm}")
    else:
        # Without a guest agent, the verify of a hot-plug waits for its deadline.
        sim.faults.disconnect_agent(f"default/{case.vm}")


async def hold(run: CaseRun) -> None:
    """Return once the worker runs the case's step and, where a request is held, once it is held."""
    sim, case, handle = run.sim, run.case, run.handle
    assert handle is not None

    if case.step == Step.VERIFY and case.kind == "unplug":
        # Only the verify of an unplug reads the VM after the patch: hold that read once the
        # migration is under way, then let the migration finish.
        await wait_until(lambda: migration_running(run), HOLD_TIMEOUT, f"{case.name}: a VMIM held in phase Running")
        run.fault_id = sim.http_faults.add(timeout=True, method="GET", plural="virtualmachines", name=case.vm,
                                           count=1, hold_seconds=HOLD_SECONDS)
        sim.faults.clear()
    if case.step == Step.MIGRATE and case.point != CREATE_LOST:
        await wait_until(lambda: migration_running(run), HOLD_TIMEOUT, f"{case.name}: a VMIM held in phase Running")
    if case.point == WORKLOAD_UPDATES:
        await wait_until(lambda: follows_updater_migration(handle), HOLD_TIMEOUT,
                         f"{case.name}: migrate following the workload updater's VMIM")
    if case.step == Step.UNDO:
        # A VMIM exists only after the spec patch, so the next patch of the VM is the undo's.
        # It lands, but its response never comes.
        await wait_until(lambda: migration_exists(run), HOLD_TIMEOUT, f"{case.name}: a VMIM of the operation")
        run.fault_id = sim.http_faults.add(timeout=True, method="PATCH", plural="virtualmachines", name=case.vm,
                                           count=1, after_commit=True, hold_seconds=HOLD_SECONDS)

    activity = ACTIVITIES[case.step]
    await wait_until(lambda: activity_started(handle, activity), HOLD_TIMEOUT, f"{case.name}: activity {activity} started")
    if run.fault_id is not None:
        fault_id = run.fault_id
        await wait_until(lambda: fault_fired(sim, fault_id), HOLD_TIMEOUT, f"{case.name}: HTTP fault {fault_id} holding a request")


async def settle(run: CaseRun) -> None:
    """Let the cluster move on while no worker runs, where the case needs that."""
    if run.case.point == WORKLOAD_UPDATES:
        run.sim.faults.clear()
        await wait_until(lambda: migrations_finished(run), HOLD_TIMEOUT, f"{run.case.name}: the adopted VMIM finished")


async def release(run: CaseRun) -> None:
    """Clear the cluster fault once the new worker runs the step again, so that it resumes the held work."""
    case, handle = run.case, run.handle
    assert handle is not None
    activity = ACTIVITIES[case.step]
    if case.step == Step.MIGRATE and not case.point:
        await wait_until(lambda: activity_started(handle, activity, min_attempt=2), RESULT_TIMEOUT,
                         f"{case.name}: {activity} retried on the new worker")
        run.sim.faults.clear()
    elif case.step == Step.VERIFY and case.kind == "hotplug":
        await wait_until(lambda: activity_started(handle, activity, min_attempt=2), RESULT_TIMEOUT,
                         f"{case.name}: {activity} retried on the new worker")
        run.sim.faults.disconnect_agent(f"default/{case.vm}", on=False)
    elif case.step == Step.UNDO:
        # Should the undo need a migration of its own, it must succeed.
        run.sim.faults.clear()


async def fault_fired(sim: Simulator, fault_id: str) -> bool:
    return http_fault_fired(sim, fault_id)


async def follows_updater_migration(handle: WorkflowHandle) -> bool:
    details = await heartbeat_details(handle, "migrate")
    return any(str(detail.get("migration", "")).startswith(UPDATER_PREFIX) for detail in details if isinstance(detail, dict))


async def migrations_finished(run: CaseRun) -> bool:
    migrations = await asyncio.to_thread(run.kube.list_migrations, "default", run.case.vm)
    return bool(migrations) and all(m.get("status", {}).get("phase") in ("Succeeded", "Failed") for m in migrations)


async def migration_exists(run: CaseRun) -> bool:
    migrations = await asyncio.to_thread(run.kube.list_migrations, "default", run.case.vm)
    return bool(migrations)


async def migration_running(run: CaseRun) -> bool:
    migrations = await asyncio.to_thread(run.kube.list_migrations, "default", run.case.vm)
    return any(m.get("status", {}).get("phase") == "Running" for m in migrations)


# Running the cases.


def collect(outcome: Outcome, result: OperationResult, sim: Simulator, kube: KubeVirtClient, ledger_url: str, vm: str) -> None:
    """Read the ledger, the recorder and the cluster after the operation ended."""
    outcome.result = result
    with Ledger(ledger_url) as ledger:
        events = ledger.list_events(result.operation_id)
        chain = ledger.verify_chain()
        row = ledger.get_operation(result.operation_id)
    outcome.events = [(event.step, event.outcome) for event in events]
    outcome.migration_names = [
        event.details.get("migration_name", "") for event in events if event.step == "migrate" and event.outcome == "succeeded"
    ]
    outcome.chain_ok = chain.ok
    outcome.chain_problem = chain.problem
    outcome.row_status = row.status if row else None
    outcome.spec_writes = spec_writes(sim, "default", vm)
    outcome.migrations = kube.list_migrations("default", vm)
    outcome.vm = kube.get_vm("default", vm)
    outcome.vmi = kube.get_vmi("default", vm)


class CaseStack:
    """A simulator, a ledger database and worker processes for one case, stopped in close()."""

    def __init__(self, folder: Path, schema_path: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.sim = Simulator([BUNDLED_MANIFESTS], migration_seconds=20.0, speed=SPEED, schema_path=schema_path)
        self.ledger_url: str | None = None
        self.kube: KubeVirtClient | None = None
        self.workers: list[WorkerProcess] = []

    async def open(self, temporal_address: str, namespace: str, *, workload_updates: bool = False) -> Settings:
        self.ledger_url = await asyncio.to_thread(create_database)
        await asyncio.to_thread(upgrade_database, self.ledger_url)
        await asyncio.to_thread(self.sim.start)
        if not workload_updates:
            disable_workload_updates(self.sim)
        kubeconfig = self.sim.write_kubeconfig(self.folder / "kubeconfig")
        self.kube = KubeVirtClient(str(kubeconfig), "kubevirt-sim")
        return Settings(
            temporal_address=temporal_address,
            temporal_namespace=namespace,
            task_queue=f"nicflow-crash-{uuid.uuid4().hex[:8]}",
            database_url=self.ledger_url,
            kubeconfig=str(kubeconfig),
            kube_context="kubevirt-sim",
        )

    def start_worker(self, settings: Settings) -> WorkerProcess:
        worker = WorkerProcess(settings, self.folder / f"worker-{len(self.workers) + 1}.log")
        worker.start()
        self.workers.append(worker)
        return worker

    def logs(self) -> str:
        return "".join(f"--- {worker.log_path.name}\n{worker.log()}" for worker in self.workers)

    async def close(self) -> None:
        for worker in self.workers:
            await asyncio.to_thread(worker.stop)
        if self.kube is not None:
            self.kube.close()
        await asyncio.to_thread(self.sim.stop)
        if self.ledger_url is not None:
            await asyncio.to_thread(drop_database, self.ledger_url)


async def run_crash_case(case: CrashCase, server: DevServer, folder: Path, schema_path: Path) -> Outcome:
    """Start the case's operation, kill its worker inside the step, start a new one, and collect the outcome."""
    outcome = Outcome()
    stack = CaseStack(folder, schema_path)
    try:
        namespace = f"crash-{case.name}"
        settings = await stack.open(server.address, namespace, workload_updates=case.point == WORKLOAD_UPDATES)
        client = await server.connect(namespace)
        assert stack.kube is not None
        run = CaseRun(case, stack.sim, stack.kube)
        vmi = await asyncio.to_thread(stack.kube.get_vmi, "default", case.vm)
        outcome.vmi_uid_before = vmi["metadata"]["uid"]
        vm = await asyncio.to_thread(stack.kube.get_vm, "default", case.vm)
        outcome.interfaces_before = vm["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"]
        outcome.networks_before = vm["spec"]["template"]["spec"]["networks"]

        first = stack.start_worker(settings)
        arm(run)
        request = case.request()
        outcome.operation_id = request.operation_id
        run.handle = await start_operation(client, settings.task_queue, request)
        await hold(run)

        first.kill()
        stack.sim.http_faults.clear()
        await settle(run)
        stack.start_worker(settings)
        await release(run)

        result = await asyncio.wait_for(run.handle.result(), RESULT_TIMEOUT)
        assert stack.ledger_url is not None
        await asyncio.to_thread(collect, outcome, result, stack.sim, stack.kube, stack.ledger_url, case.vm)
        outcome.step_attempts = await final_attempts(run.handle, ACTIVITIES[case.step])
        outcome.worker_alive = stack.workers[-1].process is not None and stack.workers[-1].process.poll() is None
    except Exception as error:  # noqa: BLE001 - the case's test reports it with the logs
        logger.exception("crash case %s failed", case.name)
        outcome.error = f"{type(error).__name__}: {error}"
    finally:
        outcome.logs = stack.logs()
        await stack.close()
    return outcome


async def run_restart_case(folder: Path, schema_path: Path) -> Outcome:
    """Kill a persisted Temporal dev server during a migration, start it again, and collect the outcome."""
    outcome = Outcome()
    folder.mkdir(parents=True, exist_ok=True)
    server = DevServer(temporal_binary(), folder / "temporal.log", db_file=folder / "temporal.db")
    stack = CaseStack(folder, schema_path)
    try:
        server.start()
        settings = await stack.open(server.address, "default")
        client = await server.connect()
        assert stack.kube is not None
        run = CaseRun(CrashCase("hotplug", Step.MIGRATE, "web-01"), stack.sim, stack.kube)
        worker = stack.start_worker(settings)

        stack.sim.faults.stall_migration("Running", "default/web-01")
        request = run.case.request()
        outcome.operation_id = request.operation_id
        handle = await start_operation(client, settings.task_queue, request)
        await wait_until(lambda: migration_running(run), HOLD_TIMEOUT, "a VMIM held in phase Running")
        await wait_until(lambda: activity_started(handle, "migrate"), HOLD_TIMEOUT, "activity migrate started")

        # The outage outlasts migrate's heartbeat timeout, so the server may also have to retry
        # the activity, and the worker's long polls and heartbeats fail for a while.
        server.kill()
        await asyncio.sleep(OUTAGE_SECONDS)
        server.start()
        client = await server.connect()
        stack.sim.faults.clear()

        handle = client.get_workflow_handle(handle.id, result_type=OperationResult)
        result = await asyncio.wait_for(handle.result(), RESULT_TIMEOUT)
        assert stack.ledger_url is not None
        await asyncio.to_thread(collect, outcome, result, stack.sim, stack.kube, stack.ledger_url, "web-01")
        outcome.worker_alive = worker.process is not None and worker.process.poll() is None
        outcome.step_attempts = await final_attempts(handle, "migrate")
    except Exception as error:  # noqa: BLE001 - the test reports it with the logs
        logger.exception("Temporal restart case failed")
        outcome.error = f"{type(error).__name__}: {error}"
    finally:
        server_log = server.log_path.read_text(errors="replace") if server.log_path.exists() else ""
        outcome.logs = f"{stack.logs()}--- temporal.log\n{server_log}"
        await stack.close()
        await asyncio.to_thread(server.stop)
    return outcome


def selected_cases(items: list[pytest.Item]) -> tuple[list[CrashCase], bool]:
    """Return the crash cases that the selected tests of this module read, and whether one reads the restart."""
    names: set[str] = set()
    restart = False
    for item in items:
        if not isinstance(item, pytest.Function) or item.module is None or item.module.__name__ != __name__:
            continue
        callspec = getattr(item, "callspec", None)
        if callspec is not None and "case" in callspec.params:
            names.add(callspec.params["case"].name)
        elif item.originalname == "test_adopted_migration_named":
            names.add(ADOPTED_CASE.name)
        elif item.originalname == "test_temporal_restart":
            restart = True
    return [case for case in CASES + UNDO_CASES if case.name in names], restart


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def outcomes(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, kubevirt_schema_path: Path
) -> AsyncIterator[dict[str, Outcome]]:
    """Run the selected crash cases and the Temporal restart at the same time, and map case names to outcomes.

    Only the cases that the selected tests read run, so `-k hotplug-patch` runs one case.
    """
    root = tmp_path_factory.mktemp("crash")
    crash_cases, restart = selected_cases(request.session.items)
    server = DevServer(temporal_binary(), root / "temporal.log", namespaces=tuple(f"crash-{case.name}" for case in crash_cases))
    server.start()
    try:
        await server.connect()
        runs = [run_crash_case(case, server, root / case.name, kubevirt_schema_path) for case in crash_cases]
        names = [case.name for case in crash_cases]
        if restart:
            runs.append(run_restart_case(root / RESTART_CASE, kubevirt_schema_path))
            names.append(RESTART_CASE)
        results = await asyncio.gather(*runs)
    finally:
        await asyncio.to_thread(server.stop)
    yield dict(zip(names, results))


# Checks shared by every case.


def own_migrations(outcome: Outcome, operation_id: str) -> list[dict]:
    return [m for m in outcome.migrations if (m["metadata"].get("labels") or {}).get(OPERATION_LABEL) == operation_id]


def duplicate_events(outcome: Outcome) -> list[tuple[str, str]]:
    return [event for event, count in Counter(outcome.events).items() if count > 1]


def condition_status(obj: dict, condition_type: str) -> str | None:
    for condition in obj.get("status", {}).get("conditions") or []:
        if condition.get("type") == condition_type:
            return condition.get("status")
    return None


def check_settled(outcome: Outcome, migration: dict) -> None:
    """Check that the VM and VMI are left as after a normal success: running on the target, nothing pending."""
    assert outcome.vmi["status"]["phase"] == "Running"
    assert condition_status(outcome.vmi, "Ready") == "True"
    assert outcome.vmi["status"]["nodeName"] == migration["status"]["migrationState"]["targetNode"]
    assert outcome.vmi["status"]["migrationState"]["completed"] is True
    assert condition_status(outcome.vmi, "MigrationRequired") != "True"
    assert condition_status(outcome.vm, "RestartRequired") != "True"


def check_hotplugged(outcome: Outcome, interface: str) -> None:
    result = outcome.result
    assert result is not None
    _, spec_interface = find_interface(outcome.vm, interface)
    assert spec_interface == {"name": interface, "model": "virtio", "bridge": {}, "macAddress": result.mac}
    _, network = find_network(outcome.vm, interface)
    assert network == {"name": interface, "multus": {"networkName": "default/vlan200"}}
    assert vmi_has_interface(outcome.vmi, interface) is not None
    entry = status_interface(outcome.vmi, interface)
    assert entry is not None
    assert entry["mac"] == result.mac
    assert {"domain", "guest-agent", "multus-status"} <= info_sources(entry)
    assert result.guest_interface_name == entry["interfaceName"]


def check_unplugged(outcome: Outcome, interface: str) -> None:
    assert find_interface(outcome.vm, interface) is None
    assert find_network(outcome.vm, interface) is None
    assert vmi_has_interface(outcome.vmi, interface) is None
    assert status_interface(outcome.vmi, interface) is None


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_worker_crash(case: CrashCase, outcomes: dict[str, Outcome]):
    outcome = outcomes[case.name]

    assert outcome.error is None, outcome.explain()
    result = outcome.result
    assert result is not None
    assert result.operation_id == outcome.operation_id
    assert result.status == OperationStatus.SUCCEEDED, result.message
    assert outcome.row_status == "succeeded"
    assert outcome.worker_alive

    # The step's activity completed once, on a retry, because its first attempt died with the
    # worker. Attempt 3 shows up too, probably when Temporal hands attempt 2 to a poll that the
    # killed worker left open.
    assert len(outcome.step_attempts) == 1
    assert outcome.step_attempts[0] >= 2

    # One spec write for the change itself, plus one for the MACs when the operation backfills.
    assert len(outcome.spec_writes) == (2 if case.backfills else 1)

    # One VMIM in all. With workload updates off it is the one the operation created. With them
    # on, it is the updater's, which the operation adopted.
    own = own_migrations(outcome, result.operation_id)
    assert len(outcome.migrations) == 1
    migration = outcome.migrations[0]
    if case.point == WORKLOAD_UPDATES:
        assert own == []
        assert migration["metadata"]["name"].startswith(UPDATER_PREFIX)
    else:
        assert len(own) == 1
        # The ledger names the VMIM. test_adopted_migration_named checks that for the adopted one.
        assert outcome.migration_names == [migration["metadata"]["name"]]
    assert migration["status"]["phase"] == "Succeeded"

    assert duplicate_events(outcome) == []
    assert outcome.chain_ok, outcome.chain_problem
    if case.backfills:
        # The backfill events after a crash are checked in test_worker_crash_backfill_restart.
        other_steps = [event for event in outcome.events if event[0] != "backfill"]
        assert other_steps == [event for event in NORMAL_EVENTS if event[0] != "backfill"]
    else:
        assert outcome.events == NORMAL_EVENTS

    check_settled(outcome, migration)
    if case.kind == "hotplug":
        check_hotplugged(outcome, case.interface)
    else:
        check_unplugged(outcome, case.interface)


@pytest.mark.parametrize("case", UNDO_CASES, ids=lambda case: case.name)
def test_worker_crash_in_undo(case: CrashCase, outcomes: dict[str, Outcome]):
    outcome = outcomes[case.name]

    assert outcome.error is None, outcome.explain()
    result = outcome.result
    assert result is not None
    assert result.operation_id == outcome.operation_id
    assert result.status == OperationStatus.UNDONE, result.message
    assert result.reason_code == "MIGRATION_FAILED"
    assert outcome.row_status == "undone"
    assert outcome.worker_alive
    assert len(outcome.step_attempts) == 1
    assert outcome.step_attempts[0] >= 2

    # The change and its undo: two spec writes, and the spec is back as it was.
    assert len(outcome.spec_writes) == 2
    spec = outcome.vm["spec"]["template"]["spec"]
    assert spec["domain"]["devices"]["interfaces"] == outcome.interfaces_before
    assert spec["networks"] == outcome.networks_before

    # One VMIM per migration attempt, all failed; the undo needed none of its own.
    own = own_migrations(outcome, result.operation_id)
    assert sorted(m["metadata"]["name"] for m in own) == [f"nicflow-{result.operation_id}-{n}" for n in (1, 2, 3)]
    assert len(outcome.migrations) == 3
    assert [m["status"]["phase"] for m in own] == ["Failed", "Failed", "Failed"]

    assert outcome.events == UNDONE_EVENTS
    assert outcome.chain_ok, outcome.chain_problem

    assert outcome.vmi["status"]["phase"] == "Running"
    assert condition_status(outcome.vmi, "Ready") == "True"
    if case.kind == "hotplug":
        assert status_interface(outcome.vmi, case.interface) is None
    else:
        assert "domain" in info_sources(status_interface(outcome.vmi, case.interface))


def test_adopted_migration_named(outcomes: dict[str, Outcome]):
    outcome = outcomes[ADOPTED_CASE.name]

    assert outcome.error is None, outcome.explain()
    assert len(outcome.migrations) == 1
    assert outcome.migration_names == [outcome.migrations[0]["metadata"]["name"]]


@pytest.mark.parametrize("case", [case for case in CASES if case.backfills], ids=lambda case: case.name)
def test_worker_crash_backfill_restart(case: CrashCase, outcomes: dict[str, Outcome]):
    outcome = outcomes[case.name]

    assert outcome.error is None, outcome.explain()
    assert outcome.vmi["metadata"]["uid"] != outcome.vmi_uid_before
    assert outcome.events == BACKFILL_EVENTS


def test_temporal_restart(outcomes: dict[str, Outcome]):
    outcome = outcomes[RESTART_CASE]

    assert outcome.error is None, outcome.explain()
    result = outcome.result
    assert result is not None
    assert result.operation_id == outcome.operation_id
    assert result.status == OperationStatus.SUCCEEDED, result.message
    assert outcome.row_status == "succeeded"
    assert outcome.worker_alive
    assert len(outcome.step_attempts) == 1
    assert len(outcome.spec_writes) == 1
    own = own_migrations(outcome, result.operation_id)
    assert len(own) == 1
    assert len(outcome.migrations) == 1
    assert own[0]["status"]["phase"] == "Succeeded"
    assert duplicate_events(outcome) == []
    assert outcome.events == NORMAL_EVENTS
    assert outcome.chain_ok, outcome.chain_problem
    check_settled(outcome, own[0])
    check_hotplugged(outcome, "nic-2")
