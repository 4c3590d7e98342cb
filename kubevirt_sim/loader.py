"""Load multi-document YAML manifests into the store as saved cluster state, status included."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import yaml

from kubevirt_sim.store import Store

logger = logging.getLogger(__name__)


def manifest_files(paths: Iterable[Path]) -> list[Path]:
    """Expand directories into their *.yaml and *.yml files, sorted by name; files stay in the given order."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files.extend(sorted(item for item in path.iterdir() if item.suffix in (".yaml", ".yml") and item.is_file()))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"manifest path {path} does not exist")
    return files


def load_manifests(store: Store, paths: Iterable[Path], actor: str = "loader") -> int:
    """Create every object of the manifests with its uid, generation and status; return how many.

    Raises ValueError naming the file for a document that is not an object of a served kind, and
    ApiError 409 for a duplicate object.
    """
    count = 0
    for file in manifest_files(paths):
        with file.open() as stream:
            documents = list(yaml.safe_load_all(stream))
        for index, document in enumerate(documents):
            if document is None:
                continue
            if not isinstance(document, dict) or "kind" not in document or "metadata" not in document:
                raise ValueError(f"{file}: document {index + 1} is not a Kubernetes object")
            try:
                store.load(document, actor=actor)
            except KeyError as error:
                raise ValueError(f"{file}: document {index + 1}: {error.args[0]}") from None
            count += 1
        logger.info("loaded %s", file)
    return count
