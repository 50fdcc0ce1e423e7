"""Non-zero padding modes: padding an input, and folding a gradient back.

`padding_mode` "reflect", "replicate" and "circular" follow `torch.nn.functional.pad`.  Each
padded axis is a gather: padded index j reads input index ``source_index(n, before, after)[j]``.
Padding applies the gathers axis by axis; the gradient applies their adjoints in reverse order:
the border's gradient is added back onto the input positions it was copied from.
(Zero padding never comes here: the loops treat indices outside the input as zeros.)
"""

from __future__ import annotations

import numpy as np


def source_index(n: int, before: int, after: int, mode: str) -> np.ndarray:
    """For each of the before + n + after padded positions, the input index it copies."""
    j = np.arange(-before, n + after)
    if mode == "reflect":             # mirror without repeating the edge: period 2 (n - 1)
        if n == 1:
            return np.zeros_like(j)
        period = 2 * (n - 1)
        j = np.abs(j) % period
        return np.where(j >= n, period - j, j)
    if mode == "replicate":
        return np.clip(j, 0, n - 1)
    if mode == "circular":
        return j % n
    raise ValueError(f"unknown padding mode {mode!r}")


def check(fn: str, size, pads, mode: str) -> None:
    """The limits of torch.nn.functional.pad: reflect needs padding < size, circular padding
    <= size, and every mode a non-empty axis to copy from."""
    for axis, (n, (b, a)) in enumerate(zip(size, pads)):
        if b == a == 0:
            continue
        if mode == "reflect" and max(b, a) >= n:
            raise ValueError(f"{fn}: reflect padding ({b}, {a}) must be smaller than the input "
                             f"size {n} on spatial axis {axis} (input spatial size {tuple(size)})")
        if mode == "circular" and max(b, a) > n:
            raise ValueError(f"{fn}: circular padding ({b}, {a}) must not exceed the input size "
                             f"{n} on spatial axis {axis} (input spatial size {tuple(size)})")
        if n == 0:
            raise ValueError(f"{fn}: {mode} padding needs a non-empty input, spatial size "
                             f"{tuple(size)}")


def pad(x: np.ndarray, pads, mode: str) -> np.ndarray:
    """x (N, C, *spatial) padded by (before, after) pairs per spatial axis; a new array."""
    for axis, (b, a) in enumerate(pads):
        if b or a:
            x = np.take(x, source_index(x.shape[2 + axis], b, a, mode), axis=2 + axis)
    return x


def fold(g: np.ndarray, pads, mode: str) -> np.ndarray:
    """The adjoint of `pad`: the gradient of the padded array folded onto the unpadded one."""
    for axis in reversed(range(len(pads))):
        b, a = pads[axis]
        if not (b or a):
            continue
        ax = 2 + axis
        n = g.shape[ax] - b - a
        index = source_index(n, b, a, mode)
        folded = np.array(np.take(g, np.arange(b, b + n), axis=ax))
        border = [j for j in range(len(index)) if not b <= j < b + n]
        lead = (slice(None),) * ax
        for j in border:
            folded[lead + (index[j],)] += g[lead + (j,)]
        g = folded
    return g
