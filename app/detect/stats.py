"""Small robust statistics in pure Python: median, MAD, least-squares slope,
and a Universal Scalability Law fit. No numpy: these run on a handful of
points per tick or per step."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

MAD_TO_SIGMA = 1.4826  # MAD * this estimates the standard deviation of normal data


def median(xs: Sequence[float]) -> float:
    s = sorted(xs)
    n = len(s)
    if not n:
        return 0.0
    mid = n // 2
    return s[mid] if n % 2 else (s[mid - 1] + s[mid]) / 2.0


def mad(xs: Sequence[float], med: float | None = None) -> float:
    """Median absolute deviation (unscaled)."""
    if not xs:
        return 0.0
    m = median(xs) if med is None else med
    return median([abs(x - m) for x in xs])


def slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of y over x (0 with fewer than two distinct x)."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    sxx = sum((p[0] - mx) ** 2 for p in points)
    if sxx <= 0:
        return 0.0
    return sum((p[0] - mx) * (p[1] - my) for p in points) / sxx


# ---- Universal Scalability Law ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class UslFit:
    """X(N) = lam * N / (1 + sigma (N - 1) + kappa N (N - 1))."""

    lam: float  # throughput of one worker (ops/s)
    sigma: float  # contention (serialised fraction)
    kappa: float  # coherency (crosstalk) cost
    r2: float  # goodness of fit on throughput
    points: int

    def throughput(self, n: float) -> float:
        d = 1.0 + self.sigma * (n - 1.0) + self.kappa * n * (n - 1.0)
        return self.lam * n / d if d > 0 else 0.0

    @property
    def n_peak(self) -> float:
        """Concurrency of peak throughput (inf when kappa is 0; at least 1)."""
        if self.kappa <= 0:
            return math.inf
        return max(1.0, math.sqrt(max(1.0 - self.sigma, 0.0) / self.kappa))

    @property
    def x_peak(self) -> float:
        n = self.n_peak
        return math.inf if math.isinf(n) else self.throughput(n)

    def as_dict(self) -> dict[str, float | int | None]:
        n = self.n_peak
        return {
            "sigma": round(self.sigma, 5),
            "kappa": round(self.kappa, 7),
            "lambda": round(self.lam, 3),
            "n_peak": None if math.isinf(n) else round(n, 1),
            "x_peak": None if math.isinf(n) else round(self.x_peak, 1),
            "r2": round(self.r2, 3),
            "points": self.points,
        }


def _sse(ns: Sequence[float], xs: Sequence[float], sigma: float, kappa: float):
    gs = [n / (1.0 + sigma * (n - 1.0) + kappa * n * (n - 1.0)) for n in ns]
    sgg = sum(g * g for g in gs)
    if sgg <= 0:
        return math.inf, 0.0
    sxg = sum(x * g for x, g in zip(xs, gs, strict=True))
    lam = sxg / sgg
    return sum((x - lam * g) ** 2 for x, g in zip(xs, gs, strict=True)), lam


def fit_usl(points: Sequence[tuple[float, float]]) -> UslFit | None:
    """Least-squares USL fit to (concurrency, throughput) points.

    For fixed (sigma, kappa) the best lam is closed-form, so we search the
    two-dimensional profile: a coarse grid (sigma linear in [0, 1], kappa
    logarithmic in [1e-7, 1] plus 0), then a few rounds of local refinement.
    Returns None with fewer than 3 distinct concurrencies.
    """
    pts = [(float(n), float(x)) for n, x in points if n > 0 and x >= 0]
    if len({n for n, _ in pts}) < 3:
        return None
    ns = [p[0] for p in pts]
    xs = [p[1] for p in pts]
    sigmas = [i / 20.0 for i in range(21)]
    kappas = [0.0] + [10 ** (-7 + 7 * i / 28.0) for i in range(29)]
    best = (math.inf, 0.0, 0.0, 0.0)
    for s in sigmas:
        for k in kappas:
            sse, lam = _sse(ns, xs, s, k)
            if sse < best[0]:
                best = (sse, lam, s, k)
    _, _, s0, k0 = best
    ds = 0.05
    lk = 0.25  # log10 step for kappa
    for _ in range(6):
        cand_s = [min(1.0, max(0.0, s0 + ds * j / 4.0)) for j in range(-4, 5)]
        if k0 > 0:
            cand_k = [k0 * 10 ** (lk * j / 4.0) for j in range(-4, 5)]
            cand_k.append(0.0)
        else:
            cand_k = [0.0, 1e-8, 1e-7]
        for s in cand_s:
            for k in cand_k:
                sse, lam = _sse(ns, xs, s, k)
                if sse < best[0]:
                    best = (sse, lam, s, k)
        _, _, s0, k0 = best
        ds /= 4.0
        lk /= 4.0
    sse, lam, s, k = best
    my = sum(xs) / len(xs)
    sst = sum((x - my) ** 2 for x in xs)
    r2 = 1.0 - sse / sst if sst > 0 else 1.0
    return UslFit(lam=lam, sigma=s, kappa=k, r2=r2, points=len(pts))
