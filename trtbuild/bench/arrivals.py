"""Load: closed loop (fixed concurrency) or open loop (a request rate with seeded arrivals).

Open-loop inter-arrival times follow vLLM's benchmark: gamma with shape = burstiness and
scale = 1 / (rate * burstiness), so the mean rate is `rate` whatever the burstiness; burstiness 1 is
Poisson (exponential gaps), < 1 is burstier (CV = 1/sqrt(burstiness)), > 1 smoother. "constant"
sends exactly every 1/rate seconds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from trtbuild.errors import TrtbuildError

ARRIVALS = ("poisson", "gamma", "constant")


@dataclass
class LoadSpec:
    concurrency: int | None = 1  # closed loop: this many requests in flight
    request_rate: float | None = None  # open loop (requests/s); overrides concurrency when set
    arrival: str = "poisson"
    burstiness: float = 1.0
    duration_s: float | None = None  # stop sending measured requests after this long (then drain)
    seed: int = 0

    @property
    def open_loop(self) -> bool:
        return self.request_rate is not None

    def check(self) -> None:
        if self.open_loop:
            if not self.request_rate > 0:
                raise TrtbuildError(f"--request-rate must be > 0, got {self.request_rate}")
            if self.arrival not in ARRIVALS:
                raise TrtbuildError(f"--arrival must be one of {', '.join(ARRIVALS)}, got {self.arrival!r}")
            if not self.burstiness > 0:
                raise TrtbuildError(f"--burstiness must be > 0, got {self.burstiness}")
        elif self.concurrency is None or self.concurrency < 1:
            raise TrtbuildError(f"--concurrency must be >= 1, got {self.concurrency}")
        if self.duration_s is not None and not self.duration_s > 0:
            raise TrtbuildError(f"--duration must be > 0 seconds, got {self.duration_s}")

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        if self.open_loop:
            data["concurrency"] = None
        else:
            data.update(request_rate=None, arrival=None, burstiness=None)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> LoadSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in data.items() if k in names}
        data["arrival"] = data.get("arrival") or "poisson"
        data["burstiness"] = data.get("burstiness") or 1.0
        return cls(**data)

    @property
    def level(self) -> float:
        """The load level for plots: concurrency or request rate."""
        return float(self.request_rate if self.open_loop else self.concurrency)


def inter_arrivals(n: int, rate: float, arrival: str = "poisson", burstiness: float = 1.0,
                   seed: int = 0) -> np.ndarray:
    """n gaps in seconds between consecutive sends (the first request goes at its gap, not at 0)."""
    if arrival == "constant":
        return np.full(n, 1.0 / rate)
    rng = np.random.default_rng(seed)
    if arrival == "poisson":
        return rng.exponential(1.0 / rate, n)
    if arrival == "gamma":
        return rng.gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=n)
    raise TrtbuildError(f"unknown arrival process {arrival!r}; use one of {', '.join(ARRIVALS)}")


def schedule(n: int, load: LoadSpec) -> np.ndarray:
    """Send times in seconds from the start, for an open-loop load; the first request goes at 0."""
    gaps = inter_arrivals(n, load.request_rate, load.arrival, load.burstiness, load.seed)
    return np.concatenate([[0.0], np.cumsum(gaps[:-1])]) if n else np.zeros(0)


def parse_levels(values: tuple[str, ...] | list[str], name: str, kind=float) -> list:
    """'--concurrency 1 --concurrency 4' or '--concurrency 1,4,16' -> [1, 4, 16] (a sweep)."""
    levels = []
    for value in values:
        for part in str(value).split(","):
            part = part.strip()
            if not part:
                continue
            try:
                levels.append(kind(part))
            except ValueError:
                raise TrtbuildError(f"{name} {part!r} is not a {'whole ' if kind is int else ''}number") from None
    return levels


def sweep(concurrency: list[int], rates: list[float], arrival: str = "poisson", burstiness: float = 1.0,
          duration_s: float | None = None, seed: int = 0) -> list[LoadSpec]:
    """The load levels to run, in the order given: every concurrency, then every rate."""
    loads = [LoadSpec(concurrency=c, duration_s=duration_s, seed=seed) for c in concurrency]
    loads += [LoadSpec(concurrency=None, request_rate=r, arrival=arrival, burstiness=burstiness,
                       duration_s=duration_s, seed=seed) for r in rates]
    if not loads:
        loads = [LoadSpec(concurrency=1, duration_s=duration_s, seed=seed)]
    for load in loads:
        load.check()
    return loads
