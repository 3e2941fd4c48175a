"""Weight-level (unstructured and N:M) sparsity of one linear layer, from its Gram statistics.

A layer computes ``T = B Wᵀ`` (+ bias): ``W`` is m × n (one row per output, one column per input
column of ``B`` — im2col columns for a convolution), and calibration gave ``G = B_augᵀ B_aug``
(``B_aug = [B, 1]`` when the layer has a bias that can absorb a mean shift; the constant column
is last). Sparsifying zeroes weights; each output row r keeps a column set ``K_r``.

**Re-fit** (``refit_rows``). Row r's remaining weights minimise the change of its own output on
the calibration rows, the bias taking up the mean of what was removed:

    v = argmin ‖B w_r − B_K' v‖² + ρ Σ_{j∈K} var_j (v_j − w_rj)²,   K' = K_r ∪ {const}
    ⇒ (G_K'K' + ρ V_K') v = G_K',: w_r + ρ V_K' w_r,K'

(``V`` = diag of the column variances, 0 on the constant column; ρ = 0 is plain least squares,
ρ > 0 shrinks toward the original weights where the samples are few — the same default as the
channel re-fit, :data:`onnxprune.solvers.lstsq.PLENTIFUL`). A jitter of 1e-10 × each column's
own ``G_jj``, also toward the original weights, decides what the samples leave undetermined
(duplicate im2col columns of zero padding) in favour of the old values.
Rows are solved in batches of equal ``|K_r|``.

**Selection.**

* ``magnitude`` (Zhu & Gupta 2017): zero the weights of smallest ``|w|`` — per layer for
  unstructured sparsity, per row and group of M for N:M.
* ``obs`` (optimal brain surgeon, solved column by column as in SparseGPT, Frantar & Alistarh
  2023): with ``H`` the Gram of the weight columns after taking out the intercept (the Schur
  complement ``G_ww − g gᵀ/N``), damped (``+ λ·mean diag · I``), and ``U`` the upper Cholesky
  factor of ``H⁻¹``, the columns are visited left to right; removing ``w_rj`` costs
  ``w_rj² / U_jj²`` (the output error it adds once the later columns compensate) and its error
  ``(w_rj − q_rj)/U_jj`` is propagated to the later columns of the row by ``U_j,j+1:``. The mask is
  chosen on the *updated* weights block by block (8 columns; for N:M at the start of every
  group), so earlier removals are paid for before later ones are chosen. The damping is the
  mean diagonal itself (not SparseGPT's 1 %): see ``OBS_DAMP``. The update only serves
  the choice: the kept weights are then re-fitted exactly (above), or left at their original
  values with ``reweight=False``.

**N:M** groups are M consecutive *input channels* at the same kernel position (for a k×k
convolution, columns ``c·k² + p`` for c in the group; for a linear layer, M consecutive inputs):
the layout sparse tensor cores read (the GEMM's reduction axis). In each full group exactly N
weights are kept; a last, shorter group keeps ``min(N, its size)``.

**Budget across layers** (``global_sparsities``): instead of every layer at the same sparsity,
one threshold on the relative OBS saliency ``w_rj² / [H⁻¹]_jj / ‖T‖²`` (the fraction of the
layer's output energy lost by removing that one weight) over all layers; each layer's sparsity is
the share of its weights below it, capped at ``max_layer``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import scipy.linalg

#: Columns per block of the OBS pass (the mask is chosen per block, on updated weights). Small
#: blocks choose later removals on weights that already compensate earlier ones. Measured on six
#: reference models at sparsity 0.5 and 0.75 (global allocation, held-out worst cosine, mean of
#: the 12 cells): blocks of 8 0.910, of 32 0.901, of 128 0.888; magnitude 0.889, and blocks of 8
#: beat magnitude on all 12 cells.
OBS_BLOCK = 8
#: Damping of the OBS Hessian, relative to its mean diagonal. SparseGPT's 1 % fitted the
#: calibration rows' correlations too closely (im2col columns of neighbouring pixels): on the
#: same cells, blocks of 128 with 1 % lost to magnitude on 7 of the 10 measured (the MLP was
#: not); with 0.1 and blocks of 8 the mean was 0.893.
OBS_DAMP = 1.0
#: Damping of the saliencies that split a global budget among layers.
ALLOCATION_DAMP = 0.01
#: Jitter of the row re-fit toward the original weights, relative to each column's own diagonal.
REFIT_JITTER = 1e-10
#: Elements of the stacked Gram sub-matrices solved at once.
_BATCH_ELEMENTS = 1 << 24


def nm_groups(n_channels: int, g: int, m: int) -> np.ndarray:
    """Group id of every column (channel-major, ``g`` columns per channel): M consecutive
    channels at the same position within the channel's ``g`` columns form one group."""
    c = np.arange(n_channels * g) // g
    p = np.arange(n_channels * g) % g
    per_pos = -(-n_channels // m)
    return p * per_pos + c // m


def kept_count(size: int, sparsity: float) -> int:
    """Weights kept of ``size`` at ``sparsity``: round((1 − s)·size)."""
    return int(min(size, max(0, math.floor((1.0 - sparsity) * size + 0.5))))


def _group_slices(groups: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """A column order in which every group is consecutive, and each group's positions in it."""
    order = np.lexsort((np.arange(len(groups)), groups))
    sorted_ids = groups[order]
    bounds = np.flatnonzero(np.diff(sorted_ids)) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [len(groups)]])
    return order, [np.arange(a, b) for a, b in zip(starts, ends)]


def _nm_keep_rows(scores: np.ndarray, n: int) -> np.ndarray:
    """Per row, True at the ``min(n, width)`` highest scores of a group's columns."""
    width = scores.shape[1]
    keep = np.zeros(scores.shape, dtype=bool)
    if n >= width:
        keep[:] = True
        return keep
    top = np.argsort(-scores, axis=1, kind="stable")[:, :n]
    np.put_along_axis(keep, top, True, axis=1)
    return keep


def magnitude_mask(W: np.ndarray, sparsity: float = 0.0, nm: tuple[int, int] | None = None,
                   groups: np.ndarray | None = None,
                   frozen: np.ndarray | None = None) -> np.ndarray:
    """Kept weights (True) by magnitude: the ``kept_count`` largest ``|w|`` of the layer, or per
    row the N largest of every N:M group (``groups``: group id per column). ``frozen`` weights
    (already zero from an earlier round) are removed first."""
    score = np.abs(W).astype(np.float64)
    if frozen is not None:
        score = np.where(frozen, -1.0, score)
    if nm is not None:
        keep = np.zeros(W.shape, dtype=bool)
        _, slices = _group_slices(groups)
        order = np.lexsort((np.arange(len(groups)), groups))
        for sl in slices:
            cols = order[sl]
            keep[:, cols] = _nm_keep_rows(score[:, cols], nm[0])
        return keep
    k = kept_count(W.size, sparsity)
    flat = score.reshape(-1)
    keep = np.zeros(W.size, dtype=bool)
    keep[np.argsort(-flat, kind="stable")[:k]] = True
    return keep.reshape(W.shape)


def activation_mask(W: np.ndarray, G: np.ndarray, has_const: bool, sparsity: float = 0.0,
                    nm: tuple[int, int] | None = None, groups: np.ndarray | None = None,
                    frozen: np.ndarray | None = None) -> np.ndarray:
    """Kept weights (True) by ``|w_rj|·σ_j`` (σ_j: the input column's standard deviation): the
    output change of removing one weight alone, ignoring correlations (Wanda-like)."""
    scale = np.sqrt(column_variances(G, has_const))
    return magnitude_mask(W * scale[None, :], sparsity, nm, groups, frozen)


def weight_hessian(G: np.ndarray, has_const: bool, ridge: float = 0.0) -> np.ndarray:
    """The Gram of the weight columns with the intercept taken out (Schur complement), plus the
    re-fit's ridge ``ρ·diag(var)``: the curvature of the objective the re-fit minimises."""
    if not has_const or G[-1, -1] <= 0:
        H = G[:G.shape[0] - int(has_const), :G.shape[0] - int(has_const)].copy()
    else:
        c = G.shape[0] - 1
        H = G[:c, :c] - np.outer(G[:c, c], G[:c, c]) / G[c, c]
    if ridge > 0:
        H[np.diag_indices_from(H)] += ridge * np.maximum(np.diag(H), 0.0)
    return H


def _inverse_cholesky(H: np.ndarray, damp: float) -> np.ndarray:
    """Upper Cholesky factor U of (H + λI)⁻¹ (``UᵀU = (H + λI)⁻¹``); columns with no signal are
    given unit curvature."""
    H = H.copy()
    dead = np.diag(H) <= 0
    H[dead, :] = 0.0
    H[:, dead] = 0.0
    H[dead, dead] = 1.0
    lam = damp * float(np.mean(np.diag(H))) or damp
    for _ in range(8):
        try:
            L = np.linalg.cholesky(H + lam * np.eye(len(H)))
            break
        except np.linalg.LinAlgError:
            lam *= 10.0
    else:  # pragma: no cover - a Gram matrix plus 1e7·damp·mean(diag) is positive definite
        raise np.linalg.LinAlgError("OBS Hessian is not positive definite")
    Linv = scipy.linalg.solve_triangular(L, np.eye(len(H)), lower=True)
    Hinv = Linv.T @ Linv
    return np.linalg.cholesky(Hinv).T


def obs_mask(W: np.ndarray, G: np.ndarray, has_const: bool, sparsity: float = 0.0,
             nm: tuple[int, int] | None = None, groups: np.ndarray | None = None,
             frozen: np.ndarray | None = None, damp: float = OBS_DAMP,
             block: int = OBS_BLOCK, ridge: float = 0.0) -> np.ndarray:
    """Kept weights (True) chosen by the OBS saliency on the column-by-column updated weights
    (module docstring). Unstructured: exactly ``kept_count(W.size, sparsity)`` kept (unless
    ``frozen`` removals exceed it), the removals spread over blocks in proportion to their
    width; N:M: exactly N per full group and row."""
    m, n = W.shape
    if nm is not None:  # blocks of whole groups, each group consecutive in ``order``
        order, slices = _group_slices(groups)
        starts = {int(sl[0]): len(sl) for sl in slices}
        bounds = [0]
        for sl in slices:
            if int(sl[-1]) + 1 - bounds[-1] >= block or int(sl[-1]) + 1 == n:
                bounds.append(int(sl[-1]) + 1)
    else:
        order, starts = np.arange(n), {}
        bounds = list(range(0, n, block)) + [n]
    U = _inverse_cholesky(weight_hessian(G, has_const, ridge)[np.ix_(order, order)], damp)
    Wp = W[:, order].astype(np.float64)
    fz = None if frozen is None else frozen[:, order]
    remove = np.zeros((m, n), dtype=bool)
    total_remove = m * n - kept_count(m * n, sparsity) if nm is None else 0
    removed = 0
    for i1, i2 in zip(bounds[:-1], bounds[1:]):
        W1 = Wp[:, i1:i2].copy()
        d = np.diag(U)[i1:i2]
        R1 = remove[:, i1:i2]  # a view
        if nm is None:
            quota = (total_remove - removed if i2 == n
                     else int(round(total_remove * i2 / n)) - removed)
            score = W1 ** 2 / d[None, :] ** 2
            if fz is not None:
                score = np.where(fz[:, i1:i2], -1.0, score)
                quota = max(quota, int(fz[:, i1:i2].sum()))
            quota = min(max(quota, 0), W1.size)
            chosen = np.zeros(W1.size, dtype=bool)
            chosen[np.argsort(score.reshape(-1), kind="stable")[:quota]] = True
            R1[:] = chosen.reshape(W1.shape)
            removed += quota
        E = np.zeros_like(W1)
        for j in range(i2 - i1):
            col = i1 + j
            width = starts.get(col)
            if width:  # an N:M group starts here: choose on the updated weights
                sc = W1[:, j:j + width] ** 2 / d[None, j:j + width] ** 2
                R1[:, j:j + width] = ~_nm_keep_rows(sc, nm[0])
            w = W1[:, j]
            q = np.where(R1[:, j], 0.0, w)
            err = (w - q) / U[col, col]
            W1[:, j:] -= np.outer(err, U[col, col:i2])
            E[:, j] = err
        Wp[:, i1:i2] = W1
        Wp[:, i2:] -= E @ U[i1:i2, i2:]
    keep = np.empty((m, n), dtype=bool)
    keep[:, order] = ~remove
    return keep


def column_variances(G: np.ndarray, has_const: bool) -> np.ndarray:
    """Variance (times rows) of every weight column: ``diag`` of the Schur complement."""
    nw = G.shape[0] - int(has_const)
    if not has_const or G[-1, -1] <= 0:
        return np.maximum(np.diag(G)[:nw].copy(), 0.0)
    return np.maximum(np.diag(G)[:nw] - G[:nw, -1] ** 2 / G[-1, -1], 0.0)


def _augmented(W: np.ndarray, has_const: bool) -> np.ndarray:
    W = W.astype(np.float64)
    return np.hstack([W, np.zeros((W.shape[0], 1))]) if has_const else W


def refit_rows(W: np.ndarray, G: np.ndarray, keep: np.ndarray, has_const: bool,
               ridge: float = 0.0, H: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray | None]:
    """Re-fit every row's kept weights (module docstring). ``H`` (n_aug × m): the cross moment
    ``B_augᵀ T`` of a target other than the layer's own output ``T = B Wᵀ`` (sequential mode:
    the original model's output); the ridge always pulls toward ``W``. Returns the new weight
    matrix (zeros off the mask) and the bias change per row (None without a constant column)."""
    m, n = W.shape
    nc = n + int(has_const)
    Waug = _augmented(W, has_const)
    GW = Waug @ G if H is None else H.T  # row r: B_augᵀ t_r
    pen = np.zeros(nc)
    pen[:n] = ridge * column_variances(G, has_const)
    jitter = REFIT_JITTER * np.maximum(np.diag(G), 1e-30)
    if has_const:
        jitter[n] = 0.0  # the intercept is always determined
    out = np.zeros((m, nc))
    counts = keep.sum(axis=1)
    for k in np.unique(counts):
        rows = np.flatnonzero(counts == k)
        cols = np.nonzero(keep[rows])[1].reshape(len(rows), k)
        if has_const:
            cols = np.hstack([cols, np.full((len(rows), 1), n)])
        kk = cols.shape[1]
        if kk == 0:
            continue
        step = max(1, _BATCH_ELEMENTS // (kk * kk))
        for a in range(0, len(rows), step):
            r, c = rows[a:a + step], cols[a:a + step]
            A = G[c[:, :, None], c[:, None, :]]
            d = pen[c] + jitter[c]
            A[:, np.arange(kk), np.arange(kk)] += d
            w0 = np.take_along_axis(Waug[r], c, axis=1)
            rhs = np.take_along_axis(GW[r], c, axis=1) + d * w0
            v = np.linalg.solve(A, rhs[:, :, None])[:, :, 0]
            out[r[:, None], c] = v
    bias = out[:, n].copy() if has_const else None
    return out[:, :n], bias


def masked(W: np.ndarray, keep: np.ndarray) -> np.ndarray:
    return np.where(keep, W, 0.0)


def target_moments(W: np.ndarray, G: np.ndarray, has_const: bool) -> tuple[np.ndarray, float]:
    """``H = B_augᵀ T`` and ``‖T‖²`` for the layer's own output ``T = B Wᵀ``."""
    Wa = _augmented(W, has_const)
    H = G @ Wa.T
    return H, float(np.sum(Wa.T * H))


def output_error(G: np.ndarray, H: np.ndarray, t_norm2: float, W_new: np.ndarray,
                 bias: np.ndarray | None, has_const: bool) -> float:
    """Relative error of the new layer against its target on the calibration rows,
    ``‖T − B_aug v_aug‖² / ‖T‖² = (‖T‖² − 2 tr(Vᵀ H) + tr(V G Vᵀ)) / ‖T‖²`` (statistics only)."""
    V = W_new.astype(np.float64)
    if has_const:
        V = np.hstack([V, (np.zeros(len(V)) if bias is None else bias)[:, None]])
    num = t_norm2 - 2.0 * float(np.sum(V.T * H)) + float(np.einsum("ij,jk,ik->", V, G, V))
    return max(num, 0.0) / t_norm2 if t_norm2 > 0 else 0.0


def global_sparsities(weights: Sequence[np.ndarray], grams: Sequence[np.ndarray],
                      has_const: Sequence[bool], sparsity: float,
                      max_layer: float = 0.95,
                      ridges: Sequence[float] | None = None) -> list[float]:
    """Per-layer sparsities whose weighted mean is ``sparsity``, from one threshold on the
    relative OBS saliency (module docstring)."""
    scores, sizes = [], []
    for W, G, hc, rho in zip(weights, grams, has_const, ridges or [0.0] * len(weights)):
        H = weight_hessian(G, hc)
        U = _inverse_cholesky(weight_hessian(G, hc, rho), ALLOCATION_DAMP)
        hinv_diag = np.sum(U ** 2, axis=0)  # diag(UᵀU)
        energy = float(np.einsum("ij,jk,ik->", W, H, W)) or 1.0
        scores.append((W ** 2 / hinv_diag[None, :] / energy).reshape(-1))
        sizes.append(W.size)
    total = sum(sizes)
    n_remove = total - kept_count(total, sparsity)
    caps = [int(math.floor(max_layer * s)) for s in sizes]
    # Water-filling: the n_remove lowest scores overall, no layer above its cap.
    removed = [0] * len(sizes)
    sorted_scores = [np.sort(s) for s in scores]
    lo, hi = 0.0, max(float(s[-1]) for s in sorted_scores if len(s)) * 2 + 1.0
    for _ in range(200):
        mid = (lo + hi) / 2
        count = sum(min(int(np.searchsorted(s, mid, side="right")), c)
                    for s, c in zip(sorted_scores, caps))
        if count < n_remove:
            lo = mid
        else:
            hi = mid
    removed = [min(int(np.searchsorted(s, hi, side="right")), c)
               for s, c in zip(sorted_scores, caps)]
    extra = sum(removed) - n_remove
    for i in sorted(range(len(sizes)), key=lambda i: -removed[i]):  # trim ties deterministically
        if extra <= 0:
            break
        cut = min(extra, removed[i])
        removed[i] -= cut
        extra -= cut
    return [r / s if s else 0.0 for r, s in zip(removed, sizes)]
