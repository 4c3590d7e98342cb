"""docker-compose.yml cannot run here, so it is checked against the Compose schema and the project."""

from __future__ import annotations

import json

import jsonschema
import yaml

from nicflow.settings import ENVIRONMENT
from tests.conftest import PROJECT_ROOT, SHARED, shared_file

COMPOSE_FILE = PROJECT_ROOT / "docker-compose.yml"


def load_compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def test_compose_file_matches_schema():
    schema = json.loads(shared_file(SHARED / "compose" / "compose-spec.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = [f"{'/'.join(map(str, error.path))}: {error.message}" for error in validator.iter_errors(load_compose())]
    assert errors == []


def test_compose_has_the_production_services():
    services = load_compose()["services"]
    assert {"postgresql", "temporal", "temporal-ui", "worker"} <= set(services)


def test_compose_mounts_and_builds_exist():
    for name, service in load_compose()["services"].items():
        if "build" in service:
            assert (PROJECT_ROOT / service["build"] / "Dockerfile").exists(), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./") and not source.endswith("kubeconfig"):
                assert (PROJECT_ROOT / source).exists(), f"{name} mounts missing {source}"


def test_compose_worker_uses_known_settings():
    worker = load_compose()["services"]["worker"]
    known = set(ENVIRONMENT.values())
    nicflow_variables = {key for key in worker["environment"] if key.startswith("NICFLOW_")}
    assert nicflow_variables <= known
    assert worker["environment"]["NICFLOW_DATABASE_URL"].startswith("postgresql+psycopg://")
