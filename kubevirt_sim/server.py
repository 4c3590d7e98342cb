"""The Kubernetes API over HTTP/1.1 with keep-alive, on the standard library's ThreadingHTTPServer.

It serves discovery, GET/LIST/WATCH/POST/PUT/PATCH/DELETE on the simulated resources, the
KubeVirt VM subresources start, stop and restart, and the simulator's control endpoint under /sim.
"""

from __future__ import annotations

import hashlib
import json
import logging
import select
import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from kubevirt_sim import errors
from kubevirt_sim.errors import ApiError
from kubevirt_sim.httpfaults import HttpFault
from kubevirt_sim.resources import GROUP_VERSIONS, RESOURCES, Resource, resource_for_path, to_table

if TYPE_CHECKING:
    from kubevirt_sim.simulator import Simulator

logger = logging.getLogger(__name__)

PATCH_TYPES = {
    "application/json-patch+json": "json",
    "application/merge-patch+json": "merge",
    "application/strategic-merge-patch+json": "strategic",
}
VM_ACTIONS = ("start", "stop", "restart")
SUBRESOURCE_GROUP = "subresources.kubevirt.io"
# The version a Harvester v1.7 cluster's apiserver reports; clients only check the major and minor.
SERVER_VERSION = {
    "major": "1",
    "minor": "33",
    "gitVersion": "v1.33.5+rke2r1",
    "gitCommit": "kubevirt-sim",
    "gitTreeState": "clean",
    "buildDate": "2025-10-01T00:00:00Z",
    "goVersion": "go1.24.6",
    "compiler": "gc",
    "platform": "linux/amd64",
}
DEFAULT_WATCH_SECONDS = 1800.0
_WRITE_VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]


@dataclass(frozen=True)
class Route:
    """A parsed resource path: namespace None means all namespaces (or a cluster-scoped resource)."""

    resource: Resource
    namespace: str | None
    name: str | None
    subresource: str | None
    watch_path: bool = False


class ApiServer(ThreadingHTTPServer):
    """HTTP server bound to one Simulator; request threads are daemons so stop() never waits on a watch."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], sim: "Simulator"):
        super().__init__(address, ApiRequestHandler)
        self.sim = sim
        self.stopping = threading.Event()
        self._openapi: dict[str, bytes] | None = None
        self._openapi_lock = threading.Lock()

    def openapi_v3(self) -> dict[str, bytes]:
        """Return the serialized OpenAPI v3 documents by group version path, built on first use."""
        with self._openapi_lock:
            if self._openapi is None:
                from kubevirt_sim.schema import openapi_v3_documents

                documents = openapi_v3_documents(self.sim.schema_path)
                self._openapi = {key: json.dumps(document).encode() for key, document in documents.items()}
            return self._openapi

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def shutdown(self) -> None:
        self.stopping.set()
        super().shutdown()


class ApiRequestHandler(BaseHTTPRequestHandler):
    """Handles one connection's requests, which HTTP/1.1 keeps open between them."""

    protocol_version = "HTTP/1.1"
    # Headers and body leave in separate writes. With Nagle's algorithm on, the body would wait
    # for the client's delayed ACK (about 40 ms on Linux) on every keep-alive request.
    disable_nagle_algorithm = True
    server: ApiServer

    # --- entry points ---

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)

    # --- dispatch ---

    def _handle(self, method: str) -> None:
        split = urlsplit(self.path)
        query = {key: values[-1] for key, values in parse_qs(split.query).items()}
        parts = [part for part in split.path.split("/") if part]
        logger.debug("%s %s", method, self.path)

        try:
            body = self._read_body()
            if parts[:1] == ["sim"]:
                self._handle_control(method, parts[1:], query, body)
                return
            if parts[:2] == ["openapi", "v3"] and method == "GET":
                self._send_openapi(parts[2:])
                return
            discovery = self._discovery(method, parts)
            if discovery is not None:
                self._send_json(200, discovery)
                return
            route = self._route(parts)
            if route is None:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")

            fault = self.server.sim.http_faults.pick(method, route.resource.plural, route.name, route.subresource)
            if fault is not None and not fault.after_commit:
                self._answer_fault(fault)
                return
            with self.server.sim.store.request_options(query.get("fieldValidation")) as warnings:
                self._warnings = warnings
                self._handle_resource(method, route, query, body, fault)
        except ApiError as error:
            self._send_error(error)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as error:  # the apiserver returns 500 on a bug, and so does the simulator
            logger.exception("%s %s failed", method, self.path)
            self._send_error(errors.internal_error(f"{type(error).__name__}: {error}"))

    def _read_body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        if length == 0:
            return None
        raw = self.rfile.read(length)
        try:
            return json.loads(raw)
        except json.JSONDecodeError as error:
            content_type = self.headers.get("Content-Type", "")
            if "yaml" in content_type:
                import yaml

                return yaml.safe_load(raw)
            raise errors.bad_request(f"the request body is not valid JSON: {error}") from None

    def _route(self, parts: list[str]) -> Route | None:
        if parts[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return None

        watch_path = False
        if rest[:1] == ["watch"]:
            watch_path, rest = True, rest[1:]

        namespace = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        if not rest or len(rest) > 3:
            return None

        plural = rest[0]
        name = rest[1] if len(rest) >= 2 else None
        subresource = rest[2] if len(rest) == 3 else None
        if group == SUBRESOURCE_GROUP:
            if plural != "virtualmachines" or subresource not in VM_ACTIONS or namespace is None:
                return None
            return Route(RESOURCES["virtualmachines"], namespace, name, subresource)

        resource = resource_for_path(group, version, plural)
        if resource is None:
            return None
        if namespace is not None and not resource.namespaced:
            return None
        if name is not None and resource.namespaced and namespace is None:
            return None
        return Route(resource, namespace, name, subresource, watch_path)

    def _handle_resource(
        self, method: str, route: Route, query: dict[str, str], body: Any, fault: HttpFault | None
    ) -> None:
        store = self.server.sim.store
        resource = route.resource
        plural = resource.plural
        actor = "client"
        dry_run = _dry_run(query)

        if route.subresource in VM_ACTIONS:
            if method != "PUT":
                raise errors.method_not_allowed("the server does not allow this method on the requested resource")
            from kubevirt_sim.simulator import run_vm_action

            run_vm_action(store, route.namespace or "", route.name or "", route.subresource or "")
            self._reply(fault, 202, None)
            return

        if route.name is None:
            if method == "GET":
                if route.watch_path or query.get("watch") in ("true", "1"):
                    self._stream_watch(route, query)
                    return
                listed = self._list(route, query)
                if self._wants_table():
                    listed = to_table(resource, listed["items"], listed["metadata"]["resourceVersion"], store.clock.now())
                self._reply(fault, 200, listed)
                return
            if method == "POST":
                if resource.namespaced and route.namespace is None:
                    raise ApiError(404, "NotFound", "the server could not find the requested resource")
                if not isinstance(body, dict):
                    raise errors.bad_request("the request body must be a JSON object")
                created = store.create(plural, route.namespace, body, actor=actor, dry_run=dry_run)
                self._reply(fault, 201, created)
                return
            raise errors.method_not_allowed("the server does not allow this method on the requested resource")

        if method == "GET":
            if route.subresource is not None and not (route.subresource == "status" and resource.status_subresource):
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            obj = store.get(plural, route.namespace, route.name)
            if self._wants_table():
                obj = to_table(resource, [obj], obj["metadata"]["resourceVersion"], store.clock.now())
            self._reply(fault, 200, obj)
        elif method == "PUT":
            if not isinstance(body, dict):
                raise errors.bad_request("the request body must be a JSON object")
            self._reply(fault, 200, store.update(
                plural, route.namespace, route.name, body, actor=actor, subresource=route.subresource, dry_run=dry_run
            ))
        elif method == "PATCH":
            content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
            patch_type = PATCH_TYPES.get(content_type)
            if patch_type is None:
                raise ApiError(
                    415, "UnsupportedMediaType",
                    f"the body of the request was in an unknown format - accepted media types include: "
                    f"{', '.join(PATCH_TYPES)}",
                )
            if body is None:
                raise errors.bad_request("the patch body is empty")
            if patch_type == "strategic" and resource.custom and not self.server.sim.strategic_merge_on_custom_resources:
                raise ApiError(
                    415, "UnsupportedMediaType",
                    "the body of the request was in an unknown format - accepted media types include: "
                    "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
                )
            self._reply(fault, 200, store.patch(
                plural, route.namespace, route.name, patch_type, body,
                actor=actor, subresource=route.subresource, dry_run=dry_run,
            ))
        elif method == "DELETE":
            if route.subresource is not None:
                raise errors.method_not_allowed("the server does not allow this method on the requested resource")
            self._reply(fault, 200, self._delete(route, query, body))
        else:
            raise errors.method_not_allowed("the server does not allow this method on the requested resource")

    def _list(self, route: Route, query: dict[str, str]) -> dict:
        resource = route.resource
        items, revision = self.server.sim.store.list(
            resource.plural, route.namespace, query.get("labelSelector"), query.get("fieldSelector")
        )
        metadata: dict[str, Any] = {"resourceVersion": revision}

        start = 0
        token = query.get("continue")
        if token:
            try:
                start = int(token)
            except ValueError:
                raise errors.bad_request(f"invalid continue token {token!r}") from None
        limit = int(query.get("limit") or 0)
        if limit > 0:
            if start + limit < len(items):
                metadata["continue"] = str(start + limit)
                metadata["remainingItemCount"] = len(items) - start - limit
            items = items[start:start + limit]
        elif start:
            items = items[start:]

        return {"apiVersion": resource.api_version, "kind": resource.list_kind, "metadata": metadata, "items": items}

    def _delete(self, route: Route, query: dict[str, str], body: Any) -> dict:
        store = self.server.sim.store
        resource = route.resource
        options = body if isinstance(body, dict) else {}
        propagation = options.get("propagationPolicy") or query.get("propagationPolicy")
        dry_run = _dry_run(query) or options.get("dryRun") == ["All"]
        result = store.delete(
            resource.plural, route.namespace, route.name or "", actor="client",
            preconditions=options.get("preconditions"), propagation_policy=propagation, dry_run=dry_run,
        )
        still_present = bool(result["metadata"].get("finalizers"))
        if still_present or resource.returns_deleted_object:
            return result
        details: dict[str, Any] = {"name": route.name, "kind": resource.plural, "uid": result["metadata"].get("uid")}
        if resource.group:
            details["group"] = resource.group
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}

    # --- watch ---

    def _stream_watch(self, route: Route, query: dict[str, str]) -> None:
        timeout = float(query.get("timeoutSeconds") or DEFAULT_WATCH_SECONDS)
        events = self.server.sim.store.watch(
            route.resource.plural,
            route.namespace,
            query.get("resourceVersion"),
            query.get("labelSelector"),
            query.get("fieldSelector"),
            timeout,
            stop=self.server.stopping,
            alive=self._client_connected,
        )
        table = self._wants_table()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for event in events:
                if table and event["type"] != "ERROR":
                    obj = event["object"]
                    event = {"type": event["type"], "object": to_table(
                        route.resource, [obj], obj["metadata"]["resourceVersion"], self.server.sim.clock.now()
                    )}
                self._write_chunk(json.dumps(event).encode() + b"\n")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            logger.debug("watch client on %s went away", route.resource.plural)
            self.close_connection = True

    def _client_connected(self) -> bool:
        """Return whether the watch client is still connected (a closed socket reads as empty)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            if not readable:
                return True
            return bool(self.connection.recv(1, socket.MSG_PEEK))
        except OSError:
            return False

    def _wants_table(self) -> bool:
        """Tell whether the Accept header puts a meta.k8s.io Table first, as `kubectl get` does."""
        first = (self.headers.get("Accept") or "").split(",")[0]
        return "as=Table" in first

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    # --- discovery ---

    def _discovery(self, method: str, parts: list[str]) -> dict | None:
        if method != "GET":
            return None
        host, port = self.server.server_address[:2]
        if parts == ["version"]:
            return SERVER_VERSION
        if parts == ["api"]:
            return {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": f"{host}:{port}"}],
            }
        if parts == ["apis"]:
            return {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [
                    {
                        "name": group,
                        "versions": [{"groupVersion": f"{group}/{version}", "version": version}],
                        "preferredVersion": {"groupVersion": f"{group}/{version}", "version": version},
                    }
                    for group, version in GROUP_VERSIONS.items()
                ],
            }
        if parts == ["api", "v1"]:
            return _resource_list("", "v1")
        if len(parts) == 3 and parts[0] == "apis" and GROUP_VERSIONS.get(parts[1]) == parts[2]:
            return _resource_list(parts[1], parts[2])
        if len(parts) == 2 and parts[0] == "apis" and parts[1] in GROUP_VERSIONS:
            group, version = parts[1], GROUP_VERSIONS[parts[1]]
            return {
                "kind": "APIGroup",
                "apiVersion": "v1",
                "name": group,
                "versions": [{"groupVersion": f"{group}/{version}", "version": version}],
                "preferredVersion": {"groupVersion": f"{group}/{version}", "version": version},
            }
        return None

    def _send_openapi(self, parts: list[str]) -> None:
        documents = self.server.openapi_v3()
        if not parts:
            paths = {
                key: {"serverRelativeURL": f"/openapi/v3/{key}?hash={hashlib.sha512(data).hexdigest().upper()}"}
                for key, data in documents.items()
            }
            self._send_json(200, {"paths": paths})
            return
        data = documents.get("/".join(parts))
        if data is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        self._send_bytes(200, data, "application/json")

    # --- control endpoint ---

    def _handle_control(self, method: str, parts: list[str], query: dict[str, str], body: Any) -> None:
        sim = self.server.sim
        endpoint = parts[0] if parts else ""

        if endpoint == "healthz" and method == "GET":
            self._send_bytes(200, b"ok", "text/plain")
        elif endpoint == "faults" and method == "POST":
            self._send_json(200, {"result": _call_fault_method(sim, body)})
        elif endpoint == "faults" and method == "DELETE":
            sim.http_faults.clear()
            if sim.faults is not None and hasattr(sim.faults, "clear"):
                sim.faults.clear()
            self._send_json(200, {"result": None})
        elif endpoint == "faults" and method == "GET":
            self._send_json(200, {"http": sim.http_faults.list()})
        elif endpoint == "record" and method == "GET":
            since: int | str | None = query.get("since")
            if isinstance(since, str) and since.isdigit():
                since = int(since)
            changes = sim.recorder.query(
                plural=query.get("plural"),
                namespace=query.get("namespace"),
                name=query.get("name"),
                field_prefix=query.get("field_prefix"),
                actor=query.get("actor"),
                since=since,
            )
            self._send_json(200, {"items": [change.to_dict() for change in changes]})
        else:
            raise ApiError(404, "NotFound", f"no control endpoint {method} /sim/{'/'.join(parts)}")

    # --- responses ---

    def _reply(self, fault: HttpFault | None, code: int, body: dict | None) -> None:
        """Send a successful response, or the fault of an after_commit rule in its place."""
        if fault is not None:
            self._answer_fault(fault)
            return
        if body is None:
            self._send_bytes(code, b"", "application/json")
        else:
            self._send_json(code, body)

    def _answer_fault(self, fault: HttpFault) -> None:
        if fault.timeout:
            logger.info("holding %s %s for %.1f s (HTTP fault %s)", self.command, self.path, fault.hold_seconds, fault.id)
            released = self.server.sim.http_faults.released
            deadline_hit = not released.wait(fault.hold_seconds)
            if deadline_hit or self.server.stopping.is_set():
                logger.debug("closing held request %s without a response", self.path)
            self.close_connection = True
            return
        code = fault.code or 500
        message = {
            409: errors.CONFLICT_MESSAGE,
            429: "Too many requests, please try again later.",
            500: "injected server error",
        }.get(code, f"injected HTTP {code}")
        if code == 409:
            error = errors.conflict(self._fault_plural(), "", self._fault_name())
        elif code == 500:
            error = errors.internal_error(message)
        else:
            error = errors.from_code(code, message)
        self._send_error(error)

    def _fault_plural(self) -> str:
        route = self._route([part for part in urlsplit(self.path).path.split("/") if part])
        if route is None:
            return ""
        resource = route.resource
        return f"{resource.plural}.{resource.group}" if resource.group else resource.plural

    def _fault_name(self) -> str:
        route = self._route([part for part in urlsplit(self.path).path.split("/") if part])
        return (route.name or "") if route else ""

    def _send_error(self, error: ApiError) -> None:
        logger.info("%s %s -> %s %s: %s", self.command, self.path, error.code, error.reason, error.message)
        headers = {}
        if error.code == 429:
            retry_after = (error.details or {}).get("retryAfterSeconds", 1)
            headers["Retry-After"] = str(retry_after)
        self._send_json(error.code, error.status(), headers)

    def _send_json(self, code: int, body: Any, headers: dict[str, str] | None = None) -> None:
        self._send_bytes(code, json.dumps(body).encode(), "application/json", headers)

    def _send_bytes(self, code: int, data: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-cache, private")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        for warning in getattr(self, "_warnings", None) or []:
            self.send_header("Warning", "299 - " + json.dumps(warning))
        self._warnings = None
        self.end_headers()
        self.wfile.write(data)


def _dry_run(query: dict[str, str]) -> bool:
    """Read the dryRun query parameter; 400 for any value but All, as the apiserver does."""
    value = query.get("dryRun")
    if value is None:
        return False
    if value != "All":
        raise errors.bad_request(f'Invalid dry run value "{value}": valid values are "All"')
    return True


def _resource_list(group: str, version: str) -> dict:
    """APIResourceList of one group version, with the status and KubeVirt action subresources."""
    group_version = f"{group}/{version}" if group else version
    entries: list[dict[str, Any]] = []

    if group == SUBRESOURCE_GROUP:
        for action in VM_ACTIONS:
            entries.append({"name": f"virtualmachines/{action}", "singularName": "", "namespaced": True, "kind": "", "verbs": ["update"]})
    for resource in RESOURCES.values():
        if resource.group != group or resource.version != version:
            continue
        entry: dict[str, Any] = {
            "name": resource.plural,
            "singularName": resource.singular,
            "namespaced": resource.namespaced,
            "kind": resource.kind,
            "verbs": _WRITE_VERBS,
        }
        if resource.short_names:
            entry["shortNames"] = list(resource.short_names)
        if resource.categories:
            entry["categories"] = list(resource.categories)
        entries.append(entry)
        if resource.status_subresource:
            entries.append({
                "name": f"{resource.plural}/status",
                "singularName": "",
                "namespaced": resource.namespaced,
                "kind": resource.kind,
                "verbs": ["get", "patch", "update"],
            })

    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": entries}


def _call_fault_method(sim: "Simulator", body: Any) -> Any:
    """Call `kind(**args)` on the cluster faults or the HTTP faults, as a control request names it.

    `target` ('http' or 'cluster') picks the object; without it the cluster faults are tried first.
    """
    if not isinstance(body, dict) or not isinstance(body.get("kind"), str):
        raise errors.bad_request('expected {"kind": "<method>", "args": {...}, "target": "http"|"cluster"}')
    kind = body["kind"]
    args = body.get("args") or {}
    if not isinstance(args, dict):
        raise errors.bad_request("args must be a JSON object")
    if kind.startswith("_"):
        raise errors.bad_request(f"{kind!r} is not a fault method")

    targets = {"cluster": sim.faults, "http": sim.http_faults}
    requested = body.get("target")
    if requested is not None and requested not in targets:
        raise errors.bad_request(f"unknown target {requested!r}: expected 'http' or 'cluster'")
    order = [requested] if requested else ["cluster", "http"]

    for name in order:
        target = targets[name]
        method = getattr(target, kind, None) if target is not None else None
        if callable(method):
            try:
                return method(**args)
            except (TypeError, ValueError) as error:
                raise errors.bad_request(f"{name} fault {kind} rejected its arguments: {error}") from None
    raise errors.bad_request(f"no fault method {kind!r} on {' or '.join(order)} faults")
