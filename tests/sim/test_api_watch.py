"""Watch through the official client: order, resourceVersion, selectors and expired history."""

from __future__ import annotations

import http.client
import threading
import time

from kubernetes import watch
from kubernetes.client import CustomObjectsApi

from kubevirt_sim.clock import Clock
from kubevirt_sim.store import Store

KUBEVIRT = ("kubevirt.io", "v1")


def migration(name: str, labels: dict | None = None) -> dict:
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstanceMigration",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"vmiName": "web-01"},
    }


def collect(custom: CustomObjectsApi, plural: str, **kwargs) -> list[dict]:
    stream = watch.Watch().stream(
        custom.list_namespaced_custom_object, *KUBEVIRT, "default", plural, timeout_seconds=1, **kwargs
    )
    return [{"type": event["type"], "object": event["object"]} for event in stream]


def test_watch_from_resource_version_in_order(custom):
    listed = custom.list_namespaced_custom_object(*KUBEVIRT, "default", "virtualmachineinstancemigrations")
    start = listed["metadata"]["resourceVersion"]
    custom.create_namespaced_custom_object(*KUBEVIRT, "default", "virtualmachineinstancemigrations", migration("m1"))
    custom.patch_namespaced_custom_object(
        *KUBEVIRT, "default", "virtualmachineinstancemigrations", "m1", {"metadata": {"labels": {"a": "b"}}}
    )
    custom.delete_namespaced_custom_object(*KUBEVIRT, "default", "virtualmachineinstancemigrations", "m1")

    events = collect(custom, "virtualmachineinstancemigrations", resource_version=start)
    versions = [int(event["object"]["metadata"]["resourceVersion"]) for event in events]

    assert [event["type"] for event in events] == ["ADDED", "MODIFIED", "DELETED"]
    assert [event["object"]["metadata"]["name"] for event in events] == ["m1", "m1", "m1"]
    assert versions == sorted(versions)
    assert versions[0] > int(start)


def test_watch_without_resource_version_lists_first(custom):
    events = collect(custom, "virtualmachines")

    assert [event["type"] for event in events] == ["ADDED", "ADDED", "ADDED"]
    assert sorted(event["object"]["metadata"]["name"] for event in events) == ["db-legacy", "rke2-pool1-abcde", "web-01"]


def test_watch_label_selector_sees_object_leave(custom):
    custom.create_namespaced_custom_object(
        *KUBEVIRT, "default", "virtualmachineinstancemigrations", migration("m2", {"role": "hotplug"})
    )
    start = custom.list_namespaced_custom_object(*KUBEVIRT, "default", "virtualmachineinstancemigrations")
    custom.patch_namespaced_custom_object(
        *KUBEVIRT, "default", "virtualmachineinstancemigrations", "m2", {"metadata": {"labels": {"role": "other"}}}
    )

    events = collect(
        custom, "virtualmachineinstancemigrations",
        resource_version=start["metadata"]["resourceVersion"], label_selector="role=hotplug",
    )

    assert [event["type"] for event in events] == ["DELETED"]


def test_watch_field_selector_filters_names(custom):
    start = custom.list_namespaced_custom_object(*KUBEVIRT, "default", "virtualmachines")["metadata"]["resourceVersion"]
    for name in ("web-01", "db-legacy"):
        custom.patch_namespaced_custom_object(
            *KUBEVIRT, "default", "virtualmachines", name, {"metadata": {"labels": {"seen": "yes"}}}
        )

    events = collect(custom, "virtualmachines", resource_version=start, field_selector="metadata.name=db-legacy")

    assert [event["object"]["metadata"]["name"] for event in events] == ["db-legacy"]


def test_store_watch_too_old_is_410():
    store = Store(Clock(), history=2)
    for index in range(4):
        store.create("nodes", None, {"metadata": {"name": f"node-{index}"}}, actor="test")

    events = list(store.watch("nodes", resource_version="1", timeout_seconds=0.1))

    assert events[0]["type"] == "ERROR"
    assert events[0]["object"]["code"] == 410
    assert events[0]["object"]["reason"] == "Expired"


def test_store_subscribers_see_commit_order():
    store = Store(Clock())
    seen: list[tuple[str, str, str | None]] = []

    def remember(event_type, plural, old, new):
        seen.append((event_type, new["metadata"]["name"], old and old["metadata"]["resourceVersion"]))
        if new["metadata"]["name"] == "a" and event_type == "ADDED":
            store.create("nodes", None, {"metadata": {"name": "b"}}, actor="callback")

    store.subscribe(remember)
    store.create("nodes", None, {"metadata": {"name": "a"}}, actor="test")
    store.patch("nodes", None, "a", "merge", {"metadata": {"labels": {"x": "y"}}}, actor="test")

    assert seen == [("ADDED", "a", None), ("ADDED", "b", None), ("MODIFIED", "a", "1")]


def test_watch_ends_when_client_leaves(sim):
    before = threading.active_count()
    connection = http.client.HTTPConnection("127.0.0.1", int(sim.url.rsplit(":", 1)[1]))
    connection.request(
        "GET", "/apis/kubevirt.io/v1/namespaces/default/virtualmachines?watch=true&resourceVersion=1&timeoutSeconds=600"
    )
    response = connection.getresponse()
    assert response.status == 200
    during = threading.active_count()
    connection.close()

    # The server notices the closed socket on its next idle check, about twice a second.
    for _ in range(50):
        if threading.active_count() < during:
            break
        time.sleep(0.1)

    assert during > before
    assert threading.active_count() < during


def test_store_mutate_retries_on_conflict():
    store = Store(Clock())
    store.create("nodes", None, {"metadata": {"name": "node-1"}}, actor="test")
    attempts = []

    def add_label(node: dict) -> None:
        attempts.append(node["metadata"]["resourceVersion"])
        if len(attempts) == 1:
            # A concurrent writer lands between this read and its write.
            store.patch("nodes", None, "node-1", "merge", {"metadata": {"labels": {"other": "1"}}}, actor="other")
        node["metadata"].setdefault("labels", {})["mine"] = "1"

    result = store.mutate("nodes", None, "node-1", add_label, actor="controller")

    assert len(attempts) == 2
    assert result["metadata"]["labels"] == {"other": "1", "mine": "1"}


def test_store_mutate_missing_object_is_none():
    store = Store(Clock())

    assert store.mutate("nodes", None, "node-9", lambda node: None, actor="controller") is None


def test_watch_cluster_scoped_nodes(core):
    start = core.list_node().metadata.resource_version
    core.patch_node("node-3", {"spec": {"unschedulable": True}})

    events = list(watch.Watch().stream(core.list_node, resource_version=start, timeout_seconds=1))

    assert [(event["type"], event["object"].metadata.name) for event in events] == [("MODIFIED", "node-3")]
    assert events[0]["object"].spec.unschedulable is True
