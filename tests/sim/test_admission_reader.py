"""DictReader, the in-memory object view that the webhook rules are tested with."""

from __future__ import annotations

import pytest

from kubevirt_sim.admission import DictReader


def migration(name: str, vmi_name: str, namespace: str = "default") -> dict:
    return {
        "metadata": {"name": name, "namespace": namespace, "labels": {"kubevirt.io/vmi-name": vmi_name}},
        "spec": {"vmiName": vmi_name},
    }


@pytest.fixture
def reader() -> DictReader:
    return DictReader(
        [
            ("virtualmachineinstancemigrations", migration("web-01-a", "web-01")),
            ("virtualmachineinstancemigrations", migration("db-01-a", "db-01")),
            ("virtualmachineinstancemigrations", migration("web-01-b", "web-01", namespace="tenant-a")),
        ]
    )


def test_get_existing(reader: DictReader) -> None:
    found = reader.try_get("virtualmachineinstancemigrations", "default", "web-01-a")
    assert found is not None
    assert found["spec"]["vmiName"] == "web-01"


def test_get_missing(reader: DictReader) -> None:
    assert reader.try_get("virtualmachineinstancemigrations", "default", "web-01-b") is None


def test_get_returns_copy(reader: DictReader) -> None:
    reader.try_get("virtualmachineinstancemigrations", "default", "web-01-a")["spec"]["vmiName"] = "changed"
    assert reader.try_get("virtualmachineinstancemigrations", "default", "web-01-a")["spec"]["vmiName"] == "web-01"


def test_add_replaces_same_name(reader: DictReader) -> None:
    reader.add("virtualmachineinstancemigrations", migration("web-01-a", "other"))
    items, _ = reader.list("virtualmachineinstancemigrations", "default")
    assert [item["spec"]["vmiName"] for item in items] == ["db-01", "other"]


def test_list_by_namespace(reader: DictReader) -> None:
    items, _ = reader.list("virtualmachineinstancemigrations", "tenant-a")
    assert [item["metadata"]["name"] for item in items] == ["web-01-b"]


def test_list_by_label(reader: DictReader) -> None:
    items, _ = reader.list("virtualmachineinstancemigrations", label_selector="kubevirt.io/vmi-name=web-01")
    assert [item["metadata"]["name"] for item in items] == ["web-01-a", "web-01-b"]


@pytest.mark.parametrize("selector", ["kubevirt.io/vmi-name!=web-01", "kubevirt.io/vmi-name in (web-01)", "kubevirt.io/vmi-name"])
def test_list_unsupported_selector(reader: DictReader, selector: str) -> None:
    with pytest.raises(ValueError):
        reader.list("virtualmachineinstancemigrations", label_selector=selector)


def test_list_field_selector_rejected(reader: DictReader) -> None:
    with pytest.raises(ValueError):
        reader.list("virtualmachineinstancemigrations", field_selector="metadata.name=web-01-a")
