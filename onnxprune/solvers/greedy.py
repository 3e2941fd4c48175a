"""Greedy channel selection for LayerInChange (Halabi, Lacoste-Julien & Srinivas, 2022).

Objective (per group, summed over its consumers q)::

    F(S) = Σ_q ‖T_q‖² − min_W ‖T_q − B_q,S W‖² = Σ_q tr(H_q,Sᵀ G_q,SS⁻¹ H_q,S)

which is weakly submodular, so greedy selection enjoys a ``1 − e^{−γ}`` guarantee.

Incremental form. Keep, for every consumer, the residual Gram and cross matrices after projecting
out the columns already selected::

    R = G − G_{:,S} G_SS⁻¹ G_{S,:}          H_r = H − G_{:,S} G_SS⁻¹ H_S

The marginal gain of channel c (its block J_c of g columns) is the energy of T explained by the
part of B_c orthogonal to B_S::

    Δ(c | S) = tr(H_r,Jᵀ R_JJ⁺ H_r,J)

and after choosing c both matrices are downdated by the Schur complement of block J::

    R ← R − R_{:,J} R_JJ⁺ R_{J,:}            H_r ← H_r − R_{:,J} R_JJ⁺ H_r,J

(exactly the block Gram–Schmidt step; no refactorisation from scratch). The gains of all candidate
blocks are evaluated at once with a batched eigendecomposition of the g×g diagonal blocks;
eigenvalues below ``rtol`` times the block's original scale count as zero (a channel already
explained by S gains nothing). A channel the consumer sees several times (the same tensor
concatenated with pooled copies of itself) is one candidate whose block J holds every copy's
columns. The constant column and the forced channels are projected out before the first step. Channels are picked subject to per-segment quotas (a partition matroid);
ties go to the lowest index.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg.blas import dgemm as _dgemm
from scipy.linalg.blas import dger as _dger

from onnxprune.solvers.problem import ConsumerStats, Problem

RTOL = 1e-9


class _ConsumerState:
    """Residual statistics of one consumer during the greedy run."""

    def __init__(self, stats: ConsumerStats, n_channels: int) -> None:
        self.stats = stats
        self.g = stats.g
        self.R = stats.G.copy()
        self.Hr = stats.H.copy()
        nb = stats.n_blocks
        # Position of each group channel among this consumer's column blocks (-1: not seen).
        self.pos = np.full(n_channels, -1, dtype=np.int64)
        self.pos[stats.channels] = np.arange(nb)
        diag = np.diag(stats.G)[: nb * self.g].reshape(nb, self.g)
        self.scale = np.maximum(diag.sum(axis=1) / self.g, np.finfo(float).tiny)
        # Channels this consumer sees more than once (a Concat of one tensor and its pooled
        # copies, SPPF): all their blocks are one candidate, J = every column of every copy.
        ids, counts = np.unique(stats.channels, return_counts=True)
        self.copies = {int(c): np.concatenate([np.arange(p * self.g, (p + 1) * self.g)
                                               for p in np.nonzero(stats.channels == c)[0]])
                       for c in ids[counts > 1]}

    def project_out(self, cols: np.ndarray, scale: float) -> float:
        """Project the columns ``cols`` out of the residual statistics; returns the target energy
        they explained, ``tr(H_r,Jᵀ R_JJ⁺ H_r,J)`` (the gain of picking them)."""
        if cols.size == 0:
            return 0.0
        Rjj = self.R[np.ix_(cols, cols)]
        w, V = np.linalg.eigh(Rjj)
        keep = w > RTOL * max(scale, np.finfo(float).tiny)
        if not np.any(keep):
            self.R[cols, :] = 0.0
            self.R[:, cols] = 0.0
            self.Hr[cols, :] = 0.0
            return 0.0
        # R_{:,J} R_JJ⁺ = (R_{:,J} V_k) diag(1/w_k) V_kᵀ
        U = self.R[:, cols] @ V[:, keep]
        Winv = 1.0 / w[keep]
        coef = V[:, keep].T @ self.Hr[cols]
        energy = float(np.sum(coef * coef * Winv[:, None]))
        if U.shape[1] == 1 and self.Hr.flags.c_contiguous and self.Hr.dtype == np.float64:
            _dger(-float(Winv[0]), coef[0], U[:, 0], a=self.Hr.T, overwrite_a=True)
        else:
            self.Hr -= (U * Winv) @ coef
        # R ← R − U diag(1/w) Uᵀ in place (one BLAS call, no n×n temporary): R is symmetric and
        # C-ordered, so its transpose is the same matrix in the Fortran order BLAS writes to.
        if U.shape[1] == 1:  # rank one (a 1×1 block): the cheaper outer-product update
            _dger(-float(Winv[0]), U[:, 0], U[:, 0], a=self.R.T, overwrite_a=True)
        else:
            _dgemm(alpha=-1.0, a=U * Winv, b=U, trans_b=True, beta=1.0, c=self.R.T,
                   overwrite_c=True)
        self.R[cols, :] = 0.0
        self.R[:, cols] = 0.0
        self.Hr[cols, :] = 0.0
        return energy

    def select_channel(self, c: int) -> float:
        p = self.pos[c]
        if p < 0:
            return 0.0
        cols = self.copies.get(c)
        if cols is None:
            return self.project_out(np.arange(p * self.g, (p + 1) * self.g),
                                    float(self.scale[p]))
        return self.project_out(cols, float(self.scale[cols // self.g].mean()))

    def _gain(self, cols: np.ndarray) -> float:
        """Δ for one candidate of several blocks (``cols``): tr(H_r,Jᵀ R_JJ⁺ H_r,J)."""
        w, V = np.linalg.eigh(self.R[np.ix_(cols, cols)])
        ok = w > RTOL * float(self.scale[cols // self.g].mean())
        proj = V[:, ok].T @ self.Hr[cols]
        return float(np.sum(proj * proj / w[ok][:, None]))

    def gains(self, n_channels: int) -> np.ndarray:
        """Δ(c | S) for every group channel (0 for channels this consumer does not see)."""
        nb, g = self.stats.n_blocks, self.g
        out = np.zeros(n_channels)
        if nb == 0:
            return out
        Hb = self.Hr[: nb * g].reshape(nb, g, -1)
        if g == 1:
            r = np.diag(self.R)[:nb]
            ok = r > RTOL * self.scale
            num = np.einsum("bgm,bgm->b", Hb, Hb)
            vals = np.where(ok, num / np.where(ok, r, 1.0), 0.0)
        else:
            R4 = self.R[: nb * g, : nb * g].reshape(nb, g, nb, g)
            blocks = np.einsum("aiaj->aij", R4)
            w, V = np.linalg.eigh(blocks)
            proj = np.einsum("bgk,bgm->bkm", V, Hb)
            energy = np.einsum("bkm,bkm->bk", proj, proj)
            ok = w > RTOL * self.scale[:, None]
            vals = np.where(ok, energy / np.where(ok, w, 1.0), 0.0).sum(axis=1)
        out[self.stats.channels] = vals
        for c, cols in self.copies.items():
            out[c] = self._gain(cols)
        return out


def _greedy(problem: Problem, quotas: np.ndarray) -> tuple[list[int], np.ndarray]:
    """Greedy maximisation of F(S) under per-segment ``quotas``. Returns the channels picked, in
    order, and ``explained[k]`` = F(S_k), the target energy explained by the constant column,
    the forced channels and the first k picks."""
    C = problem.n_channels
    states = [_ConsumerState(s, C) for s in problem.consumers]
    base = 0.0
    for st in states:
        if st.stats.has_const:
            ci = st.stats.const_index
            base += st.project_out(np.array([ci]), float(st.stats.G[ci, ci]))
    selected = np.zeros(C, dtype=bool)
    remaining = quotas.astype(np.int64).copy()
    for c in np.nonzero(problem.forced)[0]:
        selected[c] = True
        remaining[problem.segments[c]] -= 1
        for st in states:
            base += st.select_channel(int(c))
    picks: list[int] = []
    explained = [base]
    for _ in range(int(np.maximum(remaining, 0).sum())):
        total = np.zeros(C)
        for st in states:
            total += st.gains(C)
        open_ = (~selected) & (remaining[problem.segments] > 0)
        total = np.where(open_, np.maximum(total, 0.0), -np.inf)
        c = int(np.argmax(total))
        selected[c] = True
        remaining[problem.segments[c]] -= 1
        explained.append(explained[-1] + sum(st.select_channel(c) for st in states))
        picks.append(c)
    return picks, np.asarray(explained)


def greedy_select(problem: Problem) -> np.ndarray:
    """Greedy maximisation of F(S) under the problem's segment quotas; returns sorted kept ids."""
    picks, _ = _greedy(problem, problem.quotas)
    return np.sort(np.concatenate([np.nonzero(problem.forced)[0], picks]).astype(np.int64))


def greedy_path(problem: Problem, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The greedy's picks when it keeps ``count`` channels of a single-segment problem (forced
    channels included: they come first and are not listed), and ``explained[k] = F(S_k)`` after
    k picks.

    With one segment the quota only decides when the greedy stops, so the kept set for any
    quota k is the forced channels plus the first ``k − #forced`` picks: one run gives every
    level of a group (budgets' sensitivity curves)."""
    if len(problem.quotas) != 1:
        raise ValueError("greedy_path needs a single-segment problem")
    picks, explained = _greedy(problem, np.array([count]))
    return np.asarray(picks, dtype=np.int64), explained


def removal_costs(problem: Problem) -> np.ndarray:
    """``Q`` (C × C) with ``Q_ij = Σ_q tr(W_q,i G_q,ij W_q,jᵀ)``: the error of keeping the consumers'
    weights unchanged while removing the set R is ``‖Σ_{c∈R} B_c W_cᵀ‖² = Σ_{i,j∈R} Q_ij``."""
    C = problem.n_channels
    Q = np.zeros((C, C))
    for s in problem.consumers:
        K = s.n_blocks * s.g
        A = (s.weight.T @ s.weight) * s.G[:K, :K]
        blocks = A.reshape(s.n_blocks, s.g, s.n_blocks, s.g).sum(axis=(1, 3))
        np.add.at(Q, np.ix_(s.channels, s.channels), blocks)  # a channel seen twice: summed
    return Q


def greedy_remove(problem: Problem) -> np.ndarray:
    """Selection for pruning *without* re-fitting (``--no-reweight``).

    With the consumers' weights only sliced, the output error of removing R is the quadratic
    ``E(R) = Σ_{i,j∈R} Q_ij`` (:func:`removal_costs`), so the LS-based objective above does not
    apply. Greedy backward elimination: repeatedly remove the channel with the smallest increase
    ``ΔE(c | R) = Q_cc + 2 Σ_{j∈R} Q_cj`` among those whose segment is above its quota (forced
    channels are never removed; ties → lowest index). Returns the sorted kept channels.
    """
    Q = removal_costs(problem)
    C = problem.n_channels
    removed = np.zeros(C, dtype=bool)
    size = np.bincount(problem.segments, minlength=len(problem.quotas))
    excess = size - problem.quotas
    cross = np.zeros(C)  # Σ_{j∈R} Q_cj
    diag = np.diag(Q).copy()
    for _ in range(int(excess.sum())):
        delta = diag + 2.0 * cross
        open_ = (~removed) & (~problem.forced) & (excess[problem.segments] > 0)
        c = int(np.argmin(np.where(open_, delta, np.inf)))
        removed[c] = True
        excess[problem.segments[c]] -= 1
        cross += Q[:, c]
    return np.nonzero(~removed)[0]
