"""A thin wrapper over the official `kubernetes` client for the KubeVirt objects nicflow reads and writes.

Objects come back as plain dicts, as the API serves them, so that the pure rules and patch
builders work on the same shapes in tests and in production.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError as Urllib3Error

logger = logging.getLogger(__name__)

KUBEVIRT = ("kubevirt.io", "v1")
MULTUS = ("k8s.cni.cncf.io", "v1")

# Seconds to connect and to read one response. A hung API server then fails the call and the
# retry policy tries again. The read limit stays below the activities' 10 s heartbeat timeout,
# so that Temporal never starts a second attempt while one call of the first is still waiting.
REQUEST_TIMEOUT = (5, 8)

# HTTP codes that a later attempt can succeed on. 400, 404 and 422 describe the request itself.
RETRYABLE_CODES = {409, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class ClusterError(Exception):
    """An API error response, classified for the retry policy."""

    code: int
    reason: str
    message: str
    retryable: bool

    def __str__(self) -> str:
        return f"{self.code} {self.reason}: {self.message}"


def classify(error: Exception) -> ClusterError:
    """Turn a client exception into a ClusterError that states whether a retry can help."""
    if isinstance(error, ApiException):
        reason, message = error.reason or "", str(error.body or error.reason)
        try:
            body = json.loads(error.body or "{}")
            reason = body.get("reason") or reason
            message = body.get("message") or message
        except (TypeError, ValueError):
            pass
        code = int(error.status or 0)
        # A webhook denial is final whatever its code. Harvester's validators return plain errors,
        # such as a duplicate MAC, as 500, which would otherwise read as a server fault.
        denied = "admission webhook" in message and "denied the request" in message
        return ClusterError(code, reason, message, not denied and (code in RETRYABLE_CODES or code == 0))
    if isinstance(error, (Urllib3Error, OSError, TimeoutError)):
        return ClusterError(0, "Unreachable", f"{type(error).__name__}: {error}", True)
    raise error


class KubeVirtClient:
    """Reads and writes VMs, VMIs, VMIMs, NADs, nodes and the KubeVirt CR through one API client."""

    def __init__(self, kubeconfig: str | None = None, context: str | None = None) -> None:
        if kubeconfig or not _in_cluster():
            self.api = config.new_client_from_config(config_file=kubeconfig, context=context)
        else:
            config.load_incluster_config()
            self.api = client.ApiClient()
        self.custom = client.CustomObjectsApi(self.api)
        self.core = client.CoreV1Api(self.api)

    def close(self) -> None:
        self.api.close()

    # Reads

    def _get(self, group_version: tuple[str, str], namespace: str, plural: str, name: str) -> dict | None:
        group, version = group_version
        try:
            return self.custom.get_namespaced_custom_object(
                group, version, namespace, plural, name, _request_timeout=REQUEST_TIMEOUT
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def get_vm(self, namespace: str, name: str) -> dict | None:
        return self._get(KUBEVIRT, namespace, "virtualmachines", name)

    def get_vmi(self, namespace: str, name: str) -> dict | None:
        return self._get(KUBEVIRT, namespace, "virtualmachineinstances", name)

    def get_nad(self, namespace: str, name: str) -> dict | None:
        return self._get(MULTUS, namespace, "network-attachment-definitions", name)

    def get_migration(self, namespace: str, name: str) -> dict | None:
        return self._get(KUBEVIRT, namespace, "virtualmachineinstancemigrations", name)

    def list_vms(self) -> list[dict]:
        group, version = KUBEVIRT
        answer = self.custom.list_cluster_custom_object(group, version, "virtualmachines", _request_timeout=REQUEST_TIMEOUT)
        return answer.get("items", [])

    def list_nads(self) -> list[dict]:
        group, version = MULTUS
        answer = self.custom.list_cluster_custom_object(
            group, version, "network-attachment-definitions", _request_timeout=REQUEST_TIMEOUT
        )
        return answer.get("items", [])

    def list_migrations(self, namespace: str, vmi_name: str) -> list[dict]:
        """Return every VMIM of a VMI, from any creator, oldest first."""
        group, version = KUBEVIRT
        answer = self.custom.list_namespaced_custom_object(
            group, version, namespace, "virtualmachineinstancemigrations", _request_timeout=REQUEST_TIMEOUT
        )
        items = [item for item in answer.get("items", []) if item.get("spec", {}).get("vmiName") == vmi_name]
        return sorted(items, key=lambda item: item["metadata"].get("creationTimestamp", ""))

    def list_nodes(self) -> list[dict]:
        answer = self.core.list_node(_request_timeout=REQUEST_TIMEOUT)
        return [self.api.sanitize_for_serialization(node) for node in answer.items]

    def get_kubevirt(self) -> dict | None:
        group, version = KUBEVIRT
        answer = self.custom.list_cluster_custom_object(group, version, "kubevirts", _request_timeout=REQUEST_TIMEOUT)
        items = answer.get("items", [])
        return items[0] if items else None

    # Writes

    def patch_vm(self, namespace: str, name: str, patch: list[dict[str, Any]]) -> dict:
        """Send a JSON patch (RFC 6902) to a VM."""
        group, version = KUBEVIRT
        return self.custom.patch_namespaced_custom_object(
            group,
            version,
            namespace,
            "virtualmachines",
            name,
            patch,
            _content_type="application/json-patch+json",
            _request_timeout=REQUEST_TIMEOUT,
        )

    def create_migration(self, namespace: str, body: dict) -> dict:
        group, version = KUBEVIRT
        return self.custom.create_namespaced_custom_object(
            group, version, namespace, "virtualmachineinstancemigrations", body, _request_timeout=REQUEST_TIMEOUT
        )

    def delete_migration(self, namespace: str, name: str) -> None:
        group, version = KUBEVIRT
        try:
            self.custom.delete_namespaced_custom_object(
                group, version, namespace, "virtualmachineinstancemigrations", name, _request_timeout=REQUEST_TIMEOUT
            )
        except ApiException as error:
            if error.status != 404:
                raise

    def vm_action(self, namespace: str, name: str, action: str) -> None:
        """Call a VM subresource of subresources.kubevirt.io/v1: start, stop or restart."""
        request = self.api.param_serialize(
            method="PUT",
            resource_path=f"/apis/subresources.kubevirt.io/v1/namespaces/{namespace}/virtualmachines/{name}/{action}",
            header_params={"Content-Type": "application/json", "Accept": "application/json"},
            body={},
            auth_settings=["BearerToken"],
        )
        response = self.api.call_api(*request, _request_timeout=REQUEST_TIMEOUT)
        response.read()
        if response.status >= 400:
            raise ApiException.from_response(http_resp=response, body=response.data.decode(errors="replace"), data=None)


def _in_cluster() -> bool:
    import os

    return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
