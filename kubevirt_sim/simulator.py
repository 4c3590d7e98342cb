"""The Simulator: store, API server, admission, controllers and faults wired together."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from kubevirt_sim import errors
from kubevirt_sim.clock import Clock
from kubevirt_sim.httpfaults import HttpFaults
from kubevirt_sim.loader import load_manifests
from kubevirt_sim.recorder import Recorder
from kubevirt_sim.server import ApiServer
from kubevirt_sim.state import StateSaver, load_state
from kubevirt_sim.store import Store

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
_SHARED_SCHEMA = PROJECT_ROOT.parent / "shared" / "kubevirt" / "openapi-v1.6.6.json"
DEFAULT_SCHEMA_PATH: Path | None = _SHARED_SCHEMA if _SHARED_SCHEMA.exists() else None
_DEFAULT = object()


class Simulator:
    """A simulated Harvester v1.7 / KubeVirt 1.6 cluster served over HTTP on loopback.

    `manifests` are files or directories of multi-document YAML loaded at start() unless
    `state_file` exists. `migration_seconds` is the simulated duration of a live migration, read
    by the controllers; `speed` is how many simulated seconds pass per real second.
    `schema_path` None turns schema validation off. `seed` fixes generated names and which
    requests a partial HTTP fault hits. Like a real apiserver, the simulator rejects strategic
    merge patches of custom resources (VM, VMI, VMIM, NAD) with 415 unless
    `strategic_merge_on_custom_resources` is True. Use it as a context manager or call start()
    and stop().
    """

    def __init__(
        self,
        manifests: Sequence[Path] = (),
        *,
        migration_seconds: float = 20.0,
        speed: float = 1.0,
        schema_path: Path | None | Any = _DEFAULT,
        state_file: Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        controllers: bool = True,
        admission: bool = True,
        seed: int = 0,
        strategic_merge_on_custom_resources: bool = False,
    ):
        self.manifests = [Path(path) for path in manifests]
        self.migration_seconds = migration_seconds
        self.state_file = Path(state_file) if state_file else None
        self.host = host
        self.port = port
        self.controllers_enabled = controllers
        self.admission_enabled = admission
        self.strategic_merge_on_custom_resources = strategic_merge_on_custom_resources

        self.clock = Clock(speed)
        self.recorder = Recorder()
        self.store = Store(self.clock, self.recorder, seed=seed)
        self.http_faults = HttpFaults(seed)
        self.faults = _cluster_faults()
        self.schema_path: Path | None = DEFAULT_SCHEMA_PATH if schema_path is _DEFAULT else schema_path
        if self.schema_path is not None:
            from kubevirt_sim.schema import SchemaValidator

            self.store.validator = SchemaValidator(Path(self.schema_path))

        self.controllers: Any = None
        self._server: ApiServer | None = None
        self._thread: threading.Thread | None = None
        self._saver: StateSaver | None = None
        self.url = ""

    def start(self) -> None:
        """Load the state file or the manifests, then start the HTTP server and the controllers."""
        if self.state_file is not None and self.state_file.exists():
            load_state(self.store, self.state_file)
        else:
            count = load_manifests(self.store, self.manifests)
            logger.info("loaded %d objects from %d manifest paths", count, len(self.manifests))

        if self.admission_enabled:
            from kubevirt_sim.admission import admit

            self.store.admission = admit

        self._server = ApiServer((self.host, self.port), self)
        self.url = self._server.url
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="kubevirt-sim-http", daemon=True)
        self._thread.start()

        if self.controllers_enabled:
            from kubevirt_sim.controllers import start_controllers

            self.controllers = start_controllers(self)
        if self.state_file is not None:
            self._saver = StateSaver(self.store, self.state_file)
            self._saver.start()
        logger.info("kubevirt simulator serving at %s", self.url)

    def stop(self) -> None:
        """Stop the controllers and the HTTP server, end open watches and save the state file."""
        if self.controllers is not None:
            self.controllers.stop()
            self.controllers = None
        if self._server is not None:
            self.store.close()
            self.http_faults.clear()
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._saver is not None:
            self._saver.stop()
            self._saver = None
        self.clock.stop()
        logger.info("kubevirt simulator at %s stopped", self.url)

    def write_kubeconfig(self, path: Path) -> Path:
        """Write a kubeconfig with cluster, user and context 'kubevirt-sim' pointing at this server."""
        if not self.url:
            raise RuntimeError("write_kubeconfig needs a started simulator: call start() first")
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kubevirt-sim", "cluster": {"server": self.url}}],
            "users": [{"name": "kubevirt-sim", "user": {"token": "kubevirt-sim"}}],
            "contexts": [
                {"name": "kubevirt-sim", "context": {"cluster": "kubevirt-sim", "user": "kubevirt-sim", "namespace": "default"}}
            ],
            "current-context": "kubevirt-sim",
            "preferences": {},
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def __enter__(self) -> "Simulator":
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()


def _cluster_faults() -> Any:
    """Return the controllers' ClusterFaults, or None while kubevirt_sim.faults does not exist."""
    try:
        from kubevirt_sim.faults import ClusterFaults
    except ModuleNotFoundError:
        logger.warning("kubevirt_sim.faults is missing: cluster faults are unavailable")
        return None
    return ClusterFaults()


# --- KubeVirt VM subresources (virt-api) --------------------------------------------------------

_FINAL_PHASES = ("Succeeded", "Failed")


def _run_strategy(vm: dict) -> str:
    spec = vm.get("spec", {})
    if spec.get("runStrategy"):
        return spec["runStrategy"]
    return "Always" if spec.get("running") else "Halted"


def _vm_conflict(name: str, message: str) -> errors.ApiError:
    # virt-api names the resource in the singular in these errors.
    return errors.ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on virtualmachine.kubevirt.io "{name}": {message}',
        {"name": name, "group": "kubevirt.io", "kind": "virtualmachine"},
    )


def _set_run_strategy(store: Store, namespace: str, name: str, vm: dict, strategy: str) -> None:
    if "runStrategy" in vm.get("spec", {}) or "running" not in vm.get("spec", {}):
        patch = {"spec": {"runStrategy": strategy}}
    else:
        patch = {"spec": {"running": strategy != "Halted"}}
    store.patch("virtualmachines", namespace, name, "merge", patch, actor="virt-api")


def _request_state_change(store: Store, vm: dict, requests: list[dict]) -> None:
    """Queue start/stop requests in the VM status for the VM controller to carry out.

    As virt-api does, a lone Stop replaces pending requests and anything else fails with 500
    while requests are pending. The write is conditional on the VM read by the caller, so a
    concurrent change is a 409 Conflict.
    """
    namespace, name = vm["metadata"]["namespace"], vm["metadata"]["name"]
    pending = vm.get("status", {}).get("stateChangeRequests") or []
    lone_stop = len(requests) == 1 and requests[0]["action"] == "Stop"
    if pending and not lone_stop:
        raise errors.internal_error("unable to complete request: stop/start already underway")
    patch = {
        "metadata": {"resourceVersion": vm["metadata"]["resourceVersion"]},
        "status": {"stateChangeRequests": requests},
    }
    store.patch("virtualmachines", namespace, name, "merge", patch, actor="virt-api", subresource="status", admit=False)


def run_vm_action(store: Store, namespace: str, name: str, action: str) -> None:
    """Carry out PUT .../virtualmachines/<name>/<action> of subresources.kubevirt.io as virt-api does.

    start: Halted becomes Always. RerunOnFailure and Manual get a Start state change request,
    preceded by a Stop of the finished VMI. Always and Once reject it. stop: Always,
    RerunOnFailure and Once become Halted, and Manual gets a Stop request. restart: rejected for
    Halted and Once and when no VMI exists. Otherwise it queues Stop (with the VMI uid) and Start,
    and the VM controller deletes and recreates the VMI. Errors are 404 for a missing VM and 409
    for a state that does not allow the action.
    """
    vm = store.get("virtualmachines", namespace, name)
    vmi = store.try_get("virtualmachineinstances", namespace, name)
    phase = (vmi or {}).get("status", {}).get("phase", "")
    finished = vmi is not None and phase in _FINAL_PHASES
    strategy = _run_strategy(vm)
    logger.info("VM %s/%s: %s requested (runStrategy %s, VMI phase %s)", namespace, name, action,
                strategy, phase if vmi is not None else "none")

    if action == "start":
        # virt-api counts a VMI without a phase or in phase Unknown as not running.
        if vmi is not None and not finished and phase not in ("", "Unknown"):
            raise _vm_conflict(name, "VM is already running")
        if strategy in ("Always", "Once"):
            raise _vm_conflict(name, f"{strategy} does not support manual start requests")
        if strategy == "Halted":
            _set_run_strategy(store, namespace, name, vm, "Always")
            return
        if strategy == "RerunOnFailure" and phase == "Failed":
            raise _vm_conflict(name, "RerunOnFailure does not support starting VM from failed state")
        requests = [{"action": "Start"}]
        if finished:
            requests.insert(0, {"action": "Stop", "uid": vmi["metadata"]["uid"]})
        _request_state_change(store, vm, requests)
        return

    if action == "stop":
        if strategy in ("Always", "RerunOnFailure", "Once"):
            _set_run_strategy(store, namespace, name, vm, "Halted")
            return
        if vmi is None or finished:
            raise _vm_conflict(name, "VM is not running")
        if strategy == "Halted":
            # virt-api accepts this only with a grace period shorter than the VMI's, which the
            # simulator does not model.
            raise _vm_conflict(name, "Halted only supports manual stop requests with a shorter graceperiod")
        _request_state_change(store, vm, [{"action": "Stop", "uid": vmi["metadata"]["uid"]}])
        return

    if action == "restart":
        if strategy in ("Halted", "Once"):
            # "RunStategy" is how virt-api spells it in this message.
            raise _vm_conflict(name, f"RunStategy {strategy} does not support manual restart requests")
        if vmi is None:
            raise _vm_conflict(name, "VM is not running: Halted")
        _request_state_change(store, vm, [{"action": "Stop", "uid": vmi["metadata"]["uid"]}, {"action": "Start"}])
        return

    raise errors.ApiError(404, "NotFound", "the server could not find the requested resource")
