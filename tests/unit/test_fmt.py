"""app.fmt: the one way numbers are written (console, headless, report, chart axes).
Edge cases: zero, negatives, negative zero, None, NaN, infinities and values that
round up into the next unit."""

from __future__ import annotations

import math
import re

import pytest

from app import fmt

NAN = float("nan")


@pytest.mark.parametrize(
    ("v", "want"),
    [
        (0, "0"), (0.0, "0"), (-0.0, "0"), (0.001, "0"), (-0.004, "0"),
        (0.25, "0.25"), (0.4, "0.4"), (0.05, "0.05"), (0.999, "1.0"), (70, "70"), (70.0, "70"), (-12.0, "-12"), (3.5, "3.5"), (12.34, "12.3"), (99.96, "100"),
        (950, "950"), (999.4, "999"), (999.5, "1.0k"), (999.95, "1.0k"), (1000, "1.0k"),
        (6500, "6.5k"), (12_345, "12.3k"), (99_960, "100k"), (123_456, "123k"),
        (999_600, "1.0M"), (1_234_567, "1.2M"), (2.5e9, "2.5G"), (-12_345, "-12.3k"),
        (-3.5, "-3.5"), (None, "-"), (NAN, "-"), (math.inf, "∞"), (-math.inf, "-∞"),
    ],
)  # fmt: skip
def test_rate(v: float | None, want: str) -> None:
    assert fmt.rate(v) == want


@pytest.mark.parametrize(
    ("v", "want"),
    [
        (0, "0ms"), (-0.0, "0ms"), (0.0004, "0ms"), (-0.0004, "0ms"), (0.95, "950µs"),
        (0.9996, "1.00ms"), (1.234, "1.23ms"), (9.996, "10.0ms"), (12.34, "12.3ms"),
        (99.96, "100ms"), (123.4, "123ms"), (999.4, "999ms"), (999.6, "1.0s"), (1200, "1.2s"),
        (12_340, "12.3s"), (59_940, "59.9s"), (59_960, "1m00s"), (123_000, "2m03s"),
        (3_599_600, "1h00m"), (3_720_000, "1h02m"), (100 * 3_600_000, "4d04h"),
        (-12.34, "-12.3ms"), (-0.3, "-300µs"), (None, "-"), (NAN, "-"), (math.inf, "∞"),
    ],
)  # fmt: skip
def test_ms(v: float | None, want: str) -> None:
    assert fmt.ms(v) == want


def test_seconds_and_age() -> None:
    assert fmt.seconds(123) == "2m03s" and fmt.seconds(0.0123) == "12.3ms"
    assert fmt.seconds(None) == "-" and fmt.seconds(NAN, none="n/a") == "n/a"
    # an age is never negative: a server clock a little ahead reads 0, never -0ms
    assert fmt.age(-0.0003) == "0ms" and fmt.age(-5) == "0ms"
    assert fmt.age(0.5) == "500ms" and fmt.age(125) == "2m05s" and fmt.age(None) == "-"
    small = [-x / 1e4 for x in range(100)] + [-x / 1e7 for x in range(100)]
    shown = [f(v) for v in small for f in (fmt.ms, fmt.rate, fmt.num, fmt.age)]
    assert not [s for s in shown if re.match(r"-0(\.0+)?(?![\d.])", s)]  # no negative zero


@pytest.mark.parametrize(
    ("n", "want"),
    [
        (0, "0 B"), (-0.0, "0 B"), (512, "512 B"), (1023.4, "1023 B"), (1023.6, "1.0 KiB"),
        (1536, "1.5 KiB"), (46.6 * 2**20, "46.6 MiB"), (1023.96 * 2**20, "1.0 GiB"),
        (3 * 2**40, "3.0 TiB"), (5000 * 2**40, "5000.0 TiB"), (None, "-"), (NAN, "-"),
    ],
)  # fmt: skip
def test_size(n: float | None, want: str) -> None:
    assert fmt.size(n) == want


def test_share_says_no_limit_instead_of_a_percentage_of_nothing() -> None:
    assert fmt.share(25, 200) == "12%" and fmt.share(0, 100) == "0%"
    assert fmt.share(46.6 * 2**20, None) == "no limit" and fmt.share(1, 0) == "no limit"
    assert fmt.share(1, NAN) == "no limit" and fmt.share(None, 100) == "-"
    assert fmt.share(-0.001, 100) == "0%"


def test_num_and_clock() -> None:
    assert [fmt.num(v) for v in (None, 4, 8.0, 2.5, -0.0, 1 / 3, 12_500, NAN)] == [
        "-", "4", "8", "2.5", "0", "0.3333", "12.5k", "-",
    ]  # fmt: skip
    assert [fmt.clock(s) for s in (0, 59.9, 123, 3723, -4, None)] == [
        "00:00", "00:59", "02:03", "1:02:03", "00:00", "-",
    ]  # fmt: skip


def test_axis_ticks_are_round_and_inside_the_range() -> None:
    assert fmt.axis_ticks(3000, 6500, 5) == [3000, 4000, 5000, 6000]
    assert fmt.axis_ticks(2, 42, 5) == [10, 20, 30, 40]
    assert fmt.axis_ticks(0, 1, 3) == [0, 0.5, 1]
    assert fmt.axis_ticks(5, 5) == [5] and fmt.axis_ticks(0, NAN) == []
    assert [fmt.rate(v) for v in fmt.axis_ticks(3100, 6500, 5)] == ["4.0k", "5.0k", "6.0k"]
    assert fmt.time_ticks(0, 119, 5) == [0, 30, 60, 90]
    assert fmt.time_ticks(0, 3600, 5) == [0, 900, 1800, 2700, 3600]
