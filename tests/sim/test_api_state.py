"""State file: a restarted simulator continues with the saved objects and resourceVersion counter."""

from __future__ import annotations

from kubevirt_sim import Simulator
from kubevirt_sim.state import load_state
from kubevirt_sim.store import Store
from kubevirt_sim.clock import Clock
from tests.conftest import HARVESTER_FIXTURES


def test_state_file_restart_keeps_objects(tmp_path):
    state = tmp_path / "state.json"
    with Simulator([HARVESTER_FIXTURES], controllers=False, admission=False, state_file=state) as first:
        patched = first.store.patch(
            "virtualmachines", "default", "web-01", "merge", {"metadata": {"labels": {"kept": "yes"}}}, actor="client"
        )
        first.store.delete("virtualmachines", "default", "db-legacy", actor="client")
        saved_version = int(patched["metadata"]["resourceVersion"])

    # No manifests this time: everything comes from the state file.
    with Simulator([], controllers=False, admission=False, state_file=state) as second:
        vm = second.store.get("virtualmachines", "default", "web-01")
        gone = second.store.try_get("virtualmachines", "default", "db-legacy")
        later = second.store.patch(
            "virtualmachines", "default", "web-01", "merge", {"metadata": {"labels": {"next": "1"}}}, actor="client"
        )

    assert vm["metadata"]["labels"]["kept"] == "yes"
    assert vm["metadata"]["uid"] == "5b0c9e1e-0000-4000-8000-000000000001"
    assert gone is None
    assert int(later["metadata"]["resourceVersion"]) > saved_version + 1


def test_state_file_written_atomically(tmp_path):
    state = tmp_path / "state.json"
    with Simulator([HARVESTER_FIXTURES], controllers=False, admission=False, state_file=state):
        pass

    store = Store(Clock())
    revision = load_state(store, state)

    assert list(tmp_path.iterdir()) == [state]
    assert revision == store.revision
    assert store.try_get("nodes", None, "node-1") is not None


def test_state_file_keeps_simulated_time(tmp_path):
    state = tmp_path / "state.json"
    with Simulator([HARVESTER_FIXTURES], controllers=False, admission=False, state_file=state, speed=3600) as fast:
        fast.clock.sleep(7200)
        saved = fast.clock.now()

    with Simulator([], controllers=False, admission=False, state_file=state) as restarted:
        restored = restarted.clock.now()

    assert restored >= saved
