"""Signal conditioning with state carried between readings.

Everything here is O(1) per reading over small fixed-size buffers, because the
per-reading Python overhead dominates a streaming detector:

* :class:`RunningMedian` — a causal running median (the centre of a Hampel
  filter): brief motion-artefact spikes in wrist heart rate (up to
  ``(window - 1) // 2`` consecutive readings) never reach the rules.
* :class:`LowPass` — a first-order IIR low-pass for irregular timestamps. Its
  state (the last output) is the filter's ``zi``; for a fixed step it is exactly
  ``scipy.signal.lfilter([a], [1, a - 1], x, zi=...)`` (tested).
* :func:`trend` — least-squares level and slope over irregular timestamps. On a
  regular grid this is the Savitzky–Golay (order 1) smoother/derivative
  evaluated at the newest point (``scipy.signal.savgol_coeffs(..., pos=n-1)``,
  tested), but it stays correct when readings are missing.
* :func:`slope_now` — the slope at the newest reading of a (weighted) quadratic
  fit: a fall that is levelling off has a smaller slope now than on average.
* :func:`median_slope` — the Theil–Sen slope (median of the pairwise slopes):
  one outlying reading cannot make it steep.
* :func:`news2_pulse_score` — the NEWS2 pulse sub-score.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["LowPass", "RunningMedian", "median_slope", "news2_pulse_score", "slope_now", "trend"]


class RunningMedian:
    """Median of the last ``window`` values (fewer at start).

    Examples
    --------
    >>> m = RunningMedian(5)
    >>> [m.push(v) for v in [70, 71, 150, 72, 151, 73, 72]]
    [70, 70.5, 71, 71.5, 72, 73, 73]
    """

    # The buffer stays a list although a worker holds one per patient: it is sorted on every
    # heart-rate reading, and sorting an array of doubles makes a float object of each value
    # first (twice the time of the whole push).
    __slots__ = ("buf", "window")

    def __init__(self, window: int = 5) -> None:
        self.window = window
        self.buf: list[float] = []

    def push(self, x: float) -> float:
        buf = self.buf
        buf.append(x)
        if len(buf) > self.window:
            del buf[0]
        s = sorted(buf)
        n = len(s)
        h = n >> 1
        return s[h] if n & 1 else (s[h - 1] + s[h]) / 2

    def reset(self) -> None:
        self.buf.clear()

    def dump_state(self) -> tuple[int, list[float]]:
        """``(window, buffer)``: builtins only, for the detectors' flat pickled state."""
        return (self.window, self.buf)

    @classmethod
    def from_state(cls, s: tuple[int, list[float]]) -> RunningMedian:
        """Inverse of :meth:`dump_state`."""
        m = cls.__new__(cls)
        m.window, m.buf = s
        return m

    def __getstate__(self) -> tuple[int, list[float]]:
        return self.dump_state()

    def __setstate__(self, s: tuple[int, list[float]]) -> None:
        self.window, self.buf = s


class LowPass:
    """First-order low-pass ``y += (1 - exp(-dt/tau)) * (x - y)`` with carried state.

    Examples
    --------
    >>> lp = LowPass(tau_ms=10_000)
    >>> [round(lp.push(t, x), 2) for t, x in [(0, 60), (5_000, 80), (10_000, 80)]]
    [60.0, 67.87, 72.64]
    """

    __slots__ = ("_a", "_dt", "tau_ms", "ts", "y")

    def __init__(self, tau_ms: float) -> None:
        self.tau_ms = tau_ms
        self.y = math.nan
        self.ts = -1
        self._dt = -1
        self._a = 0.0

    def push(self, ts: int, x: float) -> float:
        if self.ts < 0 or self.y != self.y:
            self.y = float(x)
        else:
            dt = ts - self.ts
            if dt != self._dt:
                self._dt = dt
                self._a = 1.0 - math.exp(-dt / self.tau_ms) if self.tau_ms > 0 else 1.0
            self.y += self._a * (x - self.y)
        self.ts = ts
        return self.y

    def reset(self) -> None:
        self.y = math.nan
        self.ts = -1

    def dump_state(self) -> tuple[float, float, int]:
        """``(tau_ms, y, ts)``: builtins only, for the detectors' flat pickled state."""
        return (self.tau_ms, self.y, self.ts)

    @classmethod
    def from_state(cls, s: tuple[float, float, int]) -> LowPass:
        """Inverse of :meth:`dump_state` (the cached coefficient is recomputed on the next push)."""
        lp = cls.__new__(cls)
        lp.__setstate__(s)
        return lp

    def __getstate__(self) -> tuple[float, float, int]:
        return self.dump_state()

    def __setstate__(self, s: tuple[float, float, int]) -> None:
        self.tau_ms, self.y, self.ts = s
        self._dt = -1
        self._a = 0.0


def trend(
    ts: Sequence[float], xs: Sequence[float], tau_min: float = 0.0
) -> tuple[float, float]:
    """Least-squares ``(level at the newest timestamp, slope per minute)``.

    Timestamps are epoch milliseconds (integers, or doubles holding them exactly)
    and may be irregular. With ``tau_min > 0`` each point is weighted by
    ``exp(-age / tau_min)``, so the fit follows a change of trend sooner (at the
    price of more noise). With fewer than two
    distinct timestamps the slope is 0.

    Examples
    --------
    >>> trend([0, 300_000, 600_000, 1_200_000], [100.0, 94.0, 88.0, 76.0])
    (76.0, -1.2)
    >>> level, slope = trend([0, 300_000, 600_000, 900_000], [100.0, 100.0, 90.0, 80.0], 10.0)
    >>> round(level, 1), round(slope, 2)
    (80.9, -1.59)
    """
    n = len(ts)
    if n == 0:
        return math.nan, 0.0
    t0 = ts[-1]
    sw = mt = mx = 0.0
    ws: list[float] = []
    for t, x in zip(ts, xs, strict=True):
        age = (t0 - t) / 60_000.0
        w = math.exp(-age / tau_min) if tau_min > 0 else 1.0
        ws.append(w)
        sw += w
        mt -= w * age
        mx += w * x
    mt /= sw
    mx /= sw
    sxx = sxy = 0.0
    for t, x, w in zip(ts, xs, ws, strict=True):
        d = (t - t0) / 60_000.0 - mt
        sxx += w * d * d
        sxy += w * d * (x - mx)
    if sxx <= 0.0:
        return mx, 0.0
    slope = sxy / sxx
    return mx - slope * mt, slope


def slope_now(ts: Sequence[float], xs: Sequence[float], tau_min: float = 0.0) -> float:
    """Slope per minute at the newest timestamp of the least-squares quadratic ``a + b t + c t^2``.

    Weights as in :func:`trend`. With fewer than four readings, or timestamps that do
    not determine a quadratic, it is :func:`trend`'s slope.

    Examples
    --------
    >>> round(slope_now([0, 300_000, 600_000, 900_000, 1_200_000], [100.0, 80.0, 65.0, 55.0, 50.0]), 2)
    -0.5
    >>> slope_now([0, 300_000, 600_000], [100.0, 94.0, 88.0])
    -1.2
    """
    n = len(ts)
    if n < 4:
        return trend(ts, xs, tau_min)[1]
    t0 = ts[-1]
    s0 = s1 = s2 = s3 = s4 = y0 = y1 = y2 = 0.0
    for t, x in zip(ts, xs, strict=True):
        u = (t - t0) / 60_000.0
        w = math.exp(u / tau_min) if tau_min > 0 else 1.0
        u2 = u * u
        s0 += w
        s1 += w * u
        s2 += w * u2
        s3 += w * u2 * u
        s4 += w * u2 * u2
        y0 += w * x
        y1 += w * u * x
        y2 += w * u2 * x
    # normal equations [[s0 s1 s2] [s1 s2 s3] [s2 s3 s4]] (a b c) = (y0 y1 y2); b by Cramer's rule
    det = s0 * (s2 * s4 - s3 * s3) - s1 * (s1 * s4 - s3 * s2) + s2 * (s1 * s3 - s2 * s2)
    if abs(det) < 1e-9 * max(s4 * s4 * s0, 1e-300):
        return trend(ts, xs, tau_min)[1]
    det_b = s0 * (y1 * s4 - s3 * y2) - y0 * (s1 * s4 - s3 * s2) + s2 * (s1 * y2 - y1 * s2)
    return det_b / det


def median_slope(ts: Sequence[float], xs: Sequence[float]) -> float:
    """Theil–Sen slope per minute: the median of the slopes between every two readings (0 with fewer than two).

    >>> median_slope([0, 300_000, 600_000, 900_000], [100.0, 95.0, 140.0, 85.0])  # one outlier
    -1.0
    """
    n = len(ts)
    slopes = [(xs[j] - xs[i]) * 60_000.0 / (ts[j] - ts[i])
              for i in range(n) for j in range(i + 1, n) if ts[j] != ts[i]]
    if not slopes:
        return 0.0
    slopes.sort()
    m = len(slopes)
    h = m >> 1
    return slopes[h] if m & 1 else (slopes[h - 1] + slopes[h]) / 2


def news2_pulse_score(hr: float) -> int:
    """NEWS2 pulse sub-score: ≤40 → 3; 41–50 → 1; 51–90 → 0; 91–110 → 1; 111–130 → 2; ≥131 → 3.

    Non-integer rates are rounded to the nearest beat first.

    >>> [news2_pulse_score(x) for x in (38, 45, 70, 100, 120, 140)]
    [3, 1, 0, 1, 2, 3]
    """
    r = round(hr)
    if r <= 40:
        return 3
    if r <= 50:
        return 1
    if r <= 90:
        return 0
    if r <= 110:
        return 1
    if r <= 130:
        return 2
    return 3
