"""The models' running quantile (the P² algorithm) as one array of doubles.

``river.stats.Quantile`` (river 0.26, pinned) is the P² estimator of Jain and Chlamtac: five
markers with their heights, positions and desired positions. As a Python object it is a
wrapper, its ``__dict__`` and a native estimator, ~330 bytes, and a worker holds two per
patient. This module keeps the same estimator in one ``array('d')`` and runs the same
arithmetic in the same order, so every update leaves the same doubles and :func:`get`
returns exactly what river's ``Quantile.get()`` returns (``detectors/test_quantile.py``
checks it after every update of thousands of seeded streams, ties and NaN included).

The stored form is river's: ``(q, updated, the estimator's bincode bytes)``, so states
written before load and are written again as the same bytes.

A part that keeps other doubles keeps its sketch in the same array (saving an array's header
and a slot): the functions take the sketch's offset ``o``. Layout of a sketch (18 doubles from
``o``, shown for ``o = 0``): ``a[0]`` q; ``a[1:6]`` the markers' desired positions
(``marker_position`` in river); ``a[6:11]`` their positions; ``a[11:16]`` their heights;
``a[16]`` how many of the first five values are in (``n_heights``); ``a[17]`` flags (1: the
first five are sorted, 2: updated at least once). The desired-position increments river
stores (``0, q/2, q, (1+q)/2, 1``) follow from q and are computed as river's constructor does.
"""

from __future__ import annotations

import math
import struct
from array import array

__all__ = ["SIZE", "new", "quantile_from", "quantile_state", "update", "value"]

_MP, _POS, _H, _NH, _FLAGS = 1, 6, 11, 16, 17
_SORTED, _UPDATED = 1.0, 2.0
#: doubles in a sketch: a part may keep one inside its own array of doubles (the functions take its offset)
SIZE = 18
#: river's estimator state as bincode writes it: q, 4 x 5 doubles, n_heights (u8), heights_sorted (bool)
_BINCODE = struct.Struct("<21dB?")


def _increments(q: float) -> tuple[float, float, float, float, float]:
    """The desired-position increments of river's constructor (``desired_marker_position``)."""
    return (0.0, q / 2.0, q, (1.0 + q) / 2.0, 1.0)


def new(q: float) -> array[float]:
    """A sketch of the ``q`` quantile that has seen nothing (``river.stats.Quantile(q)``)."""
    if not 0 < q < 1:
        raise ValueError("q is not comprised between 0 and 1")
    return array("d", (q, 1.0, 1.0 + 2.0 * q, 1.0 + 4.0 * q, 3.0 + 2.0 * q, 5.0,
                       1.0, 2.0, 3.0, 4.0, 5.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0))


def value(a: array[float], o: int = 0) -> float | None:
    """The estimate (``Quantile.get()``) of the sketch at ``a[o:o + 18]``: None before the first update."""
    flags = a[o + _FLAGS]
    if flags >= _UPDATED:
        flags -= _UPDATED
    else:
        return None
    if flags:  # the first five are sorted: the middle marker
        return a[o + _H + 2]
    n = int(a[o + _NH])
    if n == 0:
        return 0.0
    tmp = sorted(a[o + _H:o + _H + n])
    length = float(n)
    return tmp[int(min(max(length - 1.0, 0.0), length * a[o]))]


def update(a: array[float], x: float, o: int = 0) -> None:
    """Add ``x`` (``Quantile.update(x)``) to the sketch at ``a[o:o + 18]``."""
    flags = a[o + _FLAGS]
    if flags < _UPDATED:
        flags = a[o + _FLAGS] = flags + _UPDATED
    nh = a[o + _NH]
    if nh < 5.0:  # the first five values
        a[o + _H + int(nh)] = x
        a[o + _NH] = nh + 1.0
        return
    h = o + _H
    if flags == _UPDATED:  # not sorted yet: river's sorting network on the five heights
        for i, j in ((0, 1), (3, 4), (0, 2), (1, 2), (0, 3), (2, 3), (1, 4), (1, 2), (3, 4)):
            if a[h + j] < a[h + i]:
                a[h + i], a[h + j] = a[h + j], a[h + i]
        a[o + _FLAGS] = _UPDATED + _SORTED
    # the cell k with heights[k-1] <= x < heights[k], widening the extremes
    if x < a[h]:
        a[h] = x
        k = 1
    else:
        k = 4
        for i in (1, 2, 3, 4):
            if a[h + i - 1] <= x and x < a[h + i]:
                k = i
                break
        else:
            if a[h + 4] < x:
                a[h + 4] = x
    p = o + _POS
    for i in range(k, 5):
        a[p + i] += 1.0
    mp = o + _MP
    for j, inc in enumerate(_increments(a[o])):
        a[mp + j] += inc
    _adjust(a, o)


def _adjust(a: array[float], o: int) -> None:
    h, p, mp = o + _H, o + _POS, o + _MP
    for i in (1, 2, 3):
        n = a[p + i]
        q = a[h + i]
        d = a[mp + i] - n
        if (d >= 1.0 and a[p + i + 1] - n > 1.0) or (d <= -1.0 and a[p + i - 1] - n < -1.0):
            d = math.copysign(1.0, d)
            qp1 = a[h + i + 1]
            qm1 = a[h + i - 1]
            np1 = a[p + i + 1]
            nm1 = a[p + i - 1]
            outer = d / (np1 - nm1)
            inner_left = (n - nm1 + d) * (qp1 - q) / (np1 - n)
            inner_right = (np1 - n - d) * (q - qm1) / (n - nm1)
            qn = q + outer * (inner_left + inner_right)
            if qm1 < qn and qn < qp1:
                a[h + i] = qn
            else:
                li = i + int(d)
                a[h + i] = q + d * (a[h + li] - q) / (a[p + li] - n)
            a[p + i] = n + d


# -- the stored form: river's ------------------------------------------------------------------
def quantile_state(a: array[float] | None, o: int = 0) -> tuple[float, bool, bytes] | None:
    """The stored form of the sketch at ``a[o:o + 18]``: ``(q, updated, river's estimator bytes)``, what a
    river ``Quantile`` gives as ``(q.q, q._is_updated, q._quantile.__getstate__())``."""
    if a is None:
        return None
    q = a[o]
    flags = a[o + _FLAGS]
    updated = flags >= _UPDATED
    if updated:
        flags -= _UPDATED
    return (q, updated, _BINCODE.pack(q, *_increments(q), *a[o + _MP:o + _NH], int(a[o + _NH]), bool(flags)))


def quantile_from(s: tuple[float, bool, bytes] | None) -> array[float] | None:
    """Inverse of :func:`quantile_state`."""
    if s is None:
        return None
    q, updated, estimator = s
    fields = _BINCODE.unpack(estimator)
    if fields[1:6] != _increments(fields[0]) or fields[0] != q:
        raise ValueError("not a state of river's Quantile: its desired-position increments do not follow from q")
    a = new(q)
    a[_MP:_NH] = array("d", fields[6:21])
    a[_NH] = float(fields[21])
    a[_FLAGS] = (_SORTED if fields[22] else 0.0) + (_UPDATED if updated else 0.0)
    return a
