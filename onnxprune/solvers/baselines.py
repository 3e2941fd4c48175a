"""Score-based baselines sharing the greedy's harness (same quotas, same re-fit).

* weight-norm:  s_c = sqrt(Σ_q ‖W_q[:, J_c]‖²_F)   — how much the consumers use channel c
  (the consumers' stored weights, without the objective's output scaling);
* act-norm:     s_c = sqrt(Σ_q tr(G_q[J_c, J_c]))  — the activation energy ‖B_c‖ seen by consumers;
* random:       a seeded uniform permutation;
* sampling:     PFP (Liebenwein et al., ICLR 2020), data-informed sensitivity sampling. The
  sensitivity of channel c at consumer q is the largest share it ever has in one output of q,

      s_c = max_{rows r, outputs i} max( P_ric / Σ_c' P_ric',  N_ric / Σ_c' N_ric' ),
      P_ric = Σ_{j∈J_c} max(W_ij B_rj, 0),   N_ric = Σ_{j∈J_c} max(−W_ij B_rj, 0)

  (positive and negative contributions separately, as PFP does), over a subset of calibration
  rows (:func:`pfp_sensitivity`, accumulated by a running max; over consumers the max is taken).
  PFP draws channels i.i.d. with probability p_c = s_c / Σ s and keeps the distinct ones; to meet
  a quota exactly we draw *without* replacement with the same probabilities (Efraimidis–Spirakis
  keys u^{1/p_c}, seeded). PFP's own importance re-weighting is replaced by the shared
  least-squares re-fit (or none, ``--no-reweight``).

``select_top`` keeps, in every segment, the forced channels and then the highest scores until the
segment's quota is met (ties → lowest index).
"""

from __future__ import annotations

import numpy as np

from onnxprune.solvers.problem import Problem


def _per_channel(problem: Problem, values_per_consumer) -> np.ndarray:
    out = np.zeros(problem.n_channels)
    for stats, vals in zip(problem.consumers, values_per_consumer):
        np.add.at(out, stats.channels, vals)
    return np.sqrt(out)


def weight_norm_scores(problem: Problem) -> np.ndarray:
    vals = []
    for s in problem.consumers:
        W = s.weight
        if s.out_scale is not None:  # score the layer's own weights, not the scaled objective
            live = s.out_scale > 0
            W = W[live] / s.out_scale[live][:, None]
        w2 = (W ** 2).sum(axis=0).reshape(s.n_blocks, s.g).sum(axis=1)
        vals.append(w2)
    return _per_channel(problem, vals)


def act_norm_scores(problem: Problem) -> np.ndarray:
    vals = []
    for s in problem.consumers:
        d = np.diag(s.G)[: s.n_blocks * s.g].reshape(s.n_blocks, s.g).sum(axis=1)
        vals.append(d)
    return _per_channel(problem, vals)


def random_scores(problem: Problem, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.permutation(problem.n_channels).astype(float)


def pfp_sensitivity(B: np.ndarray, W: np.ndarray, n_blocks: int, g: int,
                    chunk: int = 16) -> np.ndarray:
    """Per column block: max over rows of ``B`` (rows × n_blocks·g, no constant column) and
    outputs of ``W`` (m × n_blocks·g) of the block's share of the positive (negative) part."""
    out = np.zeros(n_blocks)
    Wb = W.reshape(W.shape[0], n_blocks, g)
    tiny = np.finfo(float).tiny
    for lo in range(0, B.shape[0], chunk):
        Bb = B[lo:lo + chunk].reshape(-1, 1, n_blocks, g)
        prod = Bb * Wb[None]  # (r, m, C, g)
        for part in (np.maximum(prod, 0.0).sum(axis=3), np.maximum(-prod, 0.0).sum(axis=3)):
            total = part.sum(axis=2, keepdims=True)
            share = np.where(total > tiny, part / np.maximum(total, tiny), 0.0)
            out = np.maximum(out, share.max(axis=(0, 1)))
    return out


def pfp_scores(problem: Problem) -> np.ndarray:
    """Channel sensitivities: the max over consumers of their PFP sensitivities."""
    out = np.zeros(problem.n_channels)
    for s in problem.consumers:
        if s.sensitivity is None:
            raise ValueError("sampling needs PFP sensitivities in the consumer statistics")
        np.maximum.at(out, s.channels, s.sensitivity)
    return out


def sample_keys(scores: np.ndarray, seed: int) -> np.ndarray:
    """Efraimidis–Spirakis keys ``log(u)/p``: taking the largest keys draws without replacement
    with probabilities ∝ ``scores`` (zero scores come last)."""
    rng = np.random.default_rng(seed)
    u = rng.random(len(scores))
    total = float(np.sum(scores))
    p = scores / total if total > 0 else np.full(len(scores), 1.0 / max(len(scores), 1))
    with np.errstate(divide="ignore"):
        return np.where(p > 0, np.log(u) / np.where(p > 0, p, 1.0), -np.inf)


def select_top(problem: Problem, scores: np.ndarray) -> np.ndarray:
    """Kept channels (sorted): per segment, forced ones first, then by descending score."""
    kept = []
    for seg, quota in enumerate(problem.quotas):
        members = np.nonzero(problem.segments == seg)[0]
        forced = members[problem.forced[members]]
        free = members[~problem.forced[members]]
        order = free[np.lexsort((free, -scores[free]))]  # descending score, then lowest index
        kept.extend(forced.tolist())
        kept.extend(order[: int(quota) - len(forced)].tolist())
    return np.sort(np.asarray(kept, dtype=np.int64))
