"""Uncertainty of benchmark numbers: confidence intervals over repeated trials, and the two decisions
built on them (is A faster than B? did this run regress against the baseline?).

Methods, stated once (docs/benchmarks.md quotes them):
- Interval of a metric: Student-t over the per-trial values, 95% two-sided:
  mean +- t(0.975, n-1) * s / sqrt(n), s the sample standard deviation (ddof=1). Trials are the unit:
  requests inside one trial share the machine's state (other jobs, clocks), so they are not independent
  and an interval over requests would be too narrow.
- One trial has no interval (n-1 = 0 degrees of freedom). For latency percentiles of a single trial a
  percentile bootstrap over requests gives one (BOOTSTRAP_RESAMPLES, seeded); it only covers the
  request-to-request spread, not the run-to-run drift, so it is labelled as such.
- A difference of means: Welch's t interval (unequal variances, Welch-Satterthwaite degrees of freedom).
  "A beats B" = the 95% interval of mean(A) - mean(B) lies above 0: a two-sided Welch t-test at 5%.
- Coefficient of variation: s / |mean| over trials.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, asdict

import numpy as np

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 1000


def _incomplete_beta(x: float, a: float, b: float) -> float:
    """Regularized incomplete beta I_x(a, b) by its continued fraction (modified Lentz), using the
    symmetry I_x(a, b) = 1 - I_(1-x)(b, a) where the fraction converges slowly."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    if x > (a + 1) / (a + b + 2):
        return 1.0 - _incomplete_beta(1 - x, b, a)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)) / a
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),  # even step of the fraction
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):  # odd step
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return front * h


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with df (> 0, not necessarily whole) degrees of freedom."""
    tail = 0.5 * _incomplete_beta(df / (df + t * t), df / 2, 0.5)
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t (0 < p < 1), by bisection on t_cdf (no scipy needed at run time;
    tests check it against scipy.stats.t and printed tables)."""
    if not 0 < p < 1:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return (lo + hi) / 2


@dataclass
class Interval:
    """A metric's estimate: mean and its two-sided confidence interval (low/high None without one)."""

    mean: float | None
    low: float | None = None
    high: float | None = None
    n: int = 0  # trials (or requests, for method "bootstrap")
    std: float | None = None  # sample standard deviation (ddof=1) of the per-trial values
    cv: float | None = None  # coefficient of variation: std / |mean|
    method: str = "student-t"  # student-t | bootstrap | order statistics | none
    confidence: float = CONFIDENCE

    @property
    def half_width(self) -> float | None:
        if self.low is None or self.high is None:
            return None
        return (self.high - self.low) / 2

    @property
    def rel_half_width(self) -> float | None:
        """Half-width as a fraction of the mean (how wide, comparable across metrics)."""
        hw = self.half_width
        return hw / abs(self.mean) if hw is not None and self.mean else None

    def text(self, digits: int = 3) -> str:
        """'12.3 +- 0.41': the half-width to 2 significant digits and the mean to the same decimals (just the
        mean, to `digits` significant digits, without an interval)."""
        if self.mean is None:
            return "-"
        hw = self.half_width
        if hw is None or not math.isfinite(hw):
            return f"{self.mean:.{digits}g}"
        if hw == 0:
            return f"{self.mean:.{digits}g} +- 0"
        decimals = max(0, 1 - math.floor(math.log10(hw)))
        return f"{self.mean:.{decimals}f} +- {hw:.{decimals}f}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> Interval | None:
        if not data:
            return None
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in names})


def mean_interval(values, confidence: float = CONFIDENCE) -> Interval:
    """Student-t interval of the mean of per-trial values; no interval (low/high None) for one value."""
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if arr.size == 0:
        return Interval(None, n=0, method="none", confidence=confidence)
    mean = float(arr.mean())
    if arr.size == 1:
        return Interval(mean, n=1, method="none", confidence=confidence)
    std = float(arr.std(ddof=1))
    half = t_quantile(0.5 + confidence / 2, arr.size - 1) * std / math.sqrt(arr.size)
    cv = std / abs(mean) if mean else None
    return Interval(mean, mean - half, mean + half, int(arr.size), std, cv, "student-t", confidence)


def bootstrap_replicates(values, statistic, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> np.ndarray:
    """statistic(resample) for `resamples` resamples (with replacement) of values; seeded."""
    arr = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, arr.size, size=(resamples, arr.size))
    return np.asarray([statistic(arr[i]) for i in idx])


def bootstrap_interval(values, q: float, confidence: float = CONFIDENCE, seed: int = 0) -> Interval:
    """Percentile bootstrap interval of the q-th percentile (0-100) of values (one trial's requests)."""
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    if arr.size < 2:
        return Interval(float(arr[0]) if arr.size else None, n=int(arr.size), method="none", confidence=confidence)
    reps = bootstrap_replicates(arr, lambda a: np.percentile(a, q), seed=seed)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(reps, [tail, 100 - tail])
    return Interval(float(np.percentile(arr, q)), float(low), float(high), int(arr.size), None, None, "bootstrap",
                    confidence)


def median_interval(values, confidence: float = CONFIDENCE) -> Interval:
    """Distribution-free interval of the median of independent values: the order statistics [x_(k),
    x_(n+1-k)], k the largest with P(Binomial(n, 1/2) < k) <= (1 - confidence) / 2, which cover the true
    median with at least that confidence whatever the distribution. Fewer than 6 values have none (5
    values: even [min, max] misses the median 2 x 2^-5 = 6.25% of the time)."""
    arr = np.sort(np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float))
    n = int(arr.size)
    middle = float(np.median(arr)) if n else None
    below, k = 0.0, 0  # below = P(Binomial(n, 1/2) < k)
    while n and below + math.comb(n, k) / 2 ** n <= (1 - confidence) / 2:
        below += math.comb(n, k) / 2 ** n
        k += 1
    if k == 0:
        return Interval(middle, n=n, method="none", confidence=confidence)
    return Interval(middle, float(arr[k - 1]), float(arr[n - k]), n, None, None, "order statistics", confidence)


@dataclass
class Difference:
    """mean(a) - mean(b) with its confidence interval (None when either side has no interval)."""

    diff: float
    low: float | None
    high: float | None
    df: float | None
    method: str

    @property
    def known(self) -> bool:
        return self.low is not None and self.high is not None


def welch_difference(a: Interval, b: Interval, confidence: float = CONFIDENCE) -> Difference:
    """Welch's interval of mean(a) - mean(b) from two Student-t intervals (means, sample stds, n).

    Two bootstrap intervals (single trials) are combined as independent normal errors:
    half = sqrt(ha^2 + hb^2), an approximation stated with the result."""
    diff = a.mean - b.mean
    if a.method == "student-t" and b.method == "student-t":
        va, vb = a.std ** 2 / a.n, b.std ** 2 / b.n
        se = math.sqrt(va + vb)
        if se == 0:
            return Difference(diff, diff, diff, math.inf, "welch")
        df = (va + vb) ** 2 / (va ** 2 / (a.n - 1) + vb ** 2 / (b.n - 1))
        half = t_quantile(0.5 + confidence / 2, df) * se
        return Difference(diff, diff - half, diff + half, df, "welch")
    if a.method == "bootstrap" and b.method == "bootstrap":
        half = math.hypot(a.half_width, b.half_width)
        return Difference(diff, diff - half, diff + half, None, "bootstrap (requests of one trial)")
    return Difference(diff, None, None, None, "none (a single trial has no interval: run --trials >= 3)")


def beats(a: Interval, b: Interval, higher_is_better: bool = True) -> tuple[str, Difference]:
    """'win' when a is better than b beyond the interval of the difference, 'loss' when worse beyond it,
    'tie' otherwise (including when either side has no interval)."""
    d = welch_difference(a, b)
    if not d.known:
        return "tie", d
    better = d.low > 0 if higher_is_better else d.high < 0
    worse = d.high < 0 if higher_is_better else d.low > 0
    return ("win" if better else "loss" if worse else "tie"), d


def regression_verdict(current: Interval, baseline: Interval, tolerance_pct: float,
                       higher_is_better: bool) -> tuple[str, float, float | None, float | None]:
    """'regression' when the change for the worse exceeds tolerance_pct with 95% confidence (the whole
    Welch interval of the change lies beyond it), 'ok' when the whole interval is within it,
    'inconclusive' when the interval straddles the tolerance (or there is none).

    Returns (verdict, change %, low %, high %): the change of the mean relative to the baseline mean
    (the baseline mean taken as exact in the denominator: a first-order approximation)."""
    d = welch_difference(current, baseline)
    scale = 100 / abs(baseline.mean)
    change = d.diff * scale
    if not d.known:
        return "inconclusive", change, None, None
    low, high = d.low * scale, d.high * scale
    worse_low, worse_high = (-high, -low) if higher_is_better else (low, high)  # the change for the worse
    if worse_low > tolerance_pct:
        return "regression", change, low, high
    if worse_high <= tolerance_pct:
        return "ok", change, low, high
    return "inconclusive", change, low, high


# Enough samples. A percentile from n samples is trusted when some order statistic bounds it at 95%
# confidence without assuming a distribution: that needs P(every sample < the true q-quantile) = q^n
# <= 2.5%, i.e. n >= ln(0.025) / ln(q). Below that even the sample maximum is below the true
# percentile more than 2.5% of the time: the "p99" of 16 requests is their maximum, read as a p99.
# p50 needs 6 samples, p90 36, p95 72, p99 368, p99.9 3688.
MIN_WINDOW_E2E = 10  # measured window >= 10 x E2E p50: closed-loop ramp-up and drain (about one E2E
#                      each) then bias throughput by under ~10-20%


def min_samples(percentile: float, confidence: float = CONFIDENCE) -> int:
    q = percentile / 100
    return math.ceil(math.log((1 - confidence) / 2) / math.log(q))


def sample_check(latency_ms: dict, duration_s: float | None, reported: dict[str, list[float]]) -> dict:
    """Which reported percentiles have too few samples, and whether the window was too short.

    reported: {metric: [percentiles shown]} (e.g. {"ttft": [50, 99]}). Returns {"ok", "flags": [...]}."""
    flags = []
    for metric, percentiles in reported.items():
        n = (latency_ms.get(metric) or {}).get("n") or 0
        for p in percentiles:
            need = min_samples(p)
            if 0 < n < need:
                flags.append(f"{metric} p{p:g} from {n} samples (needs >= {need})")
    e2e = (latency_ms.get("e2e") or {}).get("p50")
    if duration_s and e2e and duration_s * 1e3 < MIN_WINDOW_E2E * e2e:
        flags.append(f"window {duration_s:.3g} s < {MIN_WINDOW_E2E} x E2E p50 ({e2e / 1e3:.3g} s): ramp-up and drain "
                     "weigh on throughput")
    return {"ok": not flags, "flags": flags}
