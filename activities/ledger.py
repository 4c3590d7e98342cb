"""Activities that write the ledger. Every write carries an idempotency key, so a retry adds nothing."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from nicflow.contracts import FinishOperationInput, OpenOperationInput, OpenOperationResult, RecordStepInput
from nicflow.ledger import Ledger
from activities.cluster import log_attempt
from nicflow.models import OperationResult, OperationStatus, Step

logger = logging.getLogger(__name__)

T = TypeVar("T")


def ledger_call(function: Callable[..., T]) -> Callable[..., T]:
    """Turn a database outage into a short retryable error that Temporal shows as it is.

    SQLAlchemy's exception chain runs to several KB, and the Temporal server replaces failures
    over 4 KB with "Failure exceeds size limit", hiding the reason from `temporal workflow describe`.
    """

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return function(*args, **kwargs)
        except (DBAPIError, PoolTimeoutError) as error:
            reason = getattr(error, "orig", None) or error
            info = activity.info()
            logger.warning("ledger unavailable in %s for %s (attempt %d), will retry: %s",
                           function.__name__, info.workflow_id, info.attempt, reason)
            raise ApplicationError(f"ledger unavailable: {reason}", type="LedgerUnavailable") from None

    return wrapper


class LedgerActivities:
    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    @activity.defn(name="open_operation")
    @ledger_call
    def open_operation(self, request: OpenOperationInput) -> OpenOperationResult:
        """Record a new operation, or return the first result of a request id seen before."""
        log_attempt("open_operation")
        fields = request.fields
        operation_id = fields["operation_id"]
        row, created = self._ledger.open_operation(fields, idempotency_key=f"{operation_id}:request")
        if created or row.operation_id == operation_id:
            logger.info("operation %s opened for request %s", operation_id, fields["request_id"])
            return OpenOperationResult(created=True, operation_id=operation_id, status=OperationStatus.RUNNING)

        previous = None
        for event in self._ledger.list_events(row.operation_id):
            if event.step == Step.RESULT and "result" in event.details:
                previous = OperationResult.model_validate(event.details["result"])
        logger.info(
            "request %s replayed: operation %s already has status %s", fields["request_id"], row.operation_id, row.status
        )
        return OpenOperationResult(
            created=False, operation_id=row.operation_id, status=OperationStatus(row.status), previous_result=previous
        )

    @activity.defn(name="record_step")
    @ledger_call
    def record_step(self, request: RecordStepInput) -> None:
        log_attempt(f"record_step {request.step}/{request.outcome}")
        details = {"message": request.message, **request.details}
        self._ledger.append_event(
            request.operation_id,
            str(request.step),
            str(request.outcome),
            details,
            idempotency_key=f"{request.operation_id}:{request.sequence}:{request.step}:{request.outcome}",
        )

    @activity.defn(name="finish_operation")
    @ledger_call
    def finish_operation(self, request: FinishOperationInput) -> None:
        log_attempt("finish_operation")
        result = request.result
        self._ledger.finish_operation(
            result.operation_id,
            str(result.status),
            result.reason_code,
            result.message,
            {"result": result.model_dump(mode="json")},
            idempotency_key=f"{result.operation_id}:result",
        )
        # Once the operation ends, its MAC is either in the VM spec, where the in-use check finds
        # it, or nowhere, so the reservation has done its job in both cases.
        self._ledger.release_macs(result.operation_id)
        logger.info("operation %s finished %s: %s", result.operation_id, result.status, result.message)
