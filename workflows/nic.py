"""The HotplugNic and UnplugNic workflows: validate, backfill, patch, migrate, verify, with undo.

Deterministic code only: every read or write of the cluster or the ledger is an activity.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.workflow import ActivityCancellationType
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError

with workflow.unsafe.imports_passed_through():
    from nicflow.contracts import (
        BackfillInput,
        FinishOperationInput,
        MigrateInput,
        MigrateResult,
        OpenOperationInput,
        OpenOperationResult,
        OperationRef,
        RecordStepInput,
        StepResult,
        UndoInput,
        ValidateResult,
        VerifyInput,
        VerifyResult,
    )
    from nicflow.models import (
        HotplugRequest,
        Mode,
        NicRequest,
        OperationKind,
        OperationResult,
        OperationStatus,
        Outcome,
        Progress,
        Step,
        StepReport,
        UnplugRequest,
    )
    from nicflow.macs import normalize_mac
    from workflows import policies


class StepFailed(Exception):
    """A step after the spec patch failed; the undo runs next."""

    def __init__(self, step: Step, message: str, reason_code: str) -> None:
        super().__init__(message)
        self.step = step
        self.message = message
        self.reason_code = reason_code


def _failure_message(error: BaseException) -> str:
    cause = error.cause if isinstance(error, ActivityError) and error.cause else error
    return str(cause) or type(cause).__name__


def _requested_mac(request: NicRequest) -> str | None:
    """Return the requested MAC in normal form for the ledger, or None when absent or invalid.

    An invalid MAC is rejected by validate, whose ledger event names it.
    """
    mac = getattr(request, "mac", None)
    if not mac:
        return None
    try:
        return normalize_mac(mac)
    except ValueError:
        return None


def _raise_if_cancelled(error: ActivityError) -> None:
    """Turn an activity that ended because the workflow was cancelled back into a cancellation."""
    if isinstance(error.cause, CancelledError):
        raise asyncio.CancelledError() from error


def _failure_type(error: BaseException) -> str:
    cause = error.cause if isinstance(error, ActivityError) else error
    if isinstance(cause, ApplicationError) and cause.type:
        return cause.type
    return type(cause).__name__


def _failure_details(error: BaseException) -> dict[str, Any]:
    """Return the ledger details of a failed activity: its error type, plus the HTTP code and
    reason when the Kubernetes API rejected a call."""
    details: dict[str, Any] = {"error_type": _failure_type(error)}
    cause = error.cause if isinstance(error, ActivityError) else error
    if isinstance(cause, ApplicationError) and cause.details and isinstance(cause.details[0], dict):
        api_error = cause.details[0]
        if "code" in api_error:
            details["http_code"] = api_error["code"]
            details["http_reason"] = api_error.get("reason")
    return details


class NicWorkflow:
    """Steps shared by hot-plug and unplug; the subclasses differ only in their request type."""

    kind: OperationKind

    def __init__(self) -> None:
        self._progress: Progress | None = None
        self._sequence = 0
        self._patch_started = False
        self._validation: ValidateResult | None = None

    @workflow.query(name="progress")
    def progress(self) -> Progress | None:
        return self._progress

    async def _activity(self, name: str, argument: Any, result_type: type, policy: policies.ActivityPolicy) -> Any:
        return await workflow.execute_activity(name, argument, result_type=result_type, **policy.options())

    async def _record(self, step: Step, outcome: Outcome, message: str, started: Any, details: dict | None = None) -> None:
        """Append a step transition to the progress and to the ledger."""
        assert self._progress is not None
        duration = (workflow.now() - started).total_seconds()
        report = StepReport(step=step, outcome=outcome, message=message, duration_seconds=duration, details=details or {})
        self._progress.steps.append(report)
        self._sequence += 1
        workflow.logger.info(
            "step %s %s: %s (operation=%s vm=%s interface=%s)",
            step, outcome, message, self._progress.operation_id, self._progress.vm, self._progress.interface,
        )
        await self._activity(
            "record_step",
            RecordStepInput(
                operation_id=self._progress.operation_id,
                sequence=self._sequence,
                step=step,
                outcome=outcome,
                message=message,
                details={"duration_seconds": duration, **(details or {})},
            ),
            type(None),
            policies.LEDGER,
        )

    async def _finish(self, request: NicRequest, status: OperationStatus, message: str, *, mode: Mode = Mode.LIVE,
                      reason_code: str | None = None, mac: str | None = None, guest_name: str | None = None,
                      warnings: list[str] | None = None) -> OperationResult:
        assert self._progress is not None
        result = OperationResult(
            operation_id=request.operation_id,
            request_id=request.request_id,
            kind=self.kind,
            vm=request.vm,
            interface=request.interface,
            network=getattr(request, "network", None),
            mac=mac,
            mode=mode,
            status=status,
            reason_code=reason_code,
            message=message,
            guest_interface_name=guest_name,
            warnings=warnings or [],
            steps=list(self._progress.steps),
        )
        await self._activity("finish_operation", FinishOperationInput(result=result), type(None), policies.LEDGER)
        self._progress.status = status
        self._progress.current_step = None
        self._progress.result = result
        workflow.logger.info("operation %s ended %s: %s", request.operation_id, status, message)
        return result

    async def _execute(self, request: NicRequest) -> OperationResult:
        started = workflow.now()
        info = workflow.info()
        network = getattr(request, "network", None)
        self._progress = Progress(
            operation_id=request.operation_id,
            request_id=request.request_id,
            kind=self.kind,
            vm=request.vm,
            interface=request.interface,
            status=OperationStatus.RUNNING,
            current_step=Step.REQUEST,
        )
        workflow.logger.info(
            "operation %s started: %s vm=%s interface=%s", request.operation_id, self.kind, request.vm, request.interface
        )

        # Open the ledger record; a request id seen before returns its first result unchanged.
        opened: OpenOperationResult = await self._activity(
            "open_operation",
            OpenOperationInput(
                fields={
                    "operation_id": request.operation_id,
                    "request_id": request.request_id,
                    "kind": str(self.kind),
                    "actor": request.actor,
                    "reason": request.reason,
                    "vm_namespace": request.vm_namespace,
                    "vm_name": request.vm_name,
                    "network": network,
                    "interface": request.interface,
                    "mac": _requested_mac(request),
                    "mode": str(Mode.LIVE),
                    "workflow_id": info.workflow_id,
                    "run_id": info.run_id,
                }
            ),
            OpenOperationResult,
            policies.LEDGER,
        )
        if not opened.created:
            return self._replayed(request, opened)
        self._progress.steps.append(
            StepReport(step=Step.REQUEST, outcome=Outcome.STARTED, message=f"request {request.request_id} by {request.actor}: {request.reason}")
        )

        ref = OperationRef(
            operation_id=request.operation_id,
            kind=self.kind,
            vm_namespace=request.vm_namespace,
            vm_name=request.vm_name,
            interface=request.interface,
            network=network,
            mac=getattr(request, "mac", None),
            allow_restart=request.allow_restart,
        )
        try:
            result = await self._run_steps(request, ref)
        except (asyncio.CancelledError, CancelledError) as error:
            if self._patch_started and self._validation is not None:
                return await self._undo(request, ref, self._validation, error)
            message = "the operation was cancelled before the VM spec changed; nothing to undo"
            await asyncio.shield(self._record(Step.UNDO, Outcome.SKIPPED, message, workflow.now()))
            return await asyncio.shield(
                self._finish(request, OperationStatus.CANCELLED, message, reason_code="CANCELLED", mac=ref.mac)
            )
        workflow.logger.info("operation %s took %.1f s", request.operation_id, (workflow.now() - started).total_seconds())
        return result

    async def _run_steps(self, request: NicRequest, ref: OperationRef) -> OperationResult:
        # Step 1: validate every rule before anything changes.
        self._progress.current_step = Step.VALIDATE
        step_started = workflow.now()
        try:
            validation: ValidateResult = await self._activity("validate", ref, ValidateResult, policies.VALIDATE)
        except ActivityError as error:
            _raise_if_cancelled(error)
            message = f"validation failed: {_failure_message(error)}"
            await self._record(Step.VALIDATE, Outcome.FAILED, message, step_started, _failure_details(error))
            return await self._finish(request, OperationStatus.FAILED, message, reason_code="VALIDATE_FAILED")
        verdicts = {"verdicts": [v.model_dump() for v in validation.verdicts]}
        if validation.rejected:
            await self._record(Step.VALIDATE, Outcome.REJECTED, validation.message, step_started,
                               {**verdicts, "reason_code": validation.reason_code})
            return await self._finish(request, OperationStatus.REJECTED, validation.message,
                                      reason_code=validation.reason_code)
        ref.mac = validation.mac
        self._validation = validation
        await self._record(Step.VALIDATE, Outcome.SUCCEEDED, validation.message, step_started,
                           {**verdicts, "mac_generated": validation.mac_generated, "vmi_uid": validation.vmi_uid,
                            "operation": {"mac": validation.mac, "cluster_network": validation.cluster_network,
                                          "mode": str(validation.mode)}})

        # Step 2: backfill MACs missing from the VM spec, or record that none are missing.
        self._progress.current_step = Step.BACKFILL
        step_started = workflow.now()
        if validation.missing_macs:
            try:
                backfill: StepResult = await self._activity(
                    "backfill", BackfillInput(ref=ref, missing_macs=validation.missing_macs), StepResult, policies.BACKFILL
                )
            except ActivityError as error:
                _raise_if_cancelled(error)
                message = f"backfill failed: {_failure_message(error)}"
                await self._record(Step.BACKFILL, Outcome.FAILED, message, step_started, _failure_details(error))
                return await self._finish(request, OperationStatus.FAILED, message, reason_code="BACKFILL_FAILED")
            await self._record(Step.BACKFILL, backfill.outcome, backfill.message, step_started, backfill.details)
        else:
            await self._record(Step.BACKFILL, Outcome.SKIPPED, "every interface has a MAC in the VM spec", step_started)

        # Step 3: patch the VM spec once, with optimistic concurrency. From here on a failure or
        # a cancellation runs the undo, because the patch may have landed.
        self._progress.current_step = Step.PATCH
        step_started = workflow.now()
        self._patch_started = True
        try:
            patched: StepResult = await self._activity("patch_spec", ref, StepResult, policies.PATCH)
        except ActivityError as error:
            _raise_if_cancelled(error)
            message = f"patching the VM spec failed: {_failure_message(error)}"
            await self._record(Step.PATCH, Outcome.FAILED, message, step_started, _failure_details(error))
            return await self._finish(request, OperationStatus.FAILED, message, reason_code="PATCH_FAILED", mac=ref.mac)
        await self._record(Step.PATCH, patched.outcome, patched.message, step_started, patched.details)

        if validation.mode == Mode.COLD:
            when = "appears at the next start" if self.kind == OperationKind.HOTPLUG else "is removed by KubeVirt at once"
            message = f"VM {request.vm} is stopped: the spec is changed and interface {request.interface} {when}"
            return await self._finish(request, OperationStatus.SUCCEEDED, message, mode=Mode.COLD, mac=ref.mac)

        # Steps 4 and 5: migrate and verify; a failure from here on is undone.
        try:
            verified = await self._migrate_and_verify(request, ref)
        except StepFailed as error:
            return await self._undo(request, ref, validation, error)

        self._progress.current_step = None
        warnings = [verified.warning] if verified.warning else []
        return await self._finish(request, OperationStatus.SUCCEEDED, verified.message, mac=ref.mac,
                                  guest_name=verified.guest_interface_name, warnings=warnings)

    async def _migrate_and_verify(self, request: NicRequest, ref: OperationRef) -> VerifyResult:
        self._progress.current_step = Step.MIGRATE
        migration: MigrateResult | None = None
        for attempt in range(1, policies.MAX_MIGRATION_ATTEMPTS + 1):
            step_started = workflow.now()
            try:
                migration = await self._activity("migrate", MigrateInput(ref=ref, attempt=attempt), MigrateResult, policies.MIGRATE)
            except ActivityError as error:
                _raise_if_cancelled(error)
                message = f"migration failed: {_failure_message(error)}"
                await self._record(Step.MIGRATE, Outcome.FAILED, message, step_started, _failure_details(error))
                raise StepFailed(Step.MIGRATE, message, "MIGRATION_FAILED") from error
            details = migration.model_dump()
            if migration.phase != "Failed":
                note = "adopted" if migration.adopted else "created"
                if migration.phase == "NotNeeded" and migration.migration_name:
                    message = (f"the VM restarted during migration {migration.migration_name} ({note}), and the new VMI "
                               "already has the change; no further migration needed")
                elif migration.phase == "NotNeeded":
                    message = "the VMI already shows the change; no migration needed"
                else:
                    message = (f"migration {migration.migration_name} ({note}) succeeded from {migration.source_node} "
                               f"to {migration.target_node}")
                await self._record(Step.MIGRATE, Outcome.SUCCEEDED, message, step_started, details)
                break
            message = f"migration {migration.migration_name} failed: {migration.failure_reason or 'no reason reported'}"
            if attempt >= policies.MAX_MIGRATION_ATTEMPTS:
                stop_reason = f"all {policies.MAX_MIGRATION_ATTEMPTS} attempts failed"
            elif not migration.vm_still_on_source:
                stop_reason = f"the VMI no longer runs on its source node {migration.source_node}"
            elif not migration.migratable:
                stop_reason = "the VMI is no longer live migratable"
            else:
                stop_reason = None
            if stop_reason is not None:
                message = f"{message}; not retried: {stop_reason}"
                await self._record(Step.MIGRATE, Outcome.FAILED, message, step_started, details)
                raise StepFailed(Step.MIGRATE, message, "MIGRATION_FAILED")
            message = f"{message}; retrying (attempt {attempt + 1} of {policies.MAX_MIGRATION_ATTEMPTS})"
            await self._record(Step.MIGRATE, Outcome.RETRIED, message, step_started, details)

        self._progress.current_step = Step.VERIFY
        step_started = workflow.now()
        try:
            verified: VerifyResult = await workflow.execute_activity(
                "verify",
                VerifyInput(ref=ref, timeout_seconds=request.verify_timeout_seconds),
                result_type=VerifyResult,
                start_to_close_timeout=timedelta(seconds=request.verify_timeout_seconds) + policies.VERIFY_MARGIN,
                heartbeat_timeout=policies.VERIFY_HEARTBEAT,
                retry_policy=policies.CLUSTER_RETRY,
                cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            )
        except ActivityError as error:
            _raise_if_cancelled(error)
            message = f"verification failed: {_failure_message(error)}"
            await self._record(Step.VERIFY, Outcome.FAILED, message, step_started, _failure_details(error))
            raise StepFailed(Step.VERIFY, message, "VERIFY_FAILED") from error
        await self._record(Step.VERIFY, Outcome.SUCCEEDED, verified.message, step_started,
                           {"guest_interface_name": verified.guest_interface_name, "info_source": verified.info_source,
                            "warning": verified.warning, **verified.details})
        return verified

    async def _undo(self, request: NicRequest, ref: OperationRef, validation: ValidateResult, error: BaseException) -> OperationResult:
        """Put the VM back as it was; runs to the end even when the workflow was cancelled."""
        cancelled = not isinstance(error, StepFailed)
        failure = "the operation was cancelled" if cancelled else error.message
        reason_code = "CANCELLED" if cancelled else error.reason_code
        if cancelled:
            await asyncio.shield(self._record(Step.UNDO, Outcome.STARTED, "cancel requested; undoing the change", workflow.now()))

        self._progress.current_step = Step.UNDO
        step_started = workflow.now()
        undo_input = UndoInput(ref=ref, interface_spec=validation.interface_spec, network_spec=validation.network_spec, failure=failure)
        try:
            undone: StepResult = await asyncio.shield(asyncio.ensure_future(self._activity("undo", undo_input, StepResult, policies.UNDO)))
        except ActivityError as undo_error:
            message = f"{failure}; the undo failed too: {_failure_message(undo_error)}; the VM spec needs a manual check"
            await asyncio.shield(self._record(Step.UNDO, Outcome.FAILED, message, step_started))
            return await asyncio.shield(self._finish(request, OperationStatus.FAILED, message, reason_code=reason_code, mac=ref.mac))
        await asyncio.shield(self._record(Step.UNDO, undone.outcome, undone.message, step_started, undone.details))
        status = OperationStatus.CANCELLED if cancelled else OperationStatus.UNDONE
        return await asyncio.shield(self._finish(request, status, f"{failure}; {undone.message}", reason_code=reason_code, mac=ref.mac))

    def _replayed(self, request: NicRequest, opened: OpenOperationResult) -> OperationResult:
        if opened.previous_result is not None:
            result = opened.previous_result.model_copy(update={"replayed": True})
        else:
            result = OperationResult(
                operation_id=opened.operation_id,
                request_id=request.request_id,
                kind=self.kind,
                vm=request.vm,
                interface=request.interface,
                status=opened.status,
                message=f"request {request.request_id} is already being carried out as operation {opened.operation_id}",
                replayed=True,
            )
        assert self._progress is not None
        self._progress.status = result.status
        self._progress.result = result
        return result


@workflow.defn(name="HotplugNic")
class HotplugNic(NicWorkflow):
    kind = OperationKind.HOTPLUG

    @workflow.run
    async def run(self, request: HotplugRequest) -> OperationResult:
        return await self._execute(request)


@workflow.defn(name="UnplugNic")
class UnplugNic(NicWorkflow):
    kind = OperationKind.UNPLUG

    @workflow.run
    async def run(self, request: UnplugRequest) -> OperationResult:
        return await self._execute(request)
