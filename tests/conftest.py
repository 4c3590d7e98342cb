"""Fixtures shared by the whole suite: a throwaway PostgreSQL database and the shared inputs."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHARED = PROJECT_ROOT.parent / "shared"
SCHEMA_PATH = SHARED / "kubevirt" / "openapi-v1.6.6.json"
HARVESTER_FIXTURES = PROJECT_ROOT / "nicflow" / "manifests"

# The machine's server; NICFLOW_TEST_DATABASE_URL points the suite at another one.
ADMIN_URL = os.environ.get("NICFLOW_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def shared_file(path: Path) -> Path:
    """Return a file from ../shared, failing the test with a clear message when it is missing."""
    if not path.exists():
        pytest.fail(f"{path} is missing: the suite reads it from ../shared beside the project root")
    return path


@pytest.fixture(scope="session")
def kubevirt_schema_path() -> Path:
    return shared_file(SCHEMA_PATH)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """Create an empty PostgreSQL database for one test and drop it afterwards."""
    configured = os.environ.get("NICFLOW_TEST_DATABASE_URL")
    if configured:
        yield configured
        return

    name = f"nicflow_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
