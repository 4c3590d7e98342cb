"""Errors the ledger raises; callers in activities map them to retryable or not."""

from __future__ import annotations


class LedgerError(Exception):
    """Base class of the ledger's own errors. Database errors pass through as SQLAlchemy's."""


class SchemaNotUpgradedError(LedgerError):
    """The database has no ledger schema, or one at another revision than this nicflow expects."""


class OperationNotFoundError(LedgerError, LookupError):
    """No operation has the given id."""


class LedgerConflictError(LedgerError):
    """A write that contradicts what is stored, such as an idempotency key reused for another event."""


class ProjectionError(LedgerConflictError, ValueError):
    """An event that cannot apply to its operation's row, such as a second result."""
