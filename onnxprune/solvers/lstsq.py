"""Least-squares re-fitting of the consumers, and the objective, from Gram statistics alone.

For a consumer with statistics ``G = BᵀB``, ``H = BᵀT`` and a kept column set ``S`` (the kept
channels' columns plus, if present, the constant column):

* best new weights:   ``X_S = argmin_X ‖T − B_S X‖² = G_SS⁻¹ H_S``  (X is |S| × m; the new
  weight matrix is ``X_Sᵀ`` without its constant row, the constant row is the bias change);
* explained energy:   ``F(S) = ‖T‖² − min_X ‖T − B_S X‖² = tr(H_Sᵀ G_SS⁻¹ H_S)``;
* residual of any X:  ``‖T − B_S X‖² = ‖T‖² − 2·tr(Xᵀ H_S) + tr(Xᵀ G_SS X)``.

The re-fit is regularised toward the consumer's *own* weights on the kept columns, ``X₀``
(bias change 0): ``X = (G_SS + λI)⁻¹ (H_S + λ X₀)`` with a small *relative* ridge
``λ = ridge · tr(G_SS)/|S|`` (Cholesky; a pseudo-inverse step from X₀ if that fails). Where the
samples determine the fit this is least squares up to O(ridge); in directions they leave
undetermined — fewer rows than kept columns (a classifier after global pooling sees one row per
sample), dead or collinear channels — the original weights are kept instead of being zeroed.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

from onnxprune.solvers.problem import ConsumerStats, Problem

DEFAULT_RIDGE = 1e-6


def _kept_columns(stats: ConsumerStats, kept: np.ndarray) -> np.ndarray:
    cols = stats.columns_of(kept)
    if stats.has_const:
        cols = np.append(cols, stats.const_index)
    return cols


def psd_solve(A: np.ndarray, B: np.ndarray, ridge: float = DEFAULT_RIDGE,
              prior: np.ndarray | None = None) -> np.ndarray:
    """Solve ``(A + λI) X = B + λ·prior`` for symmetric PSD ``A`` (relative ridge λ above).

    With a ``prior`` the ridge pulls toward it instead of toward zero: directions the data
    determine are fitted, directions it leaves undetermined (fewer rows than kept columns, dead
    channels) keep the prior's values.
    """
    n = A.shape[0]
    if n == 0:
        return np.zeros((0,) + B.shape[1:])
    scale = float(np.trace(A)) / n
    lam = ridge * scale if scale > 0 else ridge
    rhs = B if prior is None else B + lam * prior
    try:
        factor = scipy.linalg.cho_factor(A + lam * np.eye(n), lower=False, check_finite=False)
        return scipy.linalg.cho_solve(factor, rhs, check_finite=False)
    except (np.linalg.LinAlgError, scipy.linalg.LinAlgError):
        if prior is None:
            return pinvh(A) @ B
        # minimum change from the prior: prior + A⁺(B − A·prior)
        return prior + pinvh(A) @ (B - A @ prior)


def pinvh(A: np.ndarray, rtol: float = 1e-10) -> np.ndarray:
    """Pseudo-inverse of a symmetric PSD matrix, eigenvalues below ``rtol·max`` dropped."""
    w, V = np.linalg.eigh(A)
    cutoff = rtol * max(float(w.max(initial=0.0)), 0.0)
    inv = np.where(w > cutoff, 1.0 / np.where(w > cutoff, w, 1.0), 0.0)
    return (V * inv) @ V.T


def refit(problem: Problem, kept: np.ndarray, ridge: float = DEFAULT_RIDGE
          ) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Re-fit every consumer on the kept channels.

    Returns, per consumer, ``(W_new, bias_delta)`` with ``W_new`` of shape (m, |kept cols|) in the
    consumer's column order and ``bias_delta`` (m,) or None when there is no constant column.
    """
    out = []
    for stats in problem.consumers:
        cols = _kept_columns(stats, kept)
        D = problem.ridge_diag(stats)[cols]
        X0 = np.zeros((len(cols), stats.H.shape[1]))
        n_w = len(cols) - int(stats.has_const)
        X0[:n_w] = stats.weight[:, cols[:n_w]].T  # prior: the consumer's own (sliced) weights
        X = psd_solve(stats.G[np.ix_(cols, cols)] + np.diag(D), stats.H[cols] + D[:, None] * X0,
                      ridge, prior=X0)
        if stats.has_const:
            out.append((X[:-1].T.copy(), X[-1].copy()))
        else:
            out.append((X.T.copy(), None))
    return out


def sliced(problem: Problem, kept: np.ndarray) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """No re-fit: each consumer keeps its original weights on the kept columns, bias unchanged."""
    return [(stats.weight[:, stats.columns_of(kept)].copy(), None) for stats in problem.consumers]


def residuals(problem: Problem, kept: np.ndarray,
              fits: list[tuple[np.ndarray, np.ndarray | None]]) -> np.ndarray:
    """``‖T_q − B_q,S X_q‖²`` for each consumer, from statistics."""
    res = []
    for stats, (W, bias) in zip(problem.consumers, fits):
        cols = stats.columns_of(kept)
        X = W.T
        if stats.has_const:
            cols = np.append(cols, stats.const_index)
            b = np.zeros(W.shape[0]) if bias is None else bias
            X = np.vstack([X, b[None, :]])
        G = stats.G[np.ix_(cols, cols)]
        r = stats.t_norm2 - 2.0 * float(np.sum(X * stats.H[cols])) + float(np.sum(X * (G @ X)))
        res.append(max(r, 0.0))
    return np.asarray(res)


def relative_error(problem: Problem, kept: np.ndarray,
                   fits: list[tuple[np.ndarray, np.ndarray | None]]) -> float:
    """``Σ_q ‖T_q − fit_q‖² / Σ_q ‖T_q‖²`` — 0 when nothing changed, 1 when all is lost."""
    total = sum(s.t_norm2 for s in problem.consumers)
    if total <= 0:
        return 0.0
    return float(residuals(problem, kept, fits).sum() / total)


def objective(problem: Problem, kept: np.ndarray) -> float:
    """``F(S) = Σ_q tr(H_Sᵀ G_SS⁺ H_S)`` with the exact pseudo-inverse (no ridge)."""
    total = 0.0
    for stats in problem.consumers:
        cols = _kept_columns(stats, kept)
        if cols.size == 0:
            continue
        Hs = stats.H[cols]
        total += float(np.sum(Hs * (pinvh(stats.G[np.ix_(cols, cols)]) @ Hs)))
    return total
