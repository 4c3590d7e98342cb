"""JSON patch (RFC 6902), JSON merge patch (RFC 7386) and strategic merge patch over plain dicts.

Every function returns a new document and leaves its input unchanged. Errors are `ApiError`s
worded as the apiserver words them: a malformed patch is 400, a patch that cannot be applied
(a failed `test`, a missing path) is 422.
"""

from __future__ import annotations

from typing import Any

from kubevirt_sim.errors import ApiError, bad_request, unprocessable

# Merge keys of the lists that strategic merge patch merges element by element; every other list
# is replaced whole. These are the patchMergeKey tags of the Kubernetes and KubeVirt Go types.
MERGE_KEYS: dict[str, str] = {
    "interfaces": "name",
    "networks": "name",
    "disks": "name",
    "volumes": "name",
    "inputs": "name",
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumeMounts": "mountPath",
    "conditions": "type",
    "ownerReferences": "uid",
    "addresses": "type",
    "taints": "key",
}

# Lists of scalars that strategic merge patch merges as sets (patchStrategy "merge").
MERGED_SCALAR_LISTS = {"finalizers"}


def clone(value: Any) -> Any:
    """Deep-copy a JSON document; faster than `copy.deepcopy` for plain dicts and lists."""
    if isinstance(value, dict):
        return {key: clone(item) for key, item in value.items()}
    if isinstance(value, list):
        return [clone(item) for item in value]
    return value


# --- JSON patch ---------------------------------------------------------------------------------


def _parse_pointer(path: Any) -> list[str]:
    if not isinstance(path, str):
        raise bad_request(f"invalid JSON patch: path must be a string, got {path!r}")
    if path == "":
        return []
    if not path.startswith("/"):
        raise unprocessable(f'JSON pointer must be empty or start with a "/": {path}')
    return [token.replace("~1", "/").replace("~0", "~") for token in path[1:].split("/")]


def _list_index(token: str, container: list, path: str, allow_end: bool) -> int:
    if token == "-" and allow_end:
        return len(container)
    if not token.isdigit() or (token != "0" and token.startswith("0")):
        raise unprocessable(f"invalid array index {token!r} in path {path}")
    index = int(token)
    limit = len(container) if allow_end else len(container) - 1
    if index > limit:
        raise unprocessable(f"array index {index} out of bounds in path {path}")
    return index


def _parent(doc: Any, tokens: list[str], path: str) -> Any:
    node = doc
    for token in tokens[:-1]:
        if isinstance(node, dict):
            if token not in node:
                raise unprocessable(f"doc is missing path: {path}: missing value")
            node = node[token]
        elif isinstance(node, list):
            node = node[_list_index(token, node, path, allow_end=False)]
        else:
            raise unprocessable(f"doc is missing path: {path}: missing value")
    return node


def _get(doc: Any, path: str) -> Any:
    tokens = _parse_pointer(path)
    if not tokens:
        return doc
    parent = _parent(doc, tokens, path)
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise unprocessable(f"doc is missing key: {path}: missing value")
        return parent[last]
    if isinstance(parent, list):
        return parent[_list_index(last, parent, path, allow_end=False)]
    raise unprocessable(f"doc is missing path: {path}: missing value")


def _add(doc: Any, path: str, value: Any) -> Any:
    tokens = _parse_pointer(path)
    if not tokens:
        return value
    parent = _parent(doc, tokens, path)
    last = tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_list_index(last, parent, path, allow_end=True), value)
    else:
        raise unprocessable(f"add operation does not apply: doc is missing path: {path}: missing value")
    return doc


def _remove(doc: Any, path: str, operation: str = "remove") -> Any:
    tokens = _parse_pointer(path)
    if not tokens:
        raise unprocessable(f"{operation} operation does not apply: cannot remove the document root")
    parent = _parent(doc, tokens, path)
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise unprocessable(f"{operation} operation does not apply: doc is missing key: {path}: missing value")
        del parent[last]
    elif isinstance(parent, list):
        del parent[_list_index(last, parent, path, allow_end=False)]
    else:
        raise unprocessable(f"{operation} operation does not apply: doc is missing path: {path}: missing value")
    return doc


def apply_json_patch(doc: dict, operations: Any) -> dict:
    """Apply an RFC 6902 JSON patch, all operations or none.

    Raises 400 for a patch that is not a list of operation objects, 422 when an operation does
    not apply (a failed `test`, a missing path, an index out of bounds).
    """
    if not isinstance(operations, list):
        raise bad_request("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    result = clone(doc)

    for operation in operations:
        if not isinstance(operation, dict):
            raise bad_request(f"invalid JSON patch operation: {operation!r}")
        op = operation.get("op")
        path = operation.get("path")
        if op not in ("add", "remove", "replace", "move", "copy", "test"):
            raise bad_request(f"Unexpected kind: {op}")
        if path is None:
            raise bad_request(f"invalid JSON patch operation {op!r}: missing path")
        if op in ("add", "replace", "test") and "value" not in operation:
            raise bad_request(f"invalid JSON patch operation {op!r} on {path}: missing value")

        if op == "add":
            result = _add(result, path, clone(operation["value"]))
        elif op == "remove":
            result = _remove(result, path)
        elif op == "replace":
            tokens = _parse_pointer(path)
            if tokens:
                _remove(result, path, operation="replace")
            result = _add(result, path, clone(operation["value"]))
        elif op == "test":
            try:
                current = _get(result, path)
            except ApiError:
                raise unprocessable(f"testing value {path} failed: test failed") from None
            if not _json_equal(current, operation["value"]):
                raise unprocessable(f"testing value {path} failed: test failed")
        else:
            source = operation.get("from")
            if source is None:
                raise bad_request(f"invalid JSON patch operation {op!r}: missing from")
            value = clone(_get(result, source))
            if op == "move":
                if path.startswith(source + "/"):
                    raise unprocessable(f"move operation does not apply: {path} is a child of {source}")
                result = _remove(result, source, operation="move")
            result = _add(result, path, value)

    return result


def _json_equal(left: Any, right: Any) -> bool:
    """Compare JSON values: numbers by value (1 equals 1.0), but true never equals 1."""
    if isinstance(left, bool) or isinstance(right, bool):
        return isinstance(left, bool) and isinstance(right, bool) and left == right
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(_json_equal(left[key], right[key]) for key in left)
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(_json_equal(a, b) for a, b in zip(left, right))
    if isinstance(left, (int, float)) and isinstance(right, (int, float)):
        return left == right
    return type(left) is type(right) and left == right


# --- JSON merge patch ---------------------------------------------------------------------------


def apply_merge_patch(doc: Any, patch: Any) -> Any:
    """Apply an RFC 7386 JSON merge patch: objects merge, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return clone(patch)
    result = clone(doc) if isinstance(doc, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply_merge_patch(result.get(key), value)
    return result


# --- strategic merge patch ----------------------------------------------------------------------


def apply_strategic_merge_patch(doc: Any, patch: Any) -> Any:
    """Apply a strategic merge patch.

    Lists named in MERGE_KEYS merge element by element on their key. An element carrying
    `$patch: delete` removes the element with that key, and an element `{"$patch": "replace"}`
    makes the list replace the old one. A map carrying `$patch: replace` replaces the old map,
    `$patch: delete` removes it. `$setElementOrder/<list>` reorders a merged list and
    `$deleteFromPrimitiveList/<list>` removes scalars from a list. Other lists are replaced.
    """
    if not isinstance(patch, dict):
        raise bad_request("strategic merge patch must be a JSON object")
    return _merge_map(doc if isinstance(doc, dict) else {}, patch)


def _merge_map(original: dict, patch: dict) -> dict | None:
    directive = patch.get("$patch")
    if directive == "delete":
        return None
    if directive == "replace":
        return {key: clone(value) for key, value in patch.items() if key != "$patch"}
    if directive not in (None, "merge"):
        raise bad_request(f"Unknown patch type: {directive}")

    result = clone(original)
    orders: dict[str, list] = {}
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys"):
            continue
        if key.startswith("$setElementOrder/"):
            orders[key.split("/", 1)[1]] = value
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            if isinstance(result.get(field), list) and isinstance(value, list):
                result[field] = [item for item in result[field] if item not in value]
            continue

        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            merged = _merge_map(result.get(key) if isinstance(result.get(key), dict) else {}, value)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        elif isinstance(value, list) and key in MERGE_KEYS:
            result[key] = _merge_keyed_list(result.get(key) or [], value, MERGE_KEYS[key], key)
        elif isinstance(value, list) and key in MERGED_SCALAR_LISTS:
            merged_list = list(result.get(key) or [])
            merged_list.extend(item for item in value if item not in merged_list)
            result[key] = merged_list
        else:
            result[key] = clone(value)

    for field, order in orders.items():
        if field in MERGE_KEYS and isinstance(result.get(field), list):
            result[field] = _reorder(result[field], order, MERGE_KEYS[field])
    return result


def _merge_keyed_list(original: list, patch: list, merge_key: str, field: str) -> list:
    if any(isinstance(item, dict) and item.get("$patch") == "replace" for item in patch):
        return [clone(item) for item in patch if not (isinstance(item, dict) and item.get("$patch") == "replace")]

    result = [clone(item) for item in original]
    for item in patch:
        if not isinstance(item, dict):
            raise bad_request(f"strategic merge patch: {field} items must be objects keyed by {merge_key}")
        if merge_key not in item:
            raise bad_request(f"map: {item} does not contain declared merge key: {merge_key}")
        key_value = item[merge_key]
        position = next(
            (index for index, existing in enumerate(result)
             if isinstance(existing, dict) and existing.get(merge_key) == key_value),
            None,
        )
        if item.get("$patch") == "delete":
            if position is not None:
                del result[position]
            continue
        if position is None:
            result.append({key: clone(value) for key, value in item.items() if key != "$patch"})
        else:
            merged = _merge_map(result[position], item)
            if merged is None:
                del result[position]
            else:
                result[position] = merged
    return result


def _reorder(items: list, order: list, merge_key: str) -> list:
    rank = {entry.get(merge_key): index for index, entry in enumerate(order) if isinstance(entry, dict)}
    ordered = sorted(
        (item for item in items if isinstance(item, dict) and item.get(merge_key) in rank),
        key=lambda item: rank[item.get(merge_key)],
    )
    rest = [item for item in items if not (isinstance(item, dict) and item.get(merge_key) in rank)]
    return ordered + rest


def apply_patch(doc: dict, patch_type: str, patch: Any) -> dict:
    """Apply a patch of type 'json', 'merge' or 'strategic'; 400 for an unknown type."""
    if patch_type == "json":
        return apply_json_patch(doc, patch)
    if patch_type == "merge":
        if not isinstance(patch, dict):
            raise bad_request("merge patch must be a JSON object")
        return apply_merge_patch(doc, patch)
    if patch_type == "strategic":
        return apply_strategic_merge_patch(doc, patch)
    raise bad_request(f"unsupported patch type {patch_type!r}: expected 'json', 'merge' or 'strategic'")


__all__ = ["apply_json_patch", "apply_merge_patch", "apply_strategic_merge_patch", "apply_patch", "clone"]
