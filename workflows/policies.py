"""Timeouts and retry policies of every activity, in one place, each with the reason for its value."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from temporalio.common import RetryPolicy
from temporalio.workflow import ActivityCancellationType


@dataclass(frozen=True)
class ActivityPolicy:
    start_to_close: timedelta
    retry: RetryPolicy
    heartbeat: timedelta | None = None

    def options(self) -> dict:
        # A cancelled operation waits for a running activity to end before its undo reads the
        # VM, so that a patch still in flight cannot land after the undo.
        options: dict = {
            "start_to_close_timeout": self.start_to_close,
            "retry_policy": self.retry,
            "cancellation_type": ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        }
        if self.heartbeat is not None:
            options["heartbeat_timeout"] = self.heartbeat
        return options


# Error types that no retry can fix, because the rules, the request or the cluster rejected the change.
NON_RETRYABLE = [
    "ClusterRejected",
    "PatchImpossible",
    "BackfillImpossible",
    "VmGone",
    "VmStopped",
    "MigrationFailed",
    "VerifyTimeout",
    "VerifyMismatch",
    "UndoImpossible",
]

# API calls that fail with 409, 429, 5xx or a timeout back off from 1 s to 30 s, so that a
# cluster that is briefly overloaded or restarting gets room. After 10 attempts they give up,
# so that an unreachable cluster ends the operation and starts its undo within minutes.
CLUSTER_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=10,
    non_retryable_error_types=NON_RETRYABLE,
)

# Ledger writes must not be lost, so a database outage is retried for as long as the workflow
# runs, at most once every 15 s. The writes are idempotent, so a retry after a write that did
# reach the database adds nothing.
LEDGER_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=500),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=15),
    maximum_attempts=0,
)

# Reads and rules only: a few API calls, so 2 minutes covers slow lists on a large cluster. It
# heartbeats between reads, so a killed worker's attempt is retried after 10 s, not 2 minutes.
VALIDATE = ActivityPolicy(timedelta(minutes=2), CLUSTER_RETRY, heartbeat=timedelta(seconds=10))

# One patch, re-read and re-sent on conflicts: 1 minute is ample. It heartbeats before each
# attempt for the same reason as validate.
PATCH = ActivityPolicy(timedelta(minutes=1), CLUSTER_RETRY, heartbeat=timedelta(seconds=10))

# A VM restart waits for the new VMI to be Running and Ready, which takes minutes on a real node
# (image pull, boot); 15 minutes bounds it. Heartbeats every poll show that the worker is alive.
BACKFILL = ActivityPolicy(timedelta(minutes=15), CLUSTER_RETRY, heartbeat=timedelta(seconds=10))

# KubeVirt fails a migration whose target pod stays unschedulable for 5 minutes, and allows
# 150 s per GiB of memory to complete; 30 minutes covers a 8 GiB VM plus scheduling. The
# heartbeat timeout makes a killed worker's migration resume on another worker within 10 s,
# and a cancellation reach the activity within 8 s (Temporal sends heartbeats at 80% of it).
MIGRATE = ActivityPolicy(timedelta(minutes=30), CLUSTER_RETRY, heartbeat=timedelta(seconds=10))

# Verification polls the VMI status until its own deadline (VerifyInput.timeout_seconds), so the
# activity timeout only needs room above that deadline.
VERIFY_MARGIN = timedelta(minutes=2)
VERIFY_HEARTBEAT = timedelta(seconds=10)

# An undo patches the spec and may need its own migration to drop a network from the pod.
UNDO = ActivityPolicy(timedelta(minutes=30), CLUSTER_RETRY, heartbeat=timedelta(seconds=10))

# Ledger writes: a single short transaction each; the retry policy above carries outages.
LEDGER = ActivityPolicy(timedelta(seconds=30), LEDGER_RETRY)

# A failed migration is tried again this many times in all, and only while the VM still runs on
# its source node and is migratable; KubeVirt itself does not retry user-created migrations.
MAX_MIGRATION_ATTEMPTS = 3
