"""The import contracts in .importlinter: workflows stay deterministic, the core stays pure."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import PROJECT_ROOT


def test_import_contracts_kept():
    lint_imports = Path(sys.executable).parent / "lint-imports"

    output = subprocess.run([str(lint_imports)], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)

    assert output.returncode == 0, output.stdout + output.stderr
    assert "0 broken" in output.stdout


def test_workflows_import_no_io_library():
    forbidden = ("kubernetes", "sqlalchemy", "psycopg", "urllib3", "requests", "aiohttp", "httpx")
    for path in (PROJECT_ROOT / "workflows").glob("*.py"):
        for line in path.read_text().splitlines():
            words = line.strip().split()
            if words[:1] in (["import"], ["from"]) and len(words) > 1:
                assert words[1].split(".")[0] not in forbidden, f"{path.name}: {line.strip()}"
