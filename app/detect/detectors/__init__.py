"""Every built-in detector. `BUILTIN` is the list a session runs (in this
order); importing a module registers nothing."""

from app.detect.base import Detector
from app.detect.detectors.load import (
    CapacityKneeDetector,
    ErrorBurstDetector,
    GeneratorSaturatedDetector,
    InvariantDetector,
    LatencySpikeDetector,
    SloBreachDetector,
)
from app.detect.detectors.pg_server import (
    DeadlockCycleDetector,
    LockContentionDetector,
    PgConflictsDetector,
    PgDeadlocksDetector,
    PgRollbacksDetector,
    PgTempFilesDetector,
    ProbeBlindDetector,
)
from app.detect.detectors.pods import PodDetector
from app.detect.detectors.postgres import (
    ConnectionSaturationDetector,
    IdleInTransactionBlockerDetector,
    LockWaitChainDetector,
    LongTransactionDetector,
)
from app.detect.detectors.redis import (
    ConsumersGoneDetector,
    LockTakeoverDetector,
    QueueBacklogDetector,
    QueuePendingDetector,
    QueueStuckDetector,
    RedisLockDetector,
    RedisPressureDetector,
)

BUILTIN: tuple[type[Detector], ...] = (
    LatencySpikeDetector,
    SloBreachDetector,
    ErrorBurstDetector,
    CapacityKneeDetector,
    InvariantDetector,
    GeneratorSaturatedDetector,
    LockWaitChainDetector,
    IdleInTransactionBlockerDetector,
    LongTransactionDetector,
    ConnectionSaturationDetector,
    ProbeBlindDetector,
    PgDeadlocksDetector,
    PgRollbacksDetector,
    PgConflictsDetector,
    PgTempFilesDetector,
    LockContentionDetector,
    DeadlockCycleDetector,
    PodDetector,
    RedisLockDetector,
    QueueBacklogDetector,
    QueueStuckDetector,
    ConsumersGoneDetector,
    QueuePendingDetector,
    LockTakeoverDetector,
    RedisPressureDetector,
)

__all__ = [
    "BUILTIN",
    "CapacityKneeDetector",
    "ConnectionSaturationDetector",
    "ConsumersGoneDetector",
    "ErrorBurstDetector",
    "GeneratorSaturatedDetector",
    "IdleInTransactionBlockerDetector",
    "InvariantDetector",
    "LatencySpikeDetector",
    "LockTakeoverDetector",
    "LockWaitChainDetector",
    "LongTransactionDetector",
    "PodDetector",
    "QueueBacklogDetector",
    "QueuePendingDetector",
    "QueueStuckDetector",
    "RedisLockDetector",
    "RedisPressureDetector",
    "SloBreachDetector",
]

# issue 12: server-side errors, contention, cycles, blind probes
__all__ += [
    "DeadlockCycleDetector",
    "LockContentionDetector",
    "PgConflictsDetector",
    "PgDeadlocksDetector",
    "PgRollbacksDetector",
    "PgTempFilesDetector",
    "ProbeBlindDetector",
]
