"""im2col for convolution consumers (NumPy only).

A convolution with weight ``W`` (M × C × k₁ × … × k_n) is a linear map of its input patches:
``Y[n, :, o] = W_flat · patch(n, o)`` with ``W_flat`` = W reshaped to (M, C·k₁⋯k_n) and
``patch(n, o)[c·K + j] = X_pad[n, c, o·s + j·d]`` (K = k₁⋯k_n, j the row-major kernel offset,
s the strides, d the dilations). Stacking the patches of (sampled) output positions as rows gives
the matrix ``B`` of the selection problem, with g = K columns per input channel.

Only the sampled positions are gathered (a strided window *view* is indexed), so memory is
rows × C·K, independent of the image size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def conv_pads(node_auto_pad, pads, in_spatial: Sequence[int], kernel: Sequence[int],
              strides: Sequence[int], dilations: Sequence[int]) -> list[tuple[int, int]]:
    """Explicit (begin, end) padding per spatial axis, resolving ``auto_pad``."""
    auto = node_auto_pad.decode() if isinstance(node_auto_pad, bytes) else str(node_auto_pad)
    nd = len(kernel)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        out = []
        for i in range(nd):
            o = math.ceil(in_spatial[i] / strides[i])
            total = max((o - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - in_spatial[i], 0)
            small = total // 2
            out.append((small, total - small) if auto == "SAME_UPPER" else (total - small, small))
        return out
    if auto == "VALID" or not pads:
        return [(0, 0)] * nd
    pads = [int(p) for p in pads]
    return [(pads[i], pads[i + nd]) for i in range(nd)]


def im2col(x: np.ndarray, kernel: Sequence[int], strides: Sequence[int],
           dilations: Sequence[int], pads: Sequence[tuple[int, int]],
           select: Callable[[int, int], np.ndarray]) -> np.ndarray:
    """Rows (sampled output positions) × (C·K) patch matrix of ``x`` (N, C, *spatial).

    ``select(N, P)`` returns the flat indices ``n·P + p`` of the rows to keep, P being the number
    of output positions per sample.
    """
    nd = len(kernel)
    xp = np.pad(x, [(0, 0), (0, 0)] + [tuple(p) for p in pads])
    span = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    win = sliding_window_view(xp, span, axis=tuple(range(2, 2 + nd)))
    # win: (N, C, full_out..., span...) → apply strides and dilations as views
    idx = (slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides) + tuple(
        slice(None, None, d) for d in dilations)
    win = win[idx]
    out_spatial = win.shape[2:2 + nd]
    P = int(np.prod(out_spatial))
    flat = select(x.shape[0], P)
    n = flat // P
    pos = np.unravel_index(flat % P, out_spatial)
    patches = win[(n, slice(None)) + tuple(pos)]  # (R, C, k...)
    return patches.reshape(len(flat), -1)


def transposed_im2col(x: np.ndarray, kernel: Sequence[int], strides: Sequence[int],
                      dilations: Sequence[int], pads: Sequence[tuple[int, int]],
                      output_padding: Sequence[int],
                      select: Callable[[int, int], np.ndarray]) -> np.ndarray:
    """Rows × (C·K) patch matrix of a transposed convolution's input ``x`` (N, C, *spatial).

    A transposed convolution (weight ``C × M × k…``, stride s, dilation d, pads b/e, output
    padding a) is a plain convolution (stride 1, dilation d) of ``x`` upsampled by s (s − 1 zeros
    between elements), padded by ``d(k−1) − b`` before and ``d(k−1) − e + a`` after (a negative
    pad crops), with the spatially *flipped* kernel: ``Y[n, :, o] = W_flat · patch(n, o)`` where
    ``W_flat[m, c·K + j] = W[c, m, k−1−j]``. The patches are those of :func:`im2col` on that
    upsampled input."""
    nd = len(kernel)
    up = np.zeros(x.shape[:2] + tuple((i - 1) * s + 1 for i, s in zip(x.shape[2:], strides)),
                  x.dtype)
    up[(slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides)] = x
    around = [(d * (k - 1) - b, d * (k - 1) - e + a)
              for k, d, (b, e), a in zip(kernel, dilations, pads, output_padding)]
    crop = tuple(slice(max(-b, 0), up.shape[2 + i] - max(-e, 0)) for i, (b, e) in enumerate(around))
    up = up[(slice(None), slice(None)) + crop]
    return im2col(up, kernel, (1,) * nd, dilations, [(max(b, 0), max(e, 0)) for b, e in around],
                  select)
