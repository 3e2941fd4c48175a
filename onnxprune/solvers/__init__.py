"""Selection solvers. Pure NumPy/SciPy: nothing here imports onnx.

A group's selection problem is described by :class:`~onnxprune.solvers.problem.Problem`
(Gram statistics of every consumer), solved by one of the selectors in
:mod:`~onnxprune.solvers.greedy` / :mod:`~onnxprune.solvers.baselines`, and the consumers are
re-fitted by :mod:`~onnxprune.solvers.lstsq`.
"""

from onnxprune.solvers.baselines import (
    act_norm_scores,
    pfp_scores,
    pfp_sensitivity,
    random_scores,
    sample_keys,
    select_top,
    weight_norm_scores,
)
from onnxprune.solvers.greedy import greedy_path, greedy_remove, greedy_select, removal_costs
from onnxprune.solvers.lstsq import (
    augment,
    choose_ridge,
    default_ridges,
    objective,
    refit,
    regularized,
    relative_error,
    sliced,
)
from onnxprune.solvers.problem import ConsumerStats, Problem, keep_count

__all__ = [
    "ConsumerStats",
    "Problem",
    "act_norm_scores",
    "augment",
    "choose_ridge",
    "default_ridges",
    "greedy_remove",
    "greedy_path",
    "greedy_select",
    "keep_count",
    "objective",
    "pfp_scores",
    "pfp_sensitivity",
    "random_scores",
    "refit",
    "removal_costs",
    "sample_keys",
    "regularized",
    "relative_error",
    "select_top",
    "sliced",
    "weight_norm_scores",
]
