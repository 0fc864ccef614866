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
from app.detect.detectors.pods import PodDetector
from app.detect.detectors.postgres import (
    ConnectionSaturationDetector,
    IdleInTransactionBlockerDetector,
    LockWaitChainDetector,
    LongTransactionDetector,
)
from app.detect.detectors.redis import (
    QueueBacklogDetector,
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
    PodDetector,
    LockWaitChainDetector,
    IdleInTransactionBlockerDetector,
    LongTransactionDetector,
    ConnectionSaturationDetector,
    RedisLockDetector,
    QueueBacklogDetector,
    RedisPressureDetector,
)

__all__ = [
    "BUILTIN",
    "CapacityKneeDetector",
    "ConnectionSaturationDetector",
    "ErrorBurstDetector",
    "GeneratorSaturatedDetector",
    "IdleInTransactionBlockerDetector",
    "InvariantDetector",
    "LatencySpikeDetector",
    "LockWaitChainDetector",
    "LongTransactionDetector",
    "PodDetector",
    "QueueBacklogDetector",
    "RedisLockDetector",
    "RedisPressureDetector",
    "SloBreachDetector",
]
