"""Weight-sparsity solvers (onnxprune.solvers.sparse) against brute force and direct solves."""

import numpy as np
import pytest

from onnxprune.solvers.sparse import (global_sparsities, kept_count, magnitude_mask, masked,
                                      nm_groups, obs_mask, output_error, refit_rows,
                                      target_moments)


def _err(W, G, W_new, bias, const=True):
    return output_error(G, *target_moments(W, G, const), W_new, bias, const)


def _data(seed=0, n_rows=3000, n=48, m=12, scales=True, const=True):
    rng = np.random.default_rng(seed)
    B = rng.standard_normal((n_rows, n)) @ (np.eye(n) + 0.3 * rng.standard_normal((n, n)))
    if scales:
        B *= np.exp(rng.standard_normal(n))
    B += rng.standard_normal(n)  # non-zero means: the bias must absorb them
    W = rng.standard_normal((m, n))
    Ba = np.hstack([B, np.ones((n_rows, 1))]) if const else B
    return B, W, Ba.T @ Ba


@pytest.mark.parametrize("const", [True, False])
@pytest.mark.parametrize("ridge", [0.0, 0.7])
def test_refit_rows_matches_a_direct_least_squares_solve_per_row(const, ridge):
    B, W, G = _data(const=const)
    keep = magnitude_mask(W, 0.6)
    W_new, bias = refit_rows(W, G, keep, const, ridge)
    var = B.var(axis=0) * len(B) if const else (B ** 2).sum(axis=0)
    for r in range(W.shape[0]):
        cols = np.flatnonzero(keep[r])
        X = B[:, cols]
        y = B @ W[r]
        if const:
            X = np.hstack([X, np.ones((len(B), 1))])
        # ridge toward the original weights, as extra rows √(ρ·var_j)·e_j with targets √(ρ·var_j)·w_j
        pen = np.sqrt(ridge * var[cols])
        Xr = np.vstack([X, np.hstack([np.diag(pen), np.zeros((len(cols), int(const)))])])
        yr = np.concatenate([y, pen * W[r, cols]])
        v = np.linalg.lstsq(Xr, yr, rcond=None)[0]
        scale = np.abs(v).max()
        assert np.abs(W_new[r, cols] - v[:len(cols)]).max() <= 1e-8 * scale
        assert np.all(W_new[r, np.setdiff1d(np.arange(W.shape[1]), cols)] == 0)
        if const:
            assert abs(bias[r] - v[-1]) <= 1e-8 * scale
    assert (bias is None) == (not const)


def test_output_error_is_the_relative_change_of_the_layer_output():
    B, W, G = _data()
    keep = magnitude_mask(W, 0.5)
    W_new, bias = refit_rows(W, G, keep, True)
    T = B @ W.T
    direct = np.sum((T - (B @ W_new.T + bias)) ** 2) / np.sum(T ** 2)
    assert _err(W, G, W_new, bias) == pytest.approx(direct, rel=1e-9)
    # the re-fit never loses to the plain masked weights on the calibration rows
    assert _err(W, G, W_new, bias) < _err(W, G, masked(W, keep), None)


@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.75, 0.9])
def test_unstructured_masks_keep_the_exact_count(sparsity):
    B, W, G = _data(m=7, n=37)
    for keep in (magnitude_mask(W, sparsity), obs_mask(W, G, True, sparsity)):
        assert keep.sum() == kept_count(W.size, sparsity)
    km = magnitude_mask(W, sparsity)
    # magnitude keeps exactly the largest |w|
    assert np.abs(W[km]).min() >= np.abs(W[~km]).max()


def test_nm_groups_are_consecutive_input_channels_at_one_kernel_position():
    g = nm_groups(n_channels=6, g=4, m=4)  # columns c*4 + p
    cols = np.arange(24)
    c, p = cols // 4, cols % 4
    for gid in np.unique(g):
        members = cols[g == gid]
        assert len(set(p[members])) == 1  # one kernel position
        assert list(c[members]) == list(range(c[members][0], c[members][0] + len(members)))
    assert sorted(np.bincount(g)) == [2] * 4 + [4] * 4  # 6 channels: a group of 4 and one of 2


@pytest.mark.parametrize("nm", [(2, 4), (1, 4), (4, 8)])
def test_nm_masks_keep_exactly_n_in_every_group(nm):
    B, W, G = _data(n=48)  # 12 channels of 4 columns
    groups = nm_groups(12, 4, nm[1])
    for keep in (magnitude_mask(W, nm=nm, groups=groups),
                 obs_mask(W, G, True, nm=nm, groups=groups)):
        for gid in np.unique(groups):
            width = int((groups == gid).sum())
            assert np.all(keep[:, groups == gid].sum(axis=1) == min(nm[0], width))


def test_obs_beats_magnitude_when_inputs_have_different_scales():
    """Magnitude ignores that a small weight on a loud input matters: OBS must do better on the
    layer-output objective, before and after the re-fit."""
    B, W, G = _data(seed=3, scales=True)
    for s in (0.5, 0.75):
        km, ko = magnitude_mask(W, s), obs_mask(W, G, True, s)
        e_mag = _err(W, G, *refit_rows(W, G, km, True))
        e_obs = _err(W, G, *refit_rows(W, G, ko, True))
        assert e_obs < 0.5 * e_mag


def test_obs_with_one_removal_picks_the_cheapest_weight_in_a_diagonal_problem():
    """Uncorrelated inputs, no intercept: removing w_rj costs w_rj²·G_jj exactly."""
    rng = np.random.default_rng(1)
    G = np.diag(np.exp(rng.standard_normal(10)))
    W = rng.standard_normal((3, 10))
    keep = obs_mask(W, G, False, sparsity=1 / 30, damp=1e-9)
    cost = W ** 2 * np.diag(G)[None, :]
    assert (~keep).sum() == 1
    assert cost[~keep][0] == cost.min()


def test_frozen_weights_are_removed_first():
    B, W, G = _data()
    frozen = np.zeros(W.shape, dtype=bool)
    frozen[:, :5] = True
    W = np.where(frozen, 0.0, W)
    for keep in (magnitude_mask(W, 0.4, frozen=frozen), obs_mask(W, G, True, 0.4, frozen=frozen)):
        assert not keep[frozen].any()
        assert keep.sum() == kept_count(W.size, 0.4)


def test_global_sparsities_meet_the_total_and_follow_sensitivity():
    _, W1, G1 = _data(seed=1, n=40, m=10)
    _, W2, G2 = _data(seed=2, n=40, m=10)
    levels = global_sparsities([W1, W2, 5.0 * W1], [G1, G2, G1], [True] * 3, 0.6)
    removed = sum(lv * w.size for lv, w in zip(levels, (W1, W2, W1)))
    assert removed == pytest.approx(0.6 * 3 * W1.size, abs=1)
    # relative saliency: scaling a layer's weights does not change how much of it is removed
    assert levels[2] == pytest.approx(levels[0], abs=2 / W1.size)
    assert all(0 <= lv <= 0.95 for lv in levels)
    # a layer whose inputs come in near-duplicate pairs: one weight of a pair can go, its twin
    # takes over (small OBS saliency), so that layer gives up more
    rng = np.random.default_rng(4)
    base = rng.standard_normal((3000, 20))
    B2 = np.repeat(base, 2, axis=1) + 0.01 * rng.standard_normal((3000, 40))
    B2a = np.hstack([B2, np.ones((3000, 1))])
    levels = global_sparsities([W1, W2], [G1, B2a.T @ B2a], [True, True], 0.3)
    assert levels[1] > levels[0] + 0.1
