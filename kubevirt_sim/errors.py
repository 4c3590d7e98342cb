"""Kubernetes API errors as the apiserver returns them: an HTTP code, a reason and a v1 Status body."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error returned to an API client as a Kubernetes v1 `Status` object.

    `details` is the Status `details` field (name, group, kind, causes, retryAfterSeconds) or None.
    """

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> dict[str, Any]:
        """Build the v1 Status body that the apiserver sends with this error."""
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            body["details"] = self.details
        return body

    def __repr__(self) -> str:
        return f"ApiError({self.code}, {self.reason!r}, {self.message!r})"


def _qualified(plural: str, group: str) -> str:
    return f"{plural}.{group}" if group else plural


def _details(plural: str, group: str, name: str) -> dict[str, Any]:
    details: dict[str, Any] = {"name": name, "kind": plural}
    if group:
        details["group"] = group
    return details


def not_found(plural: str, group: str, name: str) -> ApiError:
    """404 NotFound for one named object."""
    return ApiError(404, "NotFound", f'{_qualified(plural, group)} "{name}" not found', _details(plural, group, name))


def already_exists(plural: str, group: str, name: str) -> ApiError:
    """409 AlreadyExists for a create whose name is taken."""
    return ApiError(
        409, "AlreadyExists", f'{_qualified(plural, group)} "{name}" already exists', _details(plural, group, name)
    )


CONFLICT_MESSAGE = "the object has been modified; please apply your changes to the latest version and try again"


def conflict(plural: str, group: str, name: str, message: str = CONFLICT_MESSAGE) -> ApiError:
    """409 Conflict, worded as the apiserver words a stale resourceVersion."""
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {_qualified(plural, group)} "{name}": {message}',
        _details(plural, group, name),
    )


_CAUSE_REASONS = (
    ("Required value", "FieldValueRequired"),
    ("Unsupported value", "FieldValueNotSupported"),
    ("Forbidden", "FieldValueForbidden"),
    ("Duplicate value", "FieldValueDuplicate"),
    ("Not found", "FieldValueNotFound"),
)


def _cause_reason(message: str) -> str:
    """Pick the StatusCause reason that the apiserver pairs with a field error message."""
    for prefix, reason in _CAUSE_REASONS:
        if message.startswith(prefix):
            return reason
    if " in body must be of type " in message:
        return "FieldValueTypeInvalid"
    return "FieldValueInvalid"


def invalid(kind: str, name: str, causes: list[tuple[str, str]], group: str = "") -> ApiError:
    """422 Invalid with one cause per (field, message); the message lists them as the apiserver does."""
    qualified = f"{kind}.{group}" if group else kind
    rendered = [f"{field}: {message}" if field else message for field, message in causes]
    if len(rendered) == 1:
        summary = rendered[0]
    else:
        summary = "[" + ", ".join(rendered) + "]"
    details: dict[str, Any] = {
        "name": name,
        "kind": kind,
        "causes": [{"reason": _cause_reason(message), "message": message, "field": field} for field, message in causes],
    }
    if group:
        details["group"] = group
    return ApiError(422, "Invalid", f'{qualified} "{name}" is invalid: {summary}', details)


def unprocessable(message: str) -> ApiError:
    """422 Invalid for a JSON patch that cannot be applied, as the apiserver reports it.

    The apiserver wraps the patch library's message in a generic Status whose only cause carries it.
    """
    return ApiError(
        422,
        "Invalid",
        "the server rejected our request due to an error in our request",
        {"causes": [{"reason": "UnexpectedServerResponse", "message": message}]},
    )


def bad_request(message: str) -> ApiError:
    """400 BadRequest."""
    return ApiError(400, "BadRequest", message)


def too_many_requests(message: str, retry_after_seconds: int = 1) -> ApiError:
    """429 TooManyRequests; the server adds a `Retry-After` header from `details.retryAfterSeconds`."""
    return ApiError(429, "TooManyRequests", message, {"retryAfterSeconds": retry_after_seconds})


def internal_error(message: str) -> ApiError:
    """500 InternalError."""
    return ApiError(
        500,
        "InternalError",
        f"Internal error occurred: {message}",
        {"causes": [{"message": message}]},
    )


def method_not_allowed(message: str) -> ApiError:
    """405 MethodNotAllowed."""
    return ApiError(405, "MethodNotAllowed", message)


def gone(message: str) -> ApiError:
    """410 Expired, sent for a watch from a resourceVersion older than the kept history."""
    return ApiError(410, "Expired", message)


def admission_denied(webhook: str, message: str, code: int = 422, causes: list[dict[str, str]] | None = None) -> ApiError:
    """Build a webhook denial, with reason Invalid for 422 and BadRequest for 400."""
    reasons = {400: "BadRequest", 403: "Forbidden", 404: "NotFound", 409: "Conflict", 422: "Invalid", 500: "InternalError"}
    details = {"causes": causes} if causes else None
    return ApiError(
        code,
        reasons.get(code, "BadRequest"),
        f'admission webhook "{webhook}" denied the request: {message}',
        details,
    )


def from_code(code: int, message: str) -> ApiError:
    """Build an error for an arbitrary HTTP code, with the reason the apiserver pairs with it."""
    reasons = {
        400: "BadRequest",
        401: "Unauthorized",
        403: "Forbidden",
        404: "NotFound",
        405: "MethodNotAllowed",
        409: "Conflict",
        410: "Expired",
        422: "Invalid",
        429: "TooManyRequests",
        500: "InternalError",
        503: "ServiceUnavailable",
        504: "Timeout",
    }
    details: dict[str, Any] | None = None
    if code == 429:
        details = {"retryAfterSeconds": 1}
    return ApiError(code, reasons.get(code, "Unknown"), message, details)
