"""Score-based baselines sharing the greedy's harness (same quotas, same re-fit).

* weight-norm:  s_c = sqrt(Σ_q ‖W_q[:, J_c]‖²_F)   — how much the consumers use channel c
  (the consumers' stored weights, without the objective's output scaling);
* act-norm:     s_c = sqrt(Σ_q tr(G_q[J_c, J_c]))  — the activation energy ‖B_c‖ seen by consumers;
* random:       a seeded uniform permutation.

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
