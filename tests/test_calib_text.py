"""``--calib-text FILE --tokenizer DIR``: sentences through a local tokenizer.json."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("tokenizers")
torch = pytest.importorskip("torch")

import onnxprune  # noqa: E402
from onnxprune.images import model_header  # noqa: E402
from onnxprune.text import load_texts  # noqa: E402
from test_token_mask import VOCAB, MaskedEncoder  # noqa: E402
from transformer_helpers import export_seq, randomize  # noqa: E402

from helpers import RESNET  # noqa: E402

WORDS = [f"w{i}" for i in range(VOCAB - 4)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    d = tmp_path_factory.mktemp("text")
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3}
    vocab.update({w: i + 4 for i, w in enumerate(WORDS)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    (d / "tok").mkdir()
    tok.save(str(d / "tok" / "tokenizer.json"))
    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(WORDS, rng.integers(2, 9))) for _ in range(60)]
    text = d / "sentences.txt"
    text.write_text("\n".join(lines[:30]) + "\n\n" + "\n".join(lines[30:]) + "\n")
    m = MaskedEncoder()
    randomize(m, 11)
    example = (torch.randint(0, VOCAB, (2, 6)), torch.ones(2, 6, dtype=torch.int64))
    model = export_seq(m, example, d / "enc.onnx", "legacy",
                       inputs=("input_ids", "attention_mask"))
    return d, text, lines, model


def test_lines_become_ids_and_a_mask(setup):
    d, text, lines, model = setup
    arrays = load_texts(text, d / "tok", model_header(model))
    ids, mask = arrays["input_ids"], arrays["attention_mask"]
    assert ids.dtype == np.int64 and ids.shape == mask.shape
    assert len(ids) == 60  # the empty line is skipped
    lengths = mask.sum(axis=1)
    assert list(lengths) == [len(s.split()) + 2 for s in lines]
    assert ids.shape[1] == lengths.max()
    assert np.all(ids[:, 0] == 2) and np.all(ids[np.arange(60), lengths - 1] == 3)
    assert np.all(ids[mask == 0] == 0)
    short = load_texts(text, d / "tok" / "tokenizer.json", model_header(model), max_length=5)
    assert short["input_ids"].shape[1] == 5


def test_cli_prune_with_calib_text_equals_the_arrays(setup, tmp_path):
    d, text, _, model = setup
    out = tmp_path / "p.onnx"
    proc = subprocess.run([sys.executable, "-m", "onnxprune.cli", "prune", str(model), str(out),
                           "--calib-text", str(text), "--tokenizer", str(d / "tok"), "--ratio",
                           "0.5", "-q"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    arrays = load_texts(text, d / "tok", model_header(model))
    direct = onnxprune.prune(str(model), arrays, ratio=0.5)
    assert direct.report.token_mask == "attention_mask"
    assert out.read_bytes() == direct.model.SerializeToString()


@pytest.mark.parametrize("args, message", [
    (["--calib-text", "{text}"], "needs --tokenizer"),
    (["--calib", "x.npz", "--tokenizer", "{tok}"], "apply to --calib-text only"),
    (["--calib-text", "{text}", "--tokenizer", "{text}"], "not a tokenizers tokenizer.json"),
])
def test_calib_text_errors(setup, tmp_path, args, message):
    d, text, _, model = setup
    args = [a.format(text=text, tok=d / "tok") for a in args]
    proc = subprocess.run([sys.executable, "-m", "onnxprune.cli", "prune", str(model),
                           str(tmp_path / "p.onnx"), *args], capture_output=True, text=True)
    assert proc.returncode == 2 and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_calib_text_needs_token_inputs(setup, tmp_path):
    d, text, _, _ = setup
    proc = subprocess.run([sys.executable, "-m", "onnxprune.cli", "prune", str(RESNET),
                           str(tmp_path / "p.onnx"), "--calib-text", str(text), "--tokenizer",
                           str(d / "tok")], capture_output=True, text=True)
    assert proc.returncode == 2 and "input_ids" in proc.stderr
    assert not (tmp_path / "p.onnx").exists()
