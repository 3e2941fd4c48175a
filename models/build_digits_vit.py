#!/usr/bin/env python
"""Build a small Vision Transformer trained on sklearn digits, exported by both torch exporters.

    python models/build_digits_vit.py            # 1-3 minutes (1 thread), writes into models/
    python models/build_digits_vit.py --out DIR  # somewhere else (the README/MANIFEST too)

Same data and split as ``build_digits_models.py`` (its ``load_split``: RandomState(0)
permutation, 1197 train / 300 calibration / 300 test), same inputs ``(N, 1, 8, 8)`` float32, so
``digits_calib.npz`` / ``digits_test.npz`` serve this model as well.

Architecture (``DigitsViT``): Conv2d(1, 64, kernel 2, stride 2) patch embedding -> 16 tokens of
width 64, + learned position embedding, 2 x ``nn.TransformerEncoderLayer(d_model=64, nhead=4,
dim_feedforward=128, activation="gelu", batch_first=True, norm_first=True, dropout=0.1)`` (torch's
own layer: one fused ``in_proj`` Linear for Q, K and V — the pattern onnxprune must handle), final
LayerNorm, mean over the 16 tokens, Linear(64, 10).

Outputs (into ``--out``, default: this directory):

* ``vit_legacy.onnx``: ``torch.onnx.export(..., dynamo=False, opset_version=17)``, dynamic batch;
* ``vit_dynamo.onnx`` (+ ``vit_dynamo.onnx.data``): ``torch.onnx.export(..., dynamo=True)`` with
  the exporter's defaults (its onnxscript optimizer runs), dynamic batch, external data;
* entries ``vit_legacy`` / ``vit_dynamo`` in ``MANIFEST.json`` (replaced, other entries kept) and
  the section between the ``build_digits_vit.py`` markers of ``README.md``.

Export is done with ``torch.backends.mha.set_fastpath_enabled(False)``: in eval mode
``nn.TransformerEncoderLayer`` may otherwise take its fused inference "fast path"
(``torch._transformer_encoder_layer_fwd``), which is not the standard decomposition. The script
checks the graphs (no fused op, the in_proj MatMul present) and that onnxruntime matches torch on
the whole test split. A rerun gives byte-identical files (the dynamo exporter's per-node stack
traces, which hold absolute paths, are removed as in ``build_digits_models.py``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn as nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from build_digits_models import (  # noqa: E402  (same data, split and helpers)
    as_image,
    count_params,
    fit,
    load_split,
    op_counts,
    ort_run,
    seed_all,
    uses_external_data,
)

SEED = 5
EPOCHS = 120
BATCH = 64
LR = 3e-3
WEIGHT_DECAY = 0.05
LEGACY_OPSET = 17
ATOL = 1e-4
D_MODEL, N_HEADS, D_FF, N_LAYERS, PATCH = 64, 4, 128, 2, 2
MIN_ACC = 0.95
MAX_BYTES = 1024 * 1024
BEGIN = "<!-- BEGIN build_digits_vit.py (generated; edit the script, not this section) -->"
END = "<!-- END build_digits_vit.py -->"
ARCH_DESC = (f"ViT: Conv2d(1,{D_MODEL},k={PATCH},s={PATCH}) patch embedding -> 16 tokens + learned "
             f"position embedding; {N_LAYERS} x nn.TransformerEncoderLayer(d_model={D_MODEL}, "
             f"nhead={N_HEADS}, dim_feedforward={D_FF}, gelu, batch_first, norm_first; fused QKV "
             f"in_proj); LayerNorm; mean over tokens; Linear({D_MODEL},10)")


class DigitsViT(nn.Module):
    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(1, D_MODEL, PATCH, stride=PATCH)
        n_tok = (8 // PATCH) ** 2
        self.pos = nn.Parameter(torch.randn(1, n_tok, D_MODEL) * 0.02)
        self.layers = nn.ModuleList([
            nn.TransformerEncoderLayer(D_MODEL, N_HEADS, dim_feedforward=D_FF, dropout=0.1,
                                       activation="gelu", batch_first=True, norm_first=True)
            for _ in range(N_LAYERS)
        ])
        self.norm = nn.LayerNorm(D_MODEL)
        self.head = nn.Linear(D_MODEL, 10)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2) + self.pos   # (N, 16, D)
        for layer in self.layers:
            t = layer(t)
        return self.head(self.norm(t).mean(dim=1))


def train(xtr, ytr, xte, yte, epochs: int = EPOCHS):
    seed_all(SEED)
    model = DigitsViT()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    steps = (len(xtr) + BATCH - 1) // BATCH
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, epochs=epochs,
                                                steps_per_epoch=steps)
    return fit(model, opt, sched, xtr, ytr, xte, yte, epochs=epochs, seed=SEED, augment=True,
               label_smoothing=0.05, batch=BATCH)


def export_legacy(model, x, path: Path) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=LEGACY_OPSET,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return {"dynamic_batch": True}


def export_dynamo(model, x, path: Path) -> dict:
    import contextlib
    import io

    batch = torch.export.Dim("batch", min=1, max=1024)
    data_path = Path(str(path) + ".data")
    if data_path.exists():
        data_path.unlink()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(model, (x,), dynamo=True, input_names=["input"],
                                 output_names=["logits"], dynamic_shapes=({0: batch},))
    for node in prog.model.graph.all_nodes():   # absolute paths / line numbers of this machine
        node.metadata_props.pop("pkg.torch.onnx.stack_trace", None)
    prog.save(str(path), external_data=True)
    return {"dynamic_batch": True, "optimize": "exporter default (onnxscript optimizer)",
            "external_data": data_path.exists()}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def attention_ops(path: Path) -> list[str]:
    """Op types of the first encoder layer's self-attention block, in graph order (from the
    in_proj MatMul to the out_proj MatMul)."""
    m = onnx.load(str(path), load_external_data=False)
    inits = {t.name for t in m.graph.initializer}
    producers = {o: n for n in m.graph.node for o in n.output}
    nodes = list(m.graph.node)
    mm = [i for i, n in enumerate(nodes) if n.op_type in ("MatMul", "Gemm")
          and any(x in inits or (x in producers and producers[x].op_type == "Transpose"
                                 and producers[x].input[0] in inits) for x in n.input[1:2])]
    start, stop = mm[0], mm[1]           # in_proj (fused QKV) and out_proj of layer 0
    ops = []
    for n in nodes[start:stop + 1]:
        if n.op_type in ("Constant",):
            continue
        ops.append(n.op_type)
    return ops


def check_graph(path: Path) -> None:
    ops = op_counts(path)
    bad = [o for o in ops if "transformer" in o.lower() or o in ("Attention",
                                                                 "MultiHeadAttention")]
    assert not bad, f"{path.name}: fused attention ops {bad} (fast path taken?)"
    assert ops.get("Softmax", 0) == N_LAYERS, f"{path.name}: expected {N_LAYERS} Softmax: {ops}"
    m = onnx.load(str(path))
    shapes = {t.name: tuple(t.dims) for t in m.graph.initializer}
    n_qkv = sum(1 for s in shapes.values() if s in ((D_MODEL, 3 * D_MODEL), (3 * D_MODEL, D_MODEL)))
    assert n_qkv == N_LAYERS, f"{path.name}: {n_qkv} fused in_proj weights, expected {N_LAYERS}"


# -- README / MANIFEST ------------------------------------------------------------------------------

README_NOTES = f"""\
* Architecture: {ARCH_DESC}. Dropout 0.1 (removed by both exporters).
* Training: `DigitsViT` in `build_digits_vit.py`, AdamW (lr {LR}, weight decay {WEIGHT_DECAY},
  OneCycle), {EPOCHS} epochs, batch {BATCH}, label smoothing 0.05, the same random +-1 pixel
  shifts as the CNNs; `torch.manual_seed({SEED})`, `torch.set_num_threads(1)`,
  `torch.use_deterministic_algorithms(True)`; same train split as the CNNs
  (`build_digits_models.load_split`), so `digits_calib.npz` / `digits_test.npz` apply unchanged.
* Export with `torch.backends.mha.set_fastpath_enabled(False)`: otherwise, in eval mode,
  `nn.TransformerEncoderLayer` may run its fused inference kernel
  (`torch._transformer_encoder_layer_fwd`) instead of the standard decomposition. The script
  checks that each graph has exactly {N_LAYERS} `Softmax` nodes and {N_LAYERS} fused in_proj
  weights of shape (64, 192) / (192, 64), no fused attention op, and that onnxruntime matches
  torch within {ATOL:g} (max abs logits) on the 300 test digits.
  * `vit_legacy.onnx`: `torch.onnx.export(..., dynamo=False, opset_version={LEGACY_OPSET},
    input_names=['input'], output_names=['logits'], dynamic_axes={{'input': {{0: 'batch'}},
    'logits': {{0: 'batch'}}}})`.
  * `vit_dynamo.onnx` + `.onnx.data`: `torch.onnx.export(model, (x,), dynamo=True,
    input_names=['input'], output_names=['logits'], dynamic_shapes=({{0: Dim('batch')}},))`,
    the exporter's default optimizer, saved with `external_data=True`; the per-node
    `pkg.torch.onnx.stack_trace` metadata is removed (absolute paths) so rebuilds are
    byte-identical.
* Attention as exported: `nn.TransformerEncoderLayer` calls `MultiheadAttention` with
  `need_weights=False`, so torch runs `scaled_dot_product_attention` and both exporters write
  its decomposition (no explicit `Div`/`Add` mask; no `IsNaN` guard since there is no mask).
  Tokens are first transposed to (tokens, batch, 64). One `MatMul` with the packed (64 x 192)
  in_proj weight, `Add` bias, makes Q, K and V together; they are separated by `Reshape` to
  (tokens, batch, 3, 64) -> `Unsqueeze` -> `Transpose(perm=[3,1,2,0,4])` -> `Squeeze` ->
  `Gather(0|1|2, axis=0)`. Each part is reshaped to (tokens, batch*4, 16) (batch and heads
  share one axis here), transposed, and reshaped to (batch, 4, tokens, 16); K is transposed
  (dynamo: a `Shape -> Slice -> Concat -> Reshape -> Transpose -> Reshape` chain; legacy: one
  `Transpose`). The scale 1/sqrt(16) is applied as `Mul` by sqrt(1/sqrt(16)) = 0.5 on Q and on
  K^T: a constant in the dynamo graph, computed at run time in the legacy graph
  (`Shape -> Slice -> Cast -> Sqrt -> Div -> Cast -> Sqrt`). Then `MatMul -> Softmax ->
  MatMul` with V, `Transpose` to (tokens, batch, 4, 16), `Reshape` to (tokens*batch, 64),
  out_proj `Gemm(transB=1)`, and back to (batch, tokens, 64). The legacy graph computes every
  Reshape target at run time (`Shape`/`Gather`/`Mod`/`Concat`, literal 3, 4 and 16 in the
  `Concat`s); the dynamo graph uses constant targets such as `[16, -1, 3, 64]`,
  `[16, -1, 16]`, `[-1, 4, 16, 16]`, `[-1, 64]`. The FFN is `MatMul -> Add -> Gelu (dynamo) |
  Erf chain (legacy) -> MatMul -> Add`. Op sequence of layer 0 from the in_proj MatMul to the
  out_proj Gemm (Constants left out), per file:
"""


def write_readme_section(readme: Path, manifest_entries: list[dict]) -> None:
    lines = [BEGIN, "", "## Vision Transformer (sklearn digits)", "",
             "Built by `python models/build_digits_vit.py` (1-3 minutes, one thread; it reuses",
             "`build_digits_models.py`'s data split);",
             "`build_digits_models.py` keeps this section and the `vit_*` entries of",
             "`MANIFEST.json` when it rewrites those files.", "",
             "| file | exporter | params | test acc | torch acc | max abs vs torch | external data | batch |",
             "| --- | --- | ---: | ---: | ---: | ---: | --- | --- |"]
    for m in manifest_entries:
        lines.append(
            f"| `{m['file']}` | {m['exporter']} | {m['param_count']:,} | "
            f"{100 * m['test_accuracy']:.2f}% | {100 * m['torch_test_accuracy']:.2f}% | "
            f"{m['max_abs_diff_vs_torch']:.1e} | {'yes' if m['external_data'] else 'no'} | dynamic |")
    lines += ["", README_NOTES.rstrip("\n")]
    for m in manifest_entries:
        lines.append(f"  * `{m['file']}`: {' '.join(m['attention_ops_layer0'])}")
    lines += ["", "Op counts per file:", ""]
    for m in manifest_entries:
        ops = ", ".join(f"{k} {n}" for k, n in m["op_counts"].items())
        lines.append(f"* `{m['file']}`: {ops}")
    lines += ["", "sha256 (also in `MANIFEST.json`, checked by `tests/test_vit_digits.py`):", ""]
    for m in manifest_entries:
        for f, h in m["sha256"].items():
            lines.append(f"* `{f}`: `{h}`")
    lines += ["", END, ""]
    section = "\n".join(lines)
    text = readme.read_text() if readme.exists() else ""
    if BEGIN in text and END in text:
        head = text[:text.index(BEGIN)]
        tail = text[text.index(END) + len(END):].lstrip("\n")
        text = head + section + tail
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + section
    readme.write_text(text)


def update_manifest(path: Path, entries: list[dict]) -> None:
    manifest = json.loads(path.read_text()) if path.exists() else {"models": []}
    names = {e["name"] for e in entries}
    manifest["models"] = [m for m in manifest.get("models", []) if m.get("name") not in names]
    manifest["models"] += entries
    with open(path, "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")


# -- main -------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=HERE,
                    help="output directory (default: %(default)s)")
    a = ap.parse_args(argv)
    out = a.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    # One thread: this tiny model trains several times faster than with 2 threads (and much
    # faster when other processes keep the cores busy); the thread count is part of the recipe.
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    (xtr, ytr), _, (xte, yte) = load_split()
    xtr_img, xte_img = as_image(xtr), as_image(xte)
    model, torch_logits, torch_acc = train(xtr_img, ytr, xte_img, yte)
    nparams = count_params(model)
    print(f"[vit] params={nparams} torch test acc={torch_acc:.4f} "
          f"train time={time.time() - t0:.1f}s")
    assert torch_acc >= MIN_ACC, f"torch test accuracy {torch_acc} < {MIN_ACC}"

    model.eval()
    x_example = torch.from_numpy(xte_img[:2].copy())
    torch.backends.mha.set_fastpath_enabled(False)
    entries = []
    try:
        for exporter, fn in (("torch-legacy", export_legacy), ("torch-dynamo", export_dynamo)):
            kind = exporter.split("-")[1]
            path = out / f"vit_{kind}.onnx"
            notes = fn(model, x_example, path)
            onnx.checker.check_model(onnx.load(str(path)), full_check=True)
            check_graph(path)
            sess, (logits,) = ort_run(path, xte_img)
            _, (one,) = ort_run(path, xte_img[:1])
            del sess
            maxdiff = float(np.abs(logits - torch_logits).max())
            assert maxdiff <= ATOL, f"{path.name}: max |ort - torch| = {maxdiff}"
            assert np.abs(one - torch_logits[:1]).max() <= ATOL
            acc = float((logits.argmax(1) == yte).mean())
            ext = uses_external_data(path)
            files = [path.name] + ([path.name + ".data"] if ext else [])
            for f in files:
                size = (out / f).stat().st_size
                assert size < MAX_BYTES, f"{f} is {size} bytes"
            ops = op_counts(path)
            att = attention_ops(path)
            print(f"  {path.name}: ort acc={acc:.4f} maxdiff={maxdiff:.2e} ext={ext}\n"
                  f"    ops={ops}\n    attention(layer 0)={' '.join(att)}")
            entries.append({
                "file": path.name,
                "files": files,
                "name": f"vit_{kind}",
                "builder": "build_digits_vit.py",
                "architecture": "vit",
                "architecture_desc": ARCH_DESC,
                "exporter": exporter,
                "opset": {d.domain or "ai.onnx": d.version
                          for d in onnx.load(str(path), load_external_data=False).opset_import},
                "input": {"name": "input", "shape": ["batch", 1, 8, 8], "dtype": "float32"},
                "outputs": ["logits"],
                "output_shape": ["batch", 10],
                "param_count": nparams,
                "test_accuracy": round(acc, 4),
                "torch_test_accuracy": round(torch_acc, 4),
                "max_abs_diff_vs_torch": maxdiff,
                "external_data": ext,
                "dynamic_batch": True,
                "export_notes": notes,
                "calib_file": "digits_calib.npz",
                "calib_key": "input",
                "op_counts": ops,
                "attention_ops_layer0": att,
                "sha256": {f: sha256(out / f) for f in files},
            })
    finally:
        torch.backends.mha.set_fastpath_enabled(True)

    update_manifest(out / "MANIFEST.json", entries)
    write_readme_section(out / "README.md", entries)
    print(f"total time {time.time() - t0:.1f}s")
    for e in entries:
        print(f"  {e['file']:20s} acc {e['test_accuracy']:.4f}  sha256 "
              + " ".join(f"{f}={h[:12]}" for f, h in e["sha256"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
