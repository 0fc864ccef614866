"""Workers that lost their target back off with jitter: they come back spread
over each step, never in lockstep, and never later than the step."""

from __future__ import annotations

import random

from app.engine.pool import (
    RECONNECT_BACKOFF_MAX_S,
    RECONNECT_BACKOFF_MIN_S,
    _next_backoff,
    backoff_sleep_s,
)


def test_steps_double_from_the_first_to_the_cap() -> None:
    steps, b = [], 0.0
    for _ in range(8):
        b = _next_backoff(b)
        steps.append(b)
    assert steps[0] == RECONNECT_BACKOFF_MIN_S
    assert steps[1] == 2 * RECONNECT_BACKOFF_MIN_S
    assert steps[-1] == RECONNECT_BACKOFF_MAX_S and max(steps) == RECONNECT_BACKOFF_MAX_S


def test_a_thousand_workers_do_not_return_together() -> None:
    rng = random.Random(7)
    waits = [backoff_sleep_s(RECONNECT_BACKOFF_MAX_S, rng.random) for _ in range(1000)]
    assert all(RECONNECT_BACKOFF_MAX_S / 2 <= w <= RECONNECT_BACKOFF_MAX_S for w in waits)
    # spread over the half-step: no 10 ms slot holds more than a few percent of them
    slots: dict[int, int] = {}
    for w in waits:
        slots[int(w * 100)] = slots.get(int(w * 100), 0) + 1
    assert len(slots) >= 45 and max(slots.values()) <= 60, sorted(slots.values())[-5:]
    assert backoff_sleep_s(0.2, lambda: 0.0) == 0.1 and backoff_sleep_s(0.2, lambda: 1.0) == 0.2
