"""Validation of KubeVirt objects against the definitions of KubeVirt's Swagger 2.0 document.

The apiserver treats a custom resource as a structural schema would: null fields are dropped,
fields the schema does not declare are pruned, and what remains must validate. A violation is
422 Invalid with one cause per field, named by its path
(`spec.template.spec.domain.devices.interfaces[1].macAddress`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from jsonschema import Draft4Validator
from jsonschema.exceptions import ValidationError

from kubevirt_sim import errors
from kubevirt_sim.resources import RESOURCES, Resource

logger = logging.getLogger(__name__)

_INT_OR_STRING = "k8s.io.apimachinery.pkg.util.intstr.IntOrString"
_QUANTITY = "k8s.io.apimachinery.pkg.api.resource.Quantity"


class SchemaValidator:
    """Validators for the KubeVirt kinds, built once from the Swagger file (building is the slow part).

    The store calls the instance as its `validator`: `validator(resource, obj)` prunes `obj` in
    place, returns the paths of the pruned fields and raises ApiError 422 when the rest is
    invalid. Objects of other groups pass untouched.
    """

    def __init__(self, schema_path: Path, prune: bool = True):
        document = json.loads(Path(schema_path).read_text())
        definitions: dict[str, Any] = document["definitions"]

        # Kubernetes accepts a number or a string where the Go type is IntOrString or Quantity.
        definitions[_INT_OR_STRING] = {"type": ["string", "integer"]}
        definitions[_QUANTITY] = {"type": ["string", "integer", "number"]}

        self._definitions = definitions
        self._prune = prune
        self._validators: dict[str, Draft4Validator] = {}
        for resource in RESOURCES.values():
            name = resource.schema_definition
            if name is None:
                continue
            if name not in definitions:
                raise ValueError(f"{schema_path} has no definition {name!r} for {resource.kind}")
            schema = {"$ref": f"#/definitions/{name}", "definitions": definitions}
            self._validators[resource.plural] = Draft4Validator(schema)
        logger.info("schema validators built for %s from %s", ", ".join(sorted(self._validators)), schema_path)

    def __call__(self, resource: Resource, obj: dict) -> list[str]:
        validator = self._validators.get(resource.plural)
        if validator is None:
            return []
        _drop_nulls(obj)
        pruned: list[str] = []
        if self._prune:
            self._prune_object(obj, {"$ref": f"#/definitions/{resource.schema_definition}"}, "", pruned, top=True)
            if pruned:
                logger.debug("pruned unknown fields of %s %s: %s", resource.kind, obj["metadata"].get("name"), pruned)

        causes = [_cause(error) for error in sorted(validator.iter_errors(obj), key=_error_order)]
        if causes:
            raise errors.invalid(resource.kind, obj.get("metadata", {}).get("name", ""), causes, group=resource.group)
        return pruned

    # --- pruning ---

    def _resolve(self, schema: dict) -> dict:
        while "$ref" in schema:
            schema = self._definitions[schema["$ref"].rsplit("/", 1)[1]]
        return schema

    def _prune_object(self, value: Any, schema: dict, path: str, pruned: list[str], top: bool = False) -> None:
        schema = self._resolve(schema)
        if isinstance(value, dict):
            properties = schema.get("properties")
            additional = schema.get("additionalProperties")
            if properties is None:
                if isinstance(additional, dict):
                    for key, item in value.items():
                        self._prune_object(item, additional, f"{path}.{key}", pruned)
                return
            for key in list(value):
                if key in properties:
                    child = f"{path}.{key}" if path else key
                    # ObjectMeta keeps what the apiserver keeps; only a template's metadata is pruned.
                    if top and key == "metadata":
                        continue
                    self._prune_object(value[key], properties[key], child, pruned)
                elif top and key in ("apiVersion", "kind"):
                    continue
                else:
                    pruned.append(f"{path}.{key}" if path else key)
                    del value[key]
        elif isinstance(value, list) and isinstance(schema.get("items"), dict):
            for index, item in enumerate(value):
                self._prune_object(item, schema["items"], f"{path}[{index}]", pruned)


def _drop_nulls(value: Any) -> None:
    """Remove null map values recursively, as the apiserver does for fields not marked nullable."""
    if isinstance(value, dict):
        for key in [key for key, item in value.items() if item is None]:
            del value[key]
        for item in value.values():
            _drop_nulls(item)
    elif isinstance(value, list):
        for item in value:
            _drop_nulls(item)


def field_path(parts: Iterable[Any]) -> str:
    """Render a jsonschema path as Kubernetes renders field paths: `a.b[1].c`."""
    rendered = ""
    for part in parts:
        if isinstance(part, int):
            rendered += f"[{part}]"
        else:
            rendered += f".{part}" if rendered else str(part)
    return rendered


_GO_TYPES = {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer", float: "number"}


def _cause(error: ValidationError) -> tuple[str, str]:
    path = field_path(error.absolute_path)
    instance = error.instance

    if error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else ""
        return (f"{path}.{missing}" if path else missing), "Required value"
    if error.validator == "type":
        actual = _GO_TYPES.get(type(instance), type(instance).__name__)
        expected = error.validator_value
        expected_text = expected if isinstance(expected, str) else " or ".join(expected)
        return path, f'Invalid value: "{actual}": {path} in body must be of type {expected_text}: "{actual}"'
    if error.validator == "enum":
        supported = ", ".join(json.dumps(item) for item in error.validator_value)
        return path, f"Unsupported value: {json.dumps(instance)}: supported values: {supported}"
    return path, f"Invalid value: {json.dumps(instance)}: {error.message}"


def _error_order(error: ValidationError) -> str:
    return field_path(error.absolute_path)


# --- OpenAPI v3 discovery ----------------------------------------------------------------------


def _to_openapi_v3(value: Any) -> Any:
    """Rewrite a Swagger 2.0 schema for OpenAPI v3: refs point into components, one type per schema."""
    if isinstance(value, dict):
        converted = {key: _to_openapi_v3(item) for key, item in value.items()}
        ref = converted.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/definitions/"):
            converted["$ref"] = "#/components/schemas/" + ref[len("#/definitions/"):]
        if isinstance(converted.get("type"), list):
            del converted["type"]
            converted["x-kubernetes-int-or-string"] = True
        return converted
    if isinstance(value, list):
        return [_to_openapi_v3(item) for item in value]
    return value


def _operation(resource: Resource, action: str, name_path: bool) -> dict[str, Any]:
    parameters = [{"name": "dryRun", "in": "query", "schema": {"type": "string"}}]
    if action in ("post", "put", "patch"):
        parameters.append({"name": "fieldValidation", "in": "query", "schema": {"type": "string"}})
    kind_verb = {"get": "read" if name_path else "list", "post": "create", "put": "replace", "patch": "patch", "delete": "delete"}[action]
    return {
        "operationId": f"{kind_verb}{resource.kind}",
        "parameters": parameters,
        "responses": {"200": {"description": "OK"}},
        "x-kubernetes-action": {"get": "get" if name_path else "list", "post": "post", "put": "put", "patch": "patch", "delete": "delete"}[action],
        "x-kubernetes-group-version-kind": {"group": resource.group, "version": resource.version, "kind": resource.kind},
    }


def openapi_v3_documents(schema_path: Path | None) -> dict[str, dict]:
    """Build the OpenAPI v3 document of each served group version, keyed 'api/v1' or 'apis/<group>/<version>'.

    The documents list the PATCH operations with the fieldValidation parameter, which is how
    kubectl decides to leave field validation to the server. With `schema_path` the KubeVirt
    definitions become `components.schemas` tagged with their kind, for `kubectl explain`.
    """
    components: dict[str, Any] = {}
    if schema_path is not None:
        definitions = json.loads(Path(schema_path).read_text())["definitions"]
        components = _to_openapi_v3(definitions)
        for resource in RESOURCES.values():
            name = resource.schema_definition
            if name in components:
                components[name]["x-kubernetes-group-version-kind"] = [
                    {"group": resource.group, "version": resource.version, "kind": resource.kind}
                ]

    documents: dict[str, dict] = {}
    for resource in RESOURCES.values():
        key = f"apis/{resource.group}/{resource.version}" if resource.group else "api/v1"
        document = documents.setdefault(key, {
            "openapi": "3.0.0",
            "info": {"title": "Kubernetes", "version": "kubevirt-sim"},
            "paths": {},
            "components": {"schemas": components if resource.group == "kubevirt.io" else {}},
        })
        base = "/" + key + ("/namespaces/{namespace}" if resource.namespaced else "") + "/" + resource.plural
        document["paths"][base] = {action: _operation(resource, action, False) for action in ("get", "post")}
        document["paths"][base + "/{name}"] = {
            action: _operation(resource, action, True) for action in ("get", "put", "patch", "delete")
        }
        if resource.status_subresource:
            document["paths"][base + "/{name}/status"] = {
                action: _operation(resource, action, True) for action in ("get", "put", "patch")
            }
    return documents
