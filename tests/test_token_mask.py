"""Token mask: with a calibration ``attention_mask`` the statistics, the re-fit and the fidelity
figures use real tokens only, so what sits at padding positions cannot change the result.

Model: a small encoder (embedding, masked multi-head attention, GELU FFN, residuals) exported
with both torch exporters, inputs ``input_ids`` and ``attention_mask`` (dynamic batch and
sequence); padded keys get −1e4 before the softmax, as BERT-style models do.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import onnxprune  # noqa: E402
from helpers import assert_close, full_check  # noqa: E402
from onnxprune import calibrate  # noqa: E402
from onnxprune.cli import main  # noqa: E402
from onnxprune.errors import CalibrationError  # noqa: E402
from onnxprune.graph import Graph  # noqa: E402
from onnxprune.modelio import load_calibration  # noqa: E402
from onnxprune.passbase import run_passes  # noqa: E402
from onnxprune.passes import NormalizePass  # noqa: E402
from onnxprune.passes.prune import analysis_of  # noqa: E402
from transformer_helpers import export_seq, randomize  # noqa: E402

D, H, F, VOCAB = 16, 4, 48, 40
HD = D // H


class MaskedEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, D)
        self.q, self.k, self.v, self.o = (nn.Linear(D, D) for _ in range(4))
        self.up, self.down = nn.Linear(D, F), nn.Linear(F, D)

    def forward(self, ids, mask):
        x = self.emb(ids)
        b, s, _ = x.shape
        q = self.q(x).view(b, s, H, HD).transpose(1, 2)
        k = self.k(x).view(b, s, H, HD).transpose(1, 2)
        v = self.v(x).view(b, s, H, HD).transpose(1, 2)
        bias = (1.0 - mask.to(x.dtype))[:, None, None, :] * -1e4
        a = torch.softmax(q @ k.transpose(-2, -1) / HD ** 0.5 + bias, dim=-1) @ v
        x = x + self.o(a.transpose(1, 2).reshape(b, s, D))
        return x + self.down(torch.nn.functional.gelu(self.up(x)))


@pytest.fixture(scope="module", params=["legacy", "dynamo"])
def encoder(request, tmp_path_factory):
    m = MaskedEncoder()
    randomize(m, 11)
    example = (torch.randint(0, VOCAB, (2, 6)), torch.ones(2, 6, dtype=torch.int64))
    path = tmp_path_factory.mktemp("tokmask") / f"encoder_{request.param}.onnx"
    return export_seq(m, example, path, request.param, inputs=("input_ids", "attention_mask"))


def _feeds(n=48, s=9, seed=0):
    """Sentences of 3..s real tokens followed by padding (id 0, mask 0)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, s + 1, n)
    mask = (np.arange(s)[None, :] < lengths[:, None]).astype(np.int64)
    ids = np.where(mask == 1, rng.integers(1, VOCAB, (n, s)), 0).astype(np.int64)
    return {"input_ids": ids, "attention_mask": mask}


def _garbage_padding(feeds, seed=1):
    """The same sentences with random ids at the padding positions."""
    rng = np.random.default_rng(seed)
    mask = feeds["attention_mask"]
    ids = np.where(mask == 1, feeds["input_ids"], rng.integers(1, VOCAB, mask.shape))
    return {"input_ids": ids.astype(np.int64), "attention_mask": mask}


def test_padding_content_does_not_change_the_pruned_model(encoder):
    feeds = _feeds()
    other = _garbage_padding(feeds)
    assert (other["input_ids"] != feeds["input_ids"]).any()
    kw = dict(ratio=0.5, head_ratio=0.25, seed=0)
    a = onnxprune.prune(encoder, feeds, **kw)
    b = onnxprune.prune(encoder, other, **kw)
    full_check(a.model)
    assert a.report.token_mask == "attention_mask"
    assert a.report.to_dict()["token_mask"] == "attention_mask"
    assert a.model.SerializeToString() == b.model.SerializeToString()
    assert a.report.fidelity == b.report.fidelity
    # Without the mask the padding rows enter the statistics: the same change moves the result.
    c = onnxprune.prune(encoder, feeds, token_mask="none", **kw)
    d = onnxprune.prune(encoder, other, token_mask="none", **kw)
    assert c.report.token_mask is None
    assert c.model.SerializeToString() != d.model.SerializeToString()


def test_gram_counts_only_real_tokens(encoder):
    import onnx
    feeds = _feeds(n=20)
    model, _ = run_passes([NormalizePass()], onnx.load(str(encoder)))
    graph = Graph(model)
    ffn = next(g for g in analysis_of(model).groups if g.size == F)
    site = ffn.consumers[0]
    cal = load_calibration(feeds, model)
    assert cal.token_mask == "attention_mask"
    idx = np.arange(20)
    (stats,) = calibrate.collect(model, graph, cal, idx, [site], seed=0, batch_size=8)
    sess = calibrate.session(model, [site.tensor])
    h = sess.run([site.tensor], feeds)[0].astype(np.float64)  # [n, s, F]
    real = h[feeds["attention_mask"] == 1]
    B = np.hstack([real, np.ones((len(real), 1))]) if stats.has_const else real
    assert stats.rows == len(real) < h.shape[0] * h.shape[1]
    assert_close(stats.G, B.T @ B, atol=1e-6, rtol=1e-6)
    none = load_calibration(feeds, model, token_mask="none")
    (all_rows,) = calibrate.collect(model, graph, none, idx, [site], seed=0, batch_size=8)
    assert all_rows.rows == h.shape[0] * h.shape[1]


def test_fidelity_ignores_padding_positions(encoder):
    feeds = _feeds()
    res = onnxprune.prune(encoder, feeds, ratio=0.5, head_ratio=0.25, seed=0)
    _, hold = onnxprune.api.split_samples(len(feeds["input_ids"]), 0.2, 0)
    sub = {k: v[hold] for k, v in feeds.items()}
    ref = calibrate.session(onnxprune.modelio.load_model(str(encoder)).model).run(None, sub)[0]
    new = calibrate.session(res.model).run(None, sub)[0]
    real = sub["attention_mask"] == 1
    d = (ref - new).astype(np.float64)
    want = np.sqrt(np.sum(d[real] ** 2) / np.sum(ref.astype(np.float64)[real] ** 2))
    assert_close(res.report.fidelity["output"].rel_l2, want, rtol=1e-6, atol=1e-9)


def test_selector_keeps_valid_positions_only():
    select = calibrate._selector(0, 17, cap=3)
    valid = np.array([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], bool)
    idx = select(3, 5, valid)
    first, second = idx[idx < 5], idx[(idx >= 5) & (idx < 10)] - 5
    assert list(first) == [0, 1]
    assert len(second) == 3 and len(set(second)) == 3  # capped, without replacement
    assert not (idx >= 10).any()
    assert list(select(2, 3)) == list(range(6))  # no mask, p ≤ cap: every row


def test_position_draws_depend_on_the_sample_not_on_its_batch():
    """A sample's rows are the same in any batch and shard: sharded statistics add up."""
    select = calibrate._selector(0, 17, cap=4)
    whole = select(6, 20, None, np.arange(10, 16)).reshape(6, 4) % 20
    a = select(2, 20, None, np.array([10, 11])).reshape(2, 4) % 20
    b = select(4, 20, None, np.array([12, 13, 14, 15])).reshape(4, 4) % 20
    np.testing.assert_array_equal(whole, np.vstack([a, b]))
    assert len({tuple(r) for r in whole}) > 1  # different samples draw differently
    other_site = calibrate._selector(0, 18, cap=4)(6, 20, None, np.arange(10, 16))
    assert not np.array_equal(other_site.reshape(6, 4) % 20, whole)


def test_token_mask_option_errors(encoder, tmp_path):
    import onnx
    model = onnx.load(str(encoder))
    feeds = _feeds(n=8)
    assert load_calibration(feeds, model, token_mask="none").token_mask is None
    assert load_calibration(feeds, model, token_mask="attention_mask").token_mask == \
        "attention_mask"
    with pytest.raises(CalibrationError, match="not an input"):
        load_calibration(feeds, model, token_mask="mask")
    with pytest.raises(CalibrationError, match="0/1"):
        load_calibration(feeds, model, token_mask="input_ids")
    soft = dict(feeds, attention_mask=feeds["attention_mask"] * 2)
    assert load_calibration(soft, model).token_mask is None  # auto: not a 0/1 mask
    calib = tmp_path / "calib.npz"
    np.savez(calib, **feeds)
    out = tmp_path / "out.onnx"
    assert main(["prune", str(encoder), str(out), "--calib", str(calib), "--token-mask",
                 "mask", "-q"]) == 2
    assert not out.exists()


def test_token_ids_outside_the_embedding_table_are_one_clear_error(encoder, tmp_path):
    """onnxruntime's Gather error used to escape as a traceback."""
    from test_cli_errors import expect_cli_error
    feeds = _feeds()
    feeds["input_ids"][3, 1] = VOCAB + 5
    calib = tmp_path / "ids.npz"
    np.savez(calib, **feeds)
    line = expect_cli_error(["prune", encoder, tmp_path / "out.onnx", "--calib", calib],
                            cwd=tmp_path, watch_dirs=[tmp_path], inputs=[encoder, calib],
                            mention=["input_ids", str(VOCAB + 5)])
    assert f"{VOCAB} rows" in line
    with pytest.raises(onnxprune.OnnxPruneError, match="outside the table"):
        onnxprune.prune(str(encoder), {**feeds, "input_ids": feeds["input_ids"] - VOCAB - 9})
