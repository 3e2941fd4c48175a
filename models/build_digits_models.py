#!/usr/bin/env python
"""Build the reference ONNX models used by onnxprune's tests and benchmarks.

Everything here is deterministic (fixed seeds, single data split) and runs on
CPU in a few minutes:

    python models/build_digits_models.py

Data: scikit-learn's bundled ``load_digits`` (1797 samples, 8x8, values
0..16), scaled to [0, 1] as float32. A numpy ``RandomState(0)`` permutation
splits it into 1197 train / 300 calibration / 300 test samples.

Outputs (all in the directory of this script):

* ``digits_calib.npz``       key ``input``: (300, 1, 8, 8) float32
* ``digits_calib_flat.npz``  key ``input``: (300, 64) float32 (for the MLP)
* ``digits_test.npz``        keys ``x``: (300, 1, 8, 8) float32, ``y``: (300,) int64
* ``<arch>_legacy.onnx``     TorchScript-based exporter (dynamo=False), opset 17
* ``<arch>_dynamo.onnx`` (+ ``<arch>_dynamo.onnx.data``)  torch.export-based
  exporter, weights stored as external data
* ``mlp_skl.onnx``           sklearn MLPClassifier converted with skl2onnx
* ``MANIFEST.json``          machine-readable description of every model file
* ``README.md``              provenance, accuracy table, notes on the graphs

BatchNormalization is deliberately kept as a separate op (never folded into
Conv) because the pruning engine has to handle it.
"""

from __future__ import annotations

import collections
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.neural_network import MLPClassifier

HERE = Path(__file__).resolve().parent
SPLIT_SEED = 0
N_TRAIN, N_CALIB, N_TEST = 1197, 300, 300
EPOCHS = 40
BATCH = 64
LR = 3e-3
LEGACY_OPSET = 17
ATOL = 1e-4
AUGMENT = True

# Seeds used for torch training, one per architecture.
TORCH_SEEDS = {"resnet": 1, "mobilenet": 2, "vgg": 3, "inception": 4}


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------
def load_split():
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)  # (1797, 64)
    y = digits.target.astype(np.int64)
    assert x.shape == (1797, 64)
    perm = np.random.RandomState(SPLIT_SEED).permutation(len(x))
    tr = perm[:N_TRAIN]
    ca = perm[N_TRAIN:N_TRAIN + N_CALIB]
    te = perm[N_TRAIN + N_CALIB:]
    assert len(te) == N_TEST
    return (x[tr], y[tr]), x[ca], (x[te], y[te])


def as_image(x_flat: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x_flat.reshape(-1, 1, 8, 8), dtype=np.float32)


# --------------------------------------------------------------------------
# Architectures
# --------------------------------------------------------------------------
class BasicBlock(nn.Module):
    """ResNet basic block; 1x1 conv + BN projection when shape changes."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                nn.BatchNorm2d(cout),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNetDigits(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU()
        )
        self.layer1 = BasicBlock(32, 32, 1)    # identity shortcut, 8x8
        self.layer2 = BasicBlock(32, 64, 2)    # projection shortcut, 4x4
        self.layer3 = BasicBlock(64, 128, 2)   # projection shortcut, 2x2
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(128, 10)

    def forward(self, x):
        x = self.stem(x)
        x = self.layer3(self.layer2(self.layer1(x)))
        x = self.pool(x).flatten(1)
        return self.fc(x)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: expand 1x1 -> depthwise 3x3 -> linear project 1x1."""

    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.expand = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()
        )
        self.dw = nn.Sequential(
            nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
        )
        self.project = nn.Sequential(
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)
        )

    def forward(self, x):
        out = self.project(self.dw(self.expand(x)))
        return x + out if self.use_res else out


class MobileNetDigits(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU6()
        )
        self.blocks = nn.Sequential(
            InvertedResidual(32, 32, 1, 2),   # residual
            InvertedResidual(32, 48, 2, 4),   # 8x8 -> 4x4
            InvertedResidual(48, 48, 1, 4),   # residual
            InvertedResidual(48, 64, 2, 4),   # 4x4 -> 2x2
            InvertedResidual(64, 64, 1, 4),   # residual
        )
        self.head = nn.Sequential(
            nn.Conv2d(64, 256, 1, bias=False), nn.BatchNorm2d(256), nn.ReLU6()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(256, 10)

    def forward(self, x):
        x = self.head(self.blocks(self.stem(x)))
        x = self.pool(x).flatten(1)
        return self.fc(self.dropout(x))


class VGGDigits(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.MaxPool2d(2),                                   # 8x8 -> 4x4
            nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.MaxPool2d(2),                                   # 4x4 -> 2x2
        )
        self.fc1 = nn.Linear(64 * 2 * 2, 128)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(0.3)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = self.features(x)
        x = torch.flatten(x, 1)
        return self.fc2(self.dropout(self.relu(self.fc1(x))))


def conv_bn_relu(cin, cout, k):
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    )


class InceptionModule(nn.Module):
    def __init__(self, cin, c1, c3r, c3, c5r, c5, cpool):
        super().__init__()
        self.b1 = conv_bn_relu(cin, c1, 1)
        self.b2 = nn.Sequential(conv_bn_relu(cin, c3r, 1), conv_bn_relu(c3r, c3, 3))
        self.b3 = nn.Sequential(
            conv_bn_relu(cin, c5r, 1), conv_bn_relu(c5r, c5, 3), conv_bn_relu(c5, c5, 3)
        )
        self.b4 = nn.Sequential(
            nn.MaxPool2d(3, stride=1, padding=1), conv_bn_relu(cin, cpool, 1)
        )
        self.out_channels = c1 + c3 + c5 + cpool

    def forward(self, x):
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], dim=1)


class InceptionDigits(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = conv_bn_relu(1, 32, 3)
        self.inc1 = InceptionModule(32, 16, 16, 24, 8, 16, 8)     # -> 64 ch, 8x8
        self.pool1 = nn.MaxPool2d(2)                             # -> 4x4
        self.inc2 = InceptionModule(64, 32, 32, 48, 16, 24, 24)  # -> 128 ch, 4x4
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(128, 10)

    def forward(self, x):
        x = self.inc2(self.pool1(self.inc1(self.stem(x))))
        x = self.pool(x).flatten(1)
        return self.fc(x)


ARCHS = {
    "resnet": (ResNetDigits, "ResNet-style: stem conv3x3(1->32)+BN+ReLU; basic blocks "
               "32->32 (identity), 32->64 s2 and 64->128 s2 (1x1 conv+BN projection "
               "shortcuts); global avg pool; Linear(128,10)"),
    "mobilenet": (MobileNetDigits, "MobileNetV2-style: stem conv3x3(1->32)+BN+ReLU6; 5 inverted "
                  "residual blocks (1x1 expand+BN+ReLU6, 3x3 depthwise+BN+ReLU6, 1x1 "
                  "project+BN), residual adds in 3 of them; 1x1 conv(64->256)+BN+ReLU6; "
                  "global avg pool; Dropout; Linear(256,10)"),
    "vgg": (VGGDigits, "VGG-style: [conv3x3-BN-ReLU]x2 (32), MaxPool2d(2), "
            "[conv3x3-BN-ReLU]x2 (64), MaxPool2d(2), torch.flatten -> Linear(256,128) -> "
            "ReLU -> Dropout -> Linear(128,10)"),
    "inception": (InceptionDigits, "Inception-style: stem conv3x3(1->32)+BN+ReLU; two inception "
                  "modules (1x1 | 1x1->3x3 | 1x1->3x3->3x3 | maxpool3x3 s1->1x1, each conv "
                  "+BN+ReLU, concat on channels; 32->64 and 64->128 channels) with "
                  "MaxPool2d(2) between; global avg pool; Linear(128,10)"),
}


# --------------------------------------------------------------------------
# Training / evaluation
# --------------------------------------------------------------------------
def seed_all(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_torch(name, xtr, ytr, xte, yte):
    cls = ARCHS[name][0]
    seed_all(TORCH_SEEDS[name])
    model = cls()
    opt = torch.optim.Adam(model.parameters(), lr=LR, weight_decay=1e-4)
    steps_per_epoch = (len(xtr) + BATCH - 1) // BATCH
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=LR, epochs=EPOCHS, steps_per_epoch=steps_per_epoch
    )
    return fit(model, opt, sched, xtr, ytr, xte, yte, epochs=EPOCHS, seed=TORCH_SEEDS[name],
               augment=AUGMENT)


def fit(model, opt, sched, xtr, ytr, xte, yte, *, epochs: int, seed: int, augment: bool,
        label_smoothing: float = 0.0, batch: int = BATCH):
    """Mini-batch training (batches of ``batch`` samples, shuffled by a generator seeded with ``seed``; with ``augment`` a
    random +-1 pixel shift of each batch from the same generator), one ``sched`` step per batch;
    returns ``(model, test logits, test accuracy)``. Shared with build_digits_vit.py."""
    xt = torch.from_numpy(xtr)
    yt = torch.from_numpy(ytr)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), batch):
            idx = order[i:i + batch]
            xb, yb = xt[idx], yt[idx]
            if augment:
                sh = torch.randint(-1, 2, (2,), generator=gen).tolist()
                xb = torch.roll(xb, shifts=(sh[0], sh[1]), dims=(2, 3))
            loss = F.cross_entropy(model(xb), yb, label_smoothing=label_smoothing)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(xte)).numpy()
    return model, logits, float((logits.argmax(1) == yte).mean())


def count_params(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def ort_run(path: Path, x: np.ndarray):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.inter_op_num_threads = 1
    # no busy-waiting worker threads: a live session must not steal the 2 cores
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return sess, sess.run(None, {name: x})


def op_counts(path: Path) -> dict:
    m = onnx.load(str(path), load_external_data=False)
    return dict(sorted(collections.Counter(n.op_type for n in m.graph.node).items()))


def uses_external_data(path: Path) -> bool:
    m = onnx.load(str(path), load_external_data=False)
    return any(
        t.data_location == onnx.TensorProto.EXTERNAL for t in m.graph.initializer
    )


# --------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------
def export_legacy(model, x, path: Path) -> dict:
    kwargs = dict(
        dynamo=False,
        opset_version=LEGACY_OPSET,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )
    torch.onnx.export(model, x, str(path), **kwargs)
    notes = {"dynamic_batch": True, "training_mode": "EVAL (default)"}
    if op_counts(path).get("BatchNormalization", 0) == 0:
        # The TorchScript exporter's default (training=EVAL) runs an "eval peephole"
        # pass that folds BatchNorm into the preceding Conv. PRESERVE exports the
        # model in its current (eval) mode without that pass, so BN survives.
        torch.onnx.export(
            model, x, str(path), training=torch.onnx.TrainingMode.PRESERVE, **kwargs
        )
        notes["training_mode"] = "PRESERVE (default EVAL folded BN into Conv)"
    return notes


_BN_FUSION_RULE_NAMES = (
    "fuse_batchnorm_into_conv_rule",
    "fuse_batchnorm_into_conv_transpose_rule",
    "fuse_batchnorm_into_gemm_rule",
)


def optimize_keep_bn(onnx_program) -> None:
    """Run the exporter's default ONNX optimization, minus BatchNorm folding.

    ``torch.onnx.export(..., dynamo=True, optimize=True)`` calls onnxscript's
    optimizer, whose default rewrite rules include folding BatchNormalization into
    the preceding Conv/Gemm. We want BN kept, so the default rule list is
    temporarily swapped for one without the BN-fusion rules while the same
    ``ONNXProgram.optimize()`` entry point runs (constant folding, zero-bias
    removal, dead-code elimination, lifting constants to initializers, ...).
    """
    from onnxscript import rewriter
    from onnxscript.rewriter.rules import common as common_rules

    bn_rules = [getattr(common_rules, n) for n in _BN_FUSION_RULE_NAMES]
    original = rewriter._DEFAULT_REWRITE_RULES
    kept = tuple(r for r in original if not any(r is b for b in bn_rules))
    assert len(kept) == len(original) - len(bn_rules), "onnxscript rule list changed"
    rewriter._DEFAULT_REWRITE_RULES = kept
    try:
        onnx_program.optimize()
    finally:
        rewriter._DEFAULT_REWRITE_RULES = original


def _bn_count(onnx_program) -> int:
    return sum(1 for n in onnx_program.model.graph.all_nodes() if n.op_type == "BatchNormalization")


def export_dynamo(model, x, path: Path) -> dict:
    """Export with the torch.export-based exporter; returns notes on what happened."""
    notes = {}
    data_path = path.with_name(path.name + ".data")
    for stale in (path, data_path):
        if stale.exists():
            stale.unlink()
    batch = torch.export.Dim("batch", min=1, max=4096)
    common = dict(dynamo=True, input_names=["input"], output_names=["logits"], verbose=False)

    def _export(optimize):
        if notes.get("dynamic_batch", True):
            try:
                prog = torch.onnx.export(
                    model, (x,), dynamic_shapes=({0: batch},), optimize=optimize, **common
                )
                notes["dynamic_batch"] = True
                return prog
            except Exception as e:  # pragma: no cover - fallback path
                print(f"  dynamic-batch dynamo export failed ({type(e).__name__}: {e}); "
                      f"falling back to fixed batch 1", file=sys.stderr)
                notes["dynamic_batch"] = False
        return torch.onnx.export(model, (x[:1],), optimize=optimize, **common)

    # 1) the exporter's default (optimize=True): does BatchNormalization survive?
    prog = _export(True)
    notes["bn_nodes_with_default_optimize"] = _bn_count(prog)
    if notes["bn_nodes_with_default_optimize"] == 0:
        # 2) it was folded into Conv: export unoptimized, then optimize without BN folding
        prog = _export(False)
        notes["bn_nodes_with_optimize_false"] = _bn_count(prog)
        optimize_keep_bn(prog)
        notes["optimize"] = "default onnxscript optimizer minus fuse_batchnorm rules"
    else:
        notes["optimize"] = "default"
    # Drop the per-node Python stack traces: they hold absolute paths and line numbers of
    # this machine, which would make the files differ from one checkout to another. The
    # module-scope metadata (pkg.torch.onnx.name_scopes / class_hierarchy) is kept.
    for node in prog.model.graph.all_nodes():
        node.metadata_props.pop("pkg.torch.onnx.stack_trace", None)
    # same call torch.onnx.export(..., f=path) makes (its default external_data=True)
    prog.save(str(path), external_data=True)
    notes["default_external_data"] = data_path.exists()

    if not uses_external_data(path):
        # Force external data: all weights in one side file next to the model.
        m = onnx.load(str(path))
        if data_path.exists():
            data_path.unlink()
        onnx.save(m, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=data_path.name, size_threshold=0)
        notes["external_data_forced"] = True
    else:
        notes["external_data_forced"] = False
    return notes


# --------------------------------------------------------------------------
# README
# --------------------------------------------------------------------------
README_NOTES = """\
## Notes on the exported graphs

These are facts about the graphs as built with the versions above; re-check
them (`MANIFEST.json` lists the op counts of every file) after changing versions.

* **BatchNormalization is kept in every CNN graph, on purpose.** Both torch
  exporters fold BN into the preceding Conv by default, so the script works around it:
  * legacy exporter: the default `training=TrainingMode.EVAL` runs an "eval
    peephole" pass that folds BN into Conv. The script first exports with the
    plain call, sees no BatchNormalization node, and re-exports with
    `training=torch.onnx.TrainingMode.PRESERVE` (the model is in eval mode, so
    BN is exported in inference form, `training_mode=0`).
  * dynamo exporter: the default `optimize=True` runs onnxscript's optimizer,
    whose default rewrite rules include `fuse_batchnorm_into_conv/gemm`. With
    `optimize=False` BN survives, but the graph is raw (every bias-free Conv gets a
    zero bias built at run time by `Shape -> Expand -> CastLike -> Expand`, the
    flatten shape is computed from `Shape(input)`, plus `Constant`, `Identity`, and
    `Squeeze` nodes). So the script exports with `optimize=False` and then runs the
    exporter's own `ONNXProgram.optimize()` with the three BN-fusion rules
    taken out of onnxscript's default rule list (`optimize_keep_bn`). The
    result is the ordinary optimized graph, with its BatchNormalization nodes kept.
* **Shared initializers (ResNet).** In a residual block with a projection
  shortcut, `bn2.bias` and `shortcut.1.bias` get exactly the same gradient (both are
  added straight into the same sum) and both start at 0, so after training they
  are bit-identical. Both exporters deduplicate them: the legacy graph has
  `Identity(layerN.bn2.bias) -> layerN.shortcut.1.bias` nodes at the top of the
  graph, and the dynamo graph feeds the initializer `layerN.bn2.bias` straight to both
  BatchNormalization nodes. The same thing happens to any ResNet trained
  from scratch like this, so a pruning tool must expect one initializer
  to feed several nodes.
* **Flatten / Linear.** Legacy: `Flatten(axis=1)` then `Gemm(transB=1)`.
  Dynamo: `Reshape(x, [-1, C])` (an int64 initializer, `allowzero=1`) then
  `Gemm(transB=1)`; global average pooling is `ReduceMean(axes=[-1,-2],
  keepdims=1)` (the legacy exporter writes `GlobalAveragePool`). Dropout is
  removed by both.
* **ReLU6** becomes `Clip(x, 0, 6)`. In the legacy graph min and max are scalar
  `Constant` nodes (two for each Clip); in the dynamo graph they are shared
  scalar initializers `min_val_cast`/`max_val_cast`.
* **Weights.** Legacy: all weights are initializers inside the `.onnx` (no
  `Constant` nodes except the Clip bounds). Dynamo: all weights are initializers, no
  `Constant` nodes at all. The exporter's default `external_data=True` puts
  tensors larger than 256 bytes (onnx_ir's default `size_threshold_bytes`: all conv and
  linear weights, BN parameters of >= 128 channels) into `<name>_dynamo.onnx.data` and keeps
  the small ones (BN parameters of <= 64 channels, biases of the last Linear layer,
  shape constants, Clip bounds) inline, so each dynamo model
  mixes inline and external initializers. Keep the `.data` file next to
  its `.onnx`.
* **Node metadata (dynamo).** Nodes keep the exporter's `metadata_props`
  (`namespace`, `pkg.torch.onnx.name_scopes`, `pkg.torch.onnx.class_hierarchy`,
  `pkg.torch.onnx.fx_node`, and `pkg.onnxscript.rewriter.rule_name` where a rewrite
  rule fired), which map each node back to its torch module. The script removes
  only `pkg.torch.onnx.stack_trace`, which holds absolute paths and line numbers, so
  the files come out byte-identical on every run.
* **Opsets / IR.** Legacy: opset 17, IR 8. Dynamo: opset 20 (the exporter's
  default), IR 10. Legacy node names are scoped (`/layer1/conv1/Conv`) and
  value names look like `/layer1/bn1/BatchNormalization_output_0`; dynamo value names
  are aten-style (`conv2d_3`, `getitem_9`) and initializer names are the torch
  parameter names in both.
* **MLP (skl2onnx).** `Cast -> (MatMul + Add -> Relu) x2 -> MatMul + Add -> Softmax`,
  then `ArgMax -> ArrayFeatureExtractor -> Reshape -> Cast` for the `label`
  output. Weights are stored as `[in, out]` (no transpose), biases as `[1, out]`.
  skl2onnx chooses the lowest opset it needs (ai.onnx 16, ai.onnx.ml 1), below the
  `target_opset` cap. The batch dimension has neither a value nor a name.
"""


def write_readme(manifest: dict) -> None:
    v = manifest["versions"]
    manifest = {**manifest, "models": [m for m in manifest["models"] if "builder" not in m]}
    lines = [
        "# Reference models (sklearn digits)",
        "",
        "Small trained models that onnxprune's tests and benchmarks run on. The digits data,",
        "the CNNs and the MLP are produced by (the ViT and MiniLM builders: sections below)",
        "",
        "```",
        "python models/build_digits_models.py",
        "```",
        "",
        "(about 1.5 minutes on 2 idle CPU cores, 6-7 minutes when other processes keep",
        "the cores busy, because torch uses 2 threads; this README and `MANIFEST.json` are",
        "generated by the same script, so change the script, not the files). A rerun",
        "gives byte-identical `.onnx`, `.onnx.data` and `.npz` files on the same versions.",
        "",
        "## Provenance",
        "",
        "* Data: `sklearn.datasets.load_digits()` (bundled with scikit-learn, no",
        "  download): 1797 grayscale 8x8 digits with values 0..16, scaled by 1/16 to float32.",
        f"* Split: `numpy.random.RandomState({SPLIT_SEED}).permutation(1797)`: first {N_TRAIN} ="
        " train,",
        f"  next {N_CALIB} = calibration pool (unlabeled inputs), last {N_TEST} = test.",
        "  * `digits_calib.npz`: key `input`, (300, 1, 8, 8) float32, for the CNNs",
        "  * `digits_calib_flat.npz`: key `input`, (300, 64) float32, for the MLP",
        "  * `digits_test.npz`: keys `x` (300, 1, 8, 8) float32 and `y` (300,) int64",
        "    (for the MLP use `x.reshape(-1, 64)`)",
        f"* CNN training: Adam (lr {LR}, weight decay 1e-4, OneCycle schedule), {EPOCHS} epochs,",
        f"  batch {BATCH}, random +-1 pixel shifts (torch.roll) as augmentation;",
        f"  `torch.manual_seed` per architecture: {TORCH_SEEDS};",
        "  `torch.set_num_threads(2)`, `torch.use_deterministic_algorithms(True)`.",
        "  All CNNs use un-fused `nn.BatchNorm2d`, take input (N, 1, 8, 8) and output",
        "  logits (N, 10). Each is exported in eval mode twice:",
        f"  * `<arch>_legacy.onnx`: `torch.onnx.export(..., dynamo=False, opset_version={LEGACY_OPSET},",
        "    input_names=['input'], output_names=['logits'], dynamic_axes={'input': {0: 'batch'},",
        "    'logits': {0: 'batch'}}, training=TrainingMode.PRESERVE)` (see the notes)",
        "  * `<arch>_dynamo.onnx` + `<arch>_dynamo.onnx.data`: `torch.onnx.export(model, (x,),",
        "    dynamo=True, input_names=['input'], output_names=['logits'],",
        "    dynamic_shapes=({0: Dim('batch')},), optimize=False)`, then the default",
        "    optimizer without BN folding, saved with `external_data=True`",
        "* `mlp_skl.onnx`: `MLPClassifier(hidden_layer_sizes=(128, 64), random_state=0,",
        "  max_iter=500)` on the flattened train split, converted by `skl2onnx.convert_sklearn`",
        "  with `initial_types=[('input', FloatTensorType([None, 64]))]`, `zipmap=False`,",
        "  `target_opset={'': 17, 'ai.onnx.ml': 3}`. Outputs: `label` (int64) and",
        "  `probabilities` (float32, (N, 10)).",
        "* Checks made by the script: onnxruntime logits match torch to within "
        f"{ATOL:g} (max abs) on",
        "  the test set for every CNN export; MLP probabilities match `predict_proba`; every",
        "  CNN graph still contains BatchNormalization; every file is < 2 MB.",
        "* Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
        "",
        "## Models",
        "",
        "| file | architecture | exporter | params | test acc | external data | batch |",
        "| --- | --- | --- | ---: | ---: | --- | --- |",
    ]
    for m in manifest["models"]:
        lines.append(
            f"| `{m['file']}` | {m['architecture']} | {m['exporter']} | {m['param_count']:,} | "
            f"{100 * m['test_accuracy']:.2f}% | {'yes' if m['external_data'] else 'no'} | "
            f"{'dynamic' if m['dynamic_batch'] else 'fixed 1'} |"
        )
    lines += ["", "Test accuracy is measured with onnxruntime on the 300-sample test split.",
              "", "Architectures:", ""]
    seen = set()
    for m in manifest["models"]:
        if m["architecture"] not in seen:
            seen.add(m["architecture"])
            lines.append(f"* **{m['architecture']}**: {m['architecture_desc']}")
    lines += ["", "Op counts per file:", ""]
    for m in manifest["models"]:
        ops = ", ".join(f"{k} {n}" for k, n in m["op_counts"].items())
        lines.append(f"* `{m['file']}`: {ops}")
    lines += ["", README_NOTES]
    (HERE / "README.md").write_text("\n".join(lines))


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------
def main():
    t0 = time.time()
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)

    (xtr, ytr), xca, (xte, yte) = load_split()
    xtr_img, xca_img, xte_img = as_image(xtr), as_image(xca), as_image(xte)
    np.savez(HERE / "digits_calib.npz", input=xca_img)
    np.savez(HERE / "digits_calib_flat.npz", input=np.ascontiguousarray(xca))
    np.savez(HERE / "digits_test.npz", x=xte_img, y=yte.astype(np.int64))

    manifest = {
        "description": "Reference models for onnxprune, trained on sklearn load_digits; "
                       "see README.md and build_digits_models.py",
        "data": {
            "source": "sklearn.datasets.load_digits, X/16 float32",
            "split": f"numpy RandomState({SPLIT_SEED}).permutation(1797): first "
                     f"{N_TRAIN} train, next {N_CALIB} calib, last {N_TEST} test",
            "calib": "digits_calib.npz (key 'input', (300,1,8,8) float32)",
            "calib_flat": "digits_calib_flat.npz (key 'input', (300,64) float32)",
            "test": "digits_test.npz (keys 'x' (300,1,8,8) float32, 'y' (300,) int64)",
        },
        "versions": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
        },
        "models": [],
    }
    report = {}

    xte_t = torch.from_numpy(xte_img)
    for name, (_, arch_desc) in ARCHS.items():
        ts = time.time()
        model, torch_logits, torch_acc = train_torch(name, xtr_img, ytr, xte_img, yte)
        nparams = count_params(model)
        print(f"[{name}] params={nparams} torch test acc={torch_acc:.4f} "
              f"train time={time.time() - ts:.1f}s")
        model.eval()
        x_example = xte_t[:2].clone()

        exports = {}
        legacy_path = HERE / f"{name}_legacy.onnx"
        exports["torch-legacy"] = (legacy_path, export_legacy(model, x_example, legacy_path))
        dynamo_path = HERE / f"{name}_dynamo.onnx"
        exports["torch-dynamo"] = (dynamo_path, export_dynamo(model, x_example, dynamo_path))

        for exporter, (path, notes) in exports.items():
            if notes.get("dynamic_batch", True):
                sess, (logits,) = ort_run(path, xte_img)
            else:
                sess, _ = ort_run(path, xte_img[:1])
                logits = np.concatenate(
                    [sess.run(None, {"input": xte_img[i:i + 1]})[0] for i in range(len(xte_img))]
                )
            del sess
            maxdiff = float(np.abs(logits - torch_logits).max())
            acc = float((logits.argmax(1) == yte).mean())
            assert maxdiff <= ATOL, f"{path.name}: max |ort - torch| = {maxdiff}"
            ops = op_counts(path)
            ext = uses_external_data(path)
            assert ops.get("BatchNormalization", 0) > 0, f"{path.name}: BN was fused"
            print(f"  {path.name}: ort acc={acc:.4f} maxdiff={maxdiff:.2e} ext={ext} "
                  f"notes={notes}\n    ops={ops}")
            files = [path.name] + ([path.name + ".data"] if ext else [])
            manifest["models"].append({
                "file": path.name,
                "files": files,
                "name": f"{name}_{exporter.split('-')[1]}",
                "architecture": name,
                "architecture_desc": arch_desc,
                "exporter": exporter,
                "opset": {d.domain or "ai.onnx": d.version
                          for d in onnx.load(str(path), load_external_data=False).opset_import},
                "input": {"name": "input", "shape": ["batch" if notes.get("dynamic_batch", True)
                                                    else 1, 1, 8, 8], "dtype": "float32"},
                "outputs": ["logits"],
                "output_shape": ["batch" if notes.get("dynamic_batch", True) else 1, 10],
                "param_count": nparams,
                "test_accuracy": round(acc, 4),
                "torch_test_accuracy": round(torch_acc, 4),
                "max_abs_diff_vs_torch": maxdiff,
                "external_data": ext,
                "dynamic_batch": bool(notes.get("dynamic_batch", True)),
                "export_notes": notes,
                "calib_file": "digits_calib.npz",
                "calib_key": "input",
                "op_counts": ops,
            })
            report[path.name] = acc

    # ---------------- sklearn MLP ----------------
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    ts = time.time()
    clf = MLPClassifier(hidden_layer_sizes=(128, 64), random_state=0, max_iter=500)
    clf.fit(xtr, ytr)
    skl_acc = float(clf.score(xte, yte))
    nparams = int(sum(w.size for w in clf.coefs_) + sum(b.size for b in clf.intercepts_))
    onx = convert_sklearn(
        clf,
        initial_types=[("input", FloatTensorType([None, 64]))],
        options={id(clf): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    onx.graph.name = "mlp_skl"  # skl2onnx names the graph with a random uuid
    mlp_path = HERE / "mlp_skl.onnx"
    onnx.save(onx, str(mlp_path))
    sess, outs = ort_run(mlp_path, np.ascontiguousarray(xte))
    out_names = [o.name for o in sess.get_outputs()]
    label = outs[out_names.index("label")] if "label" in out_names else outs[0]
    proba = outs[out_names.index("probabilities")] if "probabilities" in out_names else outs[1]
    mlp_acc = float((np.asarray(label).reshape(-1) == yte).mean())
    proba_diff = float(np.abs(proba - clf.predict_proba(xte)).max())
    ops = op_counts(mlp_path)
    print(f"[mlp] params={nparams} sklearn acc={skl_acc:.4f} ort acc={mlp_acc:.4f} "
          f"proba maxdiff={proba_diff:.2e} n_iter={clf.n_iter_} time={time.time() - ts:.1f}s"
          f"\n    ops={ops}")
    del sess
    assert proba_diff < 1e-4
    manifest["models"].append({
        "file": mlp_path.name,
        "files": [mlp_path.name],
        "name": "mlp_skl",
        "architecture": "mlp",
        "architecture_desc": "sklearn MLPClassifier(hidden_layer_sizes=(128, 64), relu, "
                             "random_state=0, max_iter=500); 64 -> 128 -> 64 -> 10 (softmax)",
        "exporter": "skl2onnx",
        "opset": {d.domain or "ai.onnx": d.version for d in onx.opset_import},
        "input": {"name": "input", "shape": ["batch", 64], "dtype": "float32"},
        "outputs": out_names,
        "param_count": nparams,
        "test_accuracy": round(mlp_acc, 4),
        "sklearn_test_accuracy": round(skl_acc, 4),
        "max_abs_diff_vs_sklearn_proba": proba_diff,
        "external_data": uses_external_data(mlp_path),
        "dynamic_batch": True,
        "calib_file": "digits_calib_flat.npz",
        "calib_key": "input",
        "op_counts": ops,
    })
    report[mlp_path.name] = mlp_acc

    manifest["versions"]["scikit-learn"] = __import__("sklearn").__version__
    manifest["versions"]["skl2onnx"] = __import__("skl2onnx").__version__
    try:
        manifest["versions"]["onnxscript"] = __import__("onnxscript").__version__
    except Exception:
        pass
    # Entries and README sections written by other builders (build_digits_vit.py: entries with
    # a "builder" key, README text from its "<!-- BEGIN " marker on) are kept as they are.
    old_manifest = HERE / "MANIFEST.json"
    if old_manifest.exists():
        manifest["models"] += [m for m in json.loads(old_manifest.read_text())["models"]
                               if m.get("builder") not in (None, Path(__file__).name)]
    old_readme = (HERE / "README.md").read_text() if (HERE / "README.md").exists() else ""
    with open(HERE / "MANIFEST.json", "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    write_readme(manifest)
    if "<!-- BEGIN " in old_readme:
        text = (HERE / "README.md").read_text().rstrip("\n")
        (HERE / "README.md").write_text(text + "\n\n" + old_readme[old_readme.index("<!-- BEGIN "):])

    for p in sorted(HERE.iterdir()):
        if p.suffix in (".onnx", ".data", ".npz", ".json"):
            size = p.stat().st_size
            assert size < 2 * 1024 * 1024, f"{p.name} is {size} bytes (> 2 MB)"
    print(f"total time {time.time() - t0:.1f}s")
    for k, v in report.items():
        print(f"  {k:28s} {v:.4f}")


if __name__ == "__main__":
    main()
