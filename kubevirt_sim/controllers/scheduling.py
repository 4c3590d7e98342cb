"""Pure node selection: which nodes a virt-launcher pod may run on."""

from __future__ import annotations

from kubevirt_sim.controllers.objects import dig, find_condition, labels_of

SCHEDULABLE_LABEL = "kubevirt.io/schedulable"


def _expression_matches(expression: dict, labels: dict[str, str]) -> bool:
    key = expression.get("key", "")
    operator = expression.get("operator", "")
    values = expression.get("values") or []
    if operator == "In":
        return key in labels and labels[key] in values
    if operator == "NotIn":
        return key not in labels or labels[key] not in values
    if operator == "Exists":
        return key in labels
    if operator == "DoesNotExist":
        return key not in labels
    if operator in ("Gt", "Lt") and key in labels and values:
        try:
            actual, bound = int(labels[key]), int(values[0])
        except ValueError:
            return False
        return actual > bound if operator == "Gt" else actual < bound
    return False


def _term_matches(term: dict, node: dict) -> bool:
    labels = labels_of(node)
    fields = {"metadata.name": node.get("metadata", {}).get("name", "")}
    expressions = term.get("matchExpressions") or []
    field_expressions = term.get("matchFields") or []
    if not expressions and not field_expressions:
        return False
    return (all(_expression_matches(e, labels) for e in expressions)
            and all(_expression_matches(e, fields) for e in field_expressions))


def node_matches(spec: dict, node: dict) -> bool:
    """Tell whether a node satisfies a VMI or pod spec's nodeSelector and required node affinity."""
    labels = labels_of(node)
    for key, value in (spec.get("nodeSelector") or {}).items():
        if labels.get(key) != value:
            return False

    terms = dig(spec, "affinity", "nodeAffinity", "requiredDuringSchedulingIgnoredDuringExecution", "nodeSelectorTerms")
    if terms:
        return any(_term_matches(term, node) for term in terms)
    return True


def node_is_ready(node: dict, override: bool | None = None) -> bool:
    """Tell whether a node is Ready; a node with no Ready condition counts as Ready."""
    if override is not None:
        return override
    condition = find_condition(node, "Ready")
    return condition is None or condition.get("status") == "True"


def node_is_schedulable(node: dict) -> bool:
    """Tell whether KubeVirt may place VMs on a node: labelled schedulable and not cordoned."""
    if labels_of(node).get(SCHEDULABLE_LABEL) != "true":
        return False
    return not node.get("spec", {}).get("unschedulable", False)


def candidate_nodes(spec: dict, nodes: list[dict], exclude: str | None = None,
                    ready_overrides: dict[str, bool | None] | None = None) -> list[str]:
    """Return the names, sorted, of the Ready schedulable nodes that satisfy the spec, leaving out `exclude`."""
    overrides = ready_overrides or {}
    names = []
    for node in nodes:
        name = node.get("metadata", {}).get("name", "")
        if name == exclude:
            continue
        if not node_is_ready(node, overrides.get(name)) or not node_is_schedulable(node):
            continue
        if node_matches(spec, node):
            names.append(name)
    return sorted(names)


def node_subnet(node_name: str, nodes: list[dict]) -> str:
    """Return the pod subnet prefix of a node ('10.52.<n>', n its 1-based position by name)."""
    names = sorted(n.get("metadata", {}).get("name", "") for n in nodes)
    index = names.index(node_name) + 1 if node_name in names else len(names) + 1
    return f"10.52.{index}"


def node_address(node: dict, nodes: list[dict]) -> str:
    """Return a node's InternalIP, or '<subnet>.7' when the node object lists no address."""
    for address in node.get("status", {}).get("addresses") or []:
        if address.get("type") == "InternalIP" and address.get("address"):
            return address["address"]
    return node_subnet(node.get("metadata", {}).get("name", ""), nodes) + ".7"
