"""Concurrent clients: optimistic concurrency loses no update, and a watch receives every version in order."""

from __future__ import annotations

import threading
from pathlib import Path

import kubernetes
from kubernetes import watch
from kubernetes.client import CustomObjectsApi
from kubernetes.client.rest import ApiException

KUBEVIRT = ("kubevirt.io", "v1")
WRITERS = 6
INCREMENTS = 15


def increment_counter(kubeconfig: Path) -> None:
    """Add 1 to the VM's counter annotation INCREMENTS times with read-modify-write and retries."""
    client = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
    custom = CustomObjectsApi(client)
    for _ in range(INCREMENTS):
        while True:
            vm = custom.get_namespaced_custom_object(*KUBEVIRT, "default", "virtualmachines", "web-01")
            annotations = vm["metadata"].setdefault("annotations", {})
            annotations["counter"] = str(int(annotations.get("counter", "0")) + 1)
            try:
                custom.replace_namespaced_custom_object(*KUBEVIRT, "default", "virtualmachines", "web-01", vm)
                break
            except ApiException as error:
                if error.status != 409:
                    raise
    client.close()


def test_concurrent_updates_lose_nothing(sim, kubeconfig, custom):
    start = custom.get_namespaced_custom_object(*KUBEVIRT, "default", "virtualmachines", "web-01")
    writers = [threading.Thread(target=increment_counter, args=(kubeconfig,)) for _ in range(WRITERS)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()

    final = custom.get_namespaced_custom_object(*KUBEVIRT, "default", "virtualmachines", "web-01")
    events = list(watch.Watch().stream(
        custom.list_namespaced_custom_object, *KUBEVIRT, "default", "virtualmachines",
        resource_version=start["metadata"]["resourceVersion"], field_selector="metadata.name=web-01",
        timeout_seconds=1,
    ))
    counters = [int(event["object"]["metadata"]["annotations"]["counter"]) for event in events]
    versions = [int(event["object"]["metadata"]["resourceVersion"]) for event in events]

    assert final["metadata"]["annotations"]["counter"] == str(WRITERS * INCREMENTS)
    assert counters == list(range(1, WRITERS * INCREMENTS + 1))
    assert versions == sorted(versions)
    assert len(set(versions)) == len(versions)
