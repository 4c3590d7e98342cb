"""Persistence of the store to a JSON file, so that a restarted simulator continues with the same objects."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from datetime import datetime
from pathlib import Path

from kubevirt_sim.store import Store

logger = logging.getLogger(__name__)

STATE_FORMAT = 1


def save_state(store: Store, path: Path) -> None:
    """Write all objects, the revision counter and the simulated time to `path` atomically.

    The data goes to a temporary file in the same directory that is then renamed over `path`.
    """
    revision, objects = store.snapshot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": STATE_FORMAT,
        "resourceVersion": revision,
        "time": store.clock.now().isoformat(),
        "objects": objects,
    }

    descriptor, temporary = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w") as stream:
            json.dump(payload, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    logger.debug("state saved to %s at resourceVersion %s", path, revision)


def load_state(store: Store, path: Path) -> int:
    """Replace the store's objects with those saved in `path` and return the saved revision.

    The store's clock moves forward to the saved simulated time if it is behind it, so timestamps
    written after a restart are never older than those saved. Raises ValueError when the file is
    not a state file of this format.
    """
    payload = json.loads(Path(path).read_text())
    if not isinstance(payload, dict) or payload.get("format") != STATE_FORMAT:
        raise ValueError(f"{path} is not a kubevirt_sim state file of format {STATE_FORMAT}")
    revision = int(payload["resourceVersion"])
    store.restore(revision, payload["objects"])
    if payload.get("time"):
        store.clock.advance_to(datetime.fromisoformat(payload["time"]))
    logger.info("state loaded from %s at resourceVersion %s", path, revision)
    return revision


class StateSaver:
    """Saves the store every `interval` real seconds when it changed, and once more on stop()."""

    def __init__(self, store: Store, path: Path, interval: float = 2.0):
        self.store = store
        self.path = Path(path)
        self.interval = interval
        self._stopped = threading.Event()
        self._saved_revision = -1
        self._thread = threading.Thread(target=self._run, name="kubevirt-sim-state", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop the periodic saves and write the final state."""
        self._stopped.set()
        self._thread.join(timeout=self.interval + 5)
        self.save(force=True)

    def save(self, force: bool = False) -> None:
        """Save the state if the store changed since the last save, or always with `force`."""
        if not force and self.store.revision == self._saved_revision:
            return
        revision = self.store.revision
        save_state(self.store, self.path)
        self._saved_revision = revision

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            try:
                self.save()
            except OSError:
                logger.exception("saving the simulator state to %s failed; retrying in %.0f s", self.path, self.interval)
