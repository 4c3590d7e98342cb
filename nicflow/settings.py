"""Settings from flags, `NICFLOW_*` environment variables and a running `nicflow dev` stack.

Precedence, highest first: a command-line flag, the environment variable, the addresses that a
running `nicflow dev` wrote to its state file, then the built-in default. The state file lets a
second terminal reach the embedded stack with no configuration at all.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import BaseModel

ENVIRONMENT = {
    "temporal_address": "NICFLOW_TEMPORAL_ADDRESS",
    "temporal_namespace": "NICFLOW_TEMPORAL_NAMESPACE",
    "task_queue": "NICFLOW_TASK_QUEUE",
    "database_url": "NICFLOW_DATABASE_URL",
    "kubeconfig": "NICFLOW_KUBECONFIG",
    "kube_context": "NICFLOW_KUBE_CONTEXT",
}


def state_dir() -> Path:
    """Return the folder where `nicflow dev` keeps its files (`NICFLOW_STATE_DIR` overrides it)."""
    configured = os.environ.get("NICFLOW_STATE_DIR")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "nicflow"


def dev_stack_file() -> Path:
    return state_dir() / "dev-stack.json"


class Settings(BaseModel):
    temporal_address: str = "127.0.0.1:7233"
    temporal_namespace: str = "default"
    task_queue: str = "nicflow"
    database_url: str | None = None
    kubeconfig: str | None = None
    kube_context: str | None = None

    @classmethod
    def load(cls, **flags: str | None) -> "Settings":
        """Merge flags (None means not given), the environment, a running dev stack and the defaults."""
        values: dict[str, str] = {}

        dev = _running_dev_stack()
        values.update({key: value for key, value in dev.items() if key in cls.model_fields and value})

        for field, variable in ENVIRONMENT.items():
            if os.environ.get(variable):
                values[field] = os.environ[variable]

        values.update({key: value for key, value in flags.items() if value is not None})
        return cls(**values)

    def require_database_url(self) -> str:
        if not self.database_url:
            raise ValueError(
                "no ledger database is configured: set NICFLOW_DATABASE_URL (for example "
                "postgresql+psycopg://nicflow@db:5432/nicflow) or pass --database-url, "
                "or start the embedded stack with `nicflow dev`"
            )
        return self.database_url


def _running_dev_stack() -> dict[str, str]:
    """Return the addresses of a `nicflow dev` whose process is still alive, or nothing."""
    path = dev_stack_file()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    pid = data.get("pid")
    if not isinstance(pid, int) or not _process_alive(pid):
        return {}
    return {key: value for key, value in data.items() if isinstance(value, str)}


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
