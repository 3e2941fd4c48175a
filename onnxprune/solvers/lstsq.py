"""Least-squares re-fitting of the consumers, and the objective, from Gram statistics alone.

For a consumer with statistics ``G = BᵀB``, ``H = BᵀT`` and a kept column set ``S`` (the kept
channels' columns plus, if present, the constant column):

* best new weights:   ``X_S = argmin_X ‖T − B_S X‖² = G_SS⁻¹ H_S``  (X is |S| × m; the new
  weight matrix is ``X_Sᵀ`` without its constant row, the constant row is the bias change);
* explained energy:   ``F(S) = ‖T‖² − min_X ‖T − B_S X‖² = tr(H_Sᵀ G_SS⁻¹ H_S)``;
* residual of any X:  ``‖T − B_S X‖² = ‖T‖² − 2·tr(Xᵀ H_S) + tr(Xᵀ G_SS X)``.

Regularised re-fit. The intercept (constant column) is left unpenalised by centring:
``A = G_ww − s sᵀ/N``, ``Hc = H_w − s h_cᵀ/N`` (s = column sums, N = rows, h_c = Tᵀ1). The weights
are shrunk toward the consumer's *own* weights on the kept columns ``X₀`` — not toward zero —
with a penalty ``ρ·var_i`` per column (ridge on standardised inputs):

    X_w = X₀ + D⁻¹ (Ã + ρI)⁻¹ D⁻¹ (Hc − A X₀),   Ã = D⁻¹ A D⁻¹,  D = diag(√var),
    bias change = (h_c − sᵀ X_w) / N.

One eigendecomposition ``Ã = V Λ Vᵀ`` gives every ρ at once. With ``P = Vᵀ D⁻¹ (Hc − A X₀)`` the
residual is ``RSS(ρ) = ‖Y‖² − Σ_i ‖P_i‖² (λ_i + 2ρ)/(λ_i + ρ)²`` (Y = T − B X₀ centred) and the
effective degrees of freedom ``df(ρ) = 1 + Σ_i λ_i/(λ_i + ρ)``. By default ρ minimises generalised
cross-validation ``RSS(ρ) / (1 − df(ρ)/n)²`` over a grid (n = rows). With many rows per column it
picks ρ ≈ 0 (plain least squares); when the kept columns outnumber the samples (a classifier
after global pooling sees one row per sample) it shrinks toward the original weights instead of
fitting the calibration set exactly. Directions with no data (λ_i ≈ 0) always keep X₀.
"""

from __future__ import annotations

import numpy as np

from onnxprune.solvers.problem import ConsumerStats, Problem

#: ρ candidates for generalised cross-validation (relative: Ã has mean eigenvalue 1).
RIDGE_GRID = (0.0,) + tuple(float(10.0 ** k) for k in range(-6, 2))
_EIG_RTOL = 1e-10


def _kept_columns(stats: ConsumerStats, kept: np.ndarray) -> np.ndarray:
    cols = stats.columns_of(kept)
    if stats.has_const:
        cols = np.append(cols, stats.const_index)
    return cols


def pinvh(A: np.ndarray, rtol: float = _EIG_RTOL) -> np.ndarray:
    """Pseudo-inverse of a symmetric PSD matrix, eigenvalues below ``rtol·max`` dropped."""
    w, V = np.linalg.eigh(A)
    cutoff = rtol * max(float(w.max(initial=0.0)), 0.0)
    inv = np.where(w > cutoff, 1.0 / np.where(w > cutoff, w, 1.0), 0.0)
    return (V * inv) @ V.T


def ridge_fit(stats: ConsumerStats, kept: np.ndarray, ridge: float | None = None
              ) -> tuple[np.ndarray, np.ndarray | None, float]:
    """Regularised re-fit of one consumer (module docstring). Returns ``(W_new, bias_delta, ρ)``;
    ``ridge=None`` chooses ρ by generalised cross-validation, a number fixes it (0: least
    squares, undetermined directions kept at the original weights)."""
    w_cols = stats.columns_of(kept)
    G, H = stats.G, stats.H
    A = G[np.ix_(w_cols, w_cols)]
    Hw = H[w_cols]
    X0 = stats.weight[:, w_cols].T  # (p, m)
    if stats.has_const:
        c = stats.const_index
        N = float(G[c, c])
        s, hc = G[w_cols, c], H[c]
        A = A - np.outer(s, s) / N
        Hc = Hw - np.outer(s, hc) / N
        t2c = stats.t_norm2 - float(hc @ hc) / N
    else:
        Hc, t2c = Hw, stats.t_norm2
    var = np.diag(A).copy()
    live = np.nonzero(var > 1e-12 * max(float(var.max(initial=0.0)), np.finfo(float).tiny))[0]
    X = X0.copy()
    rho = 0.0 if ridge is None else float(ridge)
    if live.size:
        dinv = 1.0 / np.sqrt(var[live])
        At = A[np.ix_(live, live)] * dinv[:, None] * dinv[None, :]
        Ht = (Hc[live] - A[live] @ X0) * dinv[:, None]
        lam, V = np.linalg.eigh(At)
        ok = lam > _EIG_RTOL * max(float(lam.max(initial=0.0)), np.finfo(float).tiny)
        lam = np.where(ok, lam, 0.0)
        P = V.T @ Ht
        p2 = np.einsum("im,im->i", P, P)
        if ridge is None and stats.rows > 0:
            y2 = t2c - 2.0 * float(np.sum(X0 * Hc)) + float(np.sum(X0 * (A @ X0)))
            best = np.inf
            for r in RIDGE_GRID:
                den = np.where(ok, lam + r, 1.0)
                rss = y2 - float(np.sum(np.where(ok, p2 * (lam + 2 * r) / den ** 2, 0.0)))
                df = float(np.sum(np.where(ok, lam / den, 0.0))) + int(stats.has_const)
                if df >= stats.rows:
                    continue
                gcv = max(rss, 0.0) / (1.0 - df / stats.rows) ** 2
                if gcv < best * (1 - 1e-9):
                    best, rho = gcv, r
        coef = np.where(ok, 1.0 / np.where(ok, lam + rho, 1.0), 0.0)
        X[live] = X0[live] + dinv[:, None] * (V @ (P * coef[:, None]))
    bias = (hc - s @ X) / N if stats.has_const else None
    return X.T.copy(), bias, rho


#: Rows per column below which a consumer's re-fit is shrunk by default (``ridge="auto"``).
PLENTIFUL = 20
#: ρ of that default shrinkage. A classifier after global pooling sees one row per sample: with
#: a few hundred samples and hundreds of kept columns the plain re-fit reproduces the calibration
#: outputs almost exactly and generalises worse than not re-fitting at all (EfficientNet-Lite0's
#: 1,280→1,000 head, 640 columns kept, unseen photos: cosine 0.77 re-fitted, 0.82 sliced, 0.85
#: with ρ = 1; GCV picks ρ ≈ 0 there, as n < p and the crops are not independent).
FEW_ROWS_RIDGE = 1.0


def default_ridges(problem: Problem) -> list[float]:
    """``ridge="auto"``: ``FEW_ROWS_RIDGE`` for a consumer with fewer than ``PLENTIFUL`` rows per
    column (all its columns: the choice does not depend on the kept set), 0 otherwise."""
    return [FEW_ROWS_RIDGE if 0 < s.rows < PLENTIFUL * s.G.shape[0] else 0.0
            for s in problem.consumers]


def choose_ridge(stats: ConsumerStats, kept: np.ndarray, plentiful: int = PLENTIFUL) -> float:
    """ρ for a consumer by generalised cross-validation of the re-fit on ``kept``; 0 when there are
    at least ``plentiful`` rows per column (GCV then picks ≈ 0, and the eigendecomposition of a
    large Gram is skipped). (On *all* columns GCV would be meaningless: the original weights fit
    the consumer's own output exactly.)"""
    n_cols = len(stats.columns_of(kept)) + int(stats.has_const)
    if stats.rows <= 0 or stats.rows >= plentiful * n_cols:
        return 0.0
    return ridge_fit(stats, kept, None)[2]


def augment(stats: ConsumerStats, rho: float) -> ConsumerStats:
    """Statistics with the ridge-toward-the-original-weights penalty folded in as data.

    Appending rows ``√(ρ·var_i)·e_i`` with targets ``√(ρ·var_i)·W_i`` (the consumer's own weight
    for column i) to (B, T) gives ``G' = G + ρV``, ``H' = H + ρV·Wᵀ``, ``‖T'‖² = ‖T‖² + ρΣ var_i‖W_i‖²``
    (V = diag(var), 0 on the constant column). Least squares on the augmented data is the
    regularised re-fit, and the greedy gain of a channel becomes its data gain plus, once the data
    no longer discriminates, ``ρ·var_c·‖W_c‖²`` — the size of its contribution to the output.
    """
    if rho <= 0:
        return stats
    n = stats.G.shape[0]
    nw = n - int(stats.has_const)
    G = stats.G
    if stats.has_const:
        c = stats.const_index
        var = np.diag(G)[:nw] - G[:nw, c] ** 2 / G[c, c]
    else:
        var = np.diag(G)[:nw].copy()
    d = rho * np.maximum(var, 0.0)
    G2 = G.copy()
    G2[np.arange(nw), np.arange(nw)] += d
    H2 = stats.H.copy()
    H2[:nw] += d[:, None] * stats.weight.T
    t2 = stats.t_norm2 + float(np.sum(d[:, None] * stats.weight.T ** 2))
    return ConsumerStats(G=G2, H=H2, t_norm2=t2, channels=stats.channels, g=stats.g,
                         has_const=stats.has_const, weight=stats.weight,
                         out_scale=stats.out_scale, rows=stats.rows,
                         sensitivity=stats.sensitivity)


def regularized(problem: Problem, rhos: list[float]) -> Problem:
    """The problem with consumer q's penalty ρ_q folded into its statistics (:func:`augment`)."""
    consumers = tuple(augment(s, r) for s, r in zip(problem.consumers, rhos))
    return Problem(n_channels=problem.n_channels, consumers=consumers, segments=problem.segments,
                   quotas=problem.quotas, forced=problem.forced)


def refit(problem: Problem, kept: np.ndarray, ridge: float | None = None
          ) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Re-fit every consumer on the kept channels (see :func:`ridge_fit`).

    Returns, per consumer, ``(W_new, bias_delta)`` with ``W_new`` of shape (m, |kept cols|) in the
    consumer's column order and ``bias_delta`` (m,) or None when there is no constant column.
    """
    return [ridge_fit(stats, kept, ridge)[:2] for stats in problem.consumers]


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
