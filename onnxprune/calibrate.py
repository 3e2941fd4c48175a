"""Calibration: run the model in onnxruntime and stream each consumer's Gram statistics.

For every consumer site the captured input tensor of one batch is turned into rows ``B_b``
(``rule.rows``: im2col for convolutions, one row per token/sample for linear layers), an all-ones
column is appended when the consumer can absorb a bias change, and ``G += B_bᵀ B_b`` is
accumulated in float64. Nothing else is kept between batches, so memory is
O(Σ_q (C_q·g_q)²) plus one batch — independent of the number of samples; a batch's captured
tensors are kept under ``BATCH_BYTES`` (:func:`memory_batch` shrinks the batch for large
activations).

Cross statistics (AsymInChange): the current model and a reference model run on the same batch;
their inputs to the same consumer give rows ``B`` (current, plus the constant column) and ``A``
(reference) at the *same* sampled positions, and ``C = B_augᵀA``, ``G_A = AᵀA`` are accumulated
beside ``G``.

Only what is needed runs: the session is built on the sub-graph of the ancestors of the captured
tensors (the rest of the model is dropped), which matters when statistics are collected once per
group (sequential methods).

Token mask (transformers): when the calibration names a 0/1 input such as ``attention_mask``
(``Calibration.token_mask``, shape ``[batch, seq]``), the rows of a per-token consumer (a MatMul
on ``[batch, seq, k]``) are taken only at the positions the mask marks valid. Padding positions
are never attended to, so what the model computes there cannot reach a real token's output; left
in, they would be more than half of the rows of typical padded text batches and would pull the
selection and the least-squares re-fit toward reproducing padding.

Position cap: a convolution consumer contributes at most ``max_positions`` output positions per
sample (drawn uniformly without replacement from a generator seeded by ``seed``, the site and the
sample's index; all positions when there are fewer), so a sample's rows are the same whichever
batch or shard it is run in. This bounds the cost on large images; the statistics stay
unbiased up to a constant factor, which the least-squares solution does not depend on.
"""

from __future__ import annotations

import itertools
import logging
import os
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import onnx
import onnxruntime as ort

from onnxprune import weights
from onnxprune.graph import Graph, all_inputs
from onnxprune.groups import ConsumerSite
from onnxprune.modelio import Calibration
from onnxprune.rules import rule_for
from onnxprune.solvers.baselines import pfp_sensitivity

log = logging.getLogger(__name__)

DEFAULT_MAX_POSITIONS = 256
#: The tensors captured from one calibration run (per model) are kept under this many bytes: the
#: batch shrinks for large activations, so peak memory depends on neither the number of samples
#: nor ``batch_size`` beyond it (a 224² ResNet-50 captures ~40 MB per sample).
BATCH_BYTES = 256 << 20
#: Activations the sequential methods keep between their per-group runs (ActivationCache).
CACHE_BYTES = 512 << 20
#: Rows per batch and consumer on which PFP sensitivities are evaluated (``--method sampling``).
PFP_ROWS = 128


def session(model: onnx.ModelProto | str | os.PathLike, extra_outputs: Sequence[str] = (),
            elem_types: dict[str, int] | None = None, arena: bool = False
            ) -> ort.InferenceSession:
    """An onnxruntime CPU session for ``model`` (or the model file at that path) that also
    returns ``extra_outputs`` (a ModelProto only)."""
    if extra_outputs:
        m = onnx.ModelProto()
        m.CopyFrom(model)
        present = {o.name for o in m.graph.output}
        for name in extra_outputs:
            if name in present:
                continue
            et = (elem_types or {}).get(name)
            if et:
                m.graph.output.append(onnx.helper.make_tensor_value_info(name, et, None))
            else:
                m.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
            present.add(name)
        model = m
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # No arena (unless asked, for latency): it keeps the high-water mark of every run (batches
    # of large activations) and grew 24 % from 16 to 128 calibration samples on a 224²
    # ResNet-50; without it 10 %, as fast.
    opts.enable_cpu_mem_arena = arena
    # Idle worker threads must not spin: the pass shares the cores with whatever runs beside it.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    from_file = isinstance(model, (str, os.PathLike))  # its external data beside it
    if weights.base_dir() is not None:  # weights over LAZY_BYTES: no packed second copy
        opts.add_session_config_entry("session.disable_prepacking", "1")
        if not from_file:
            weights.session_options(opts)
    src = str(model) if from_file else model.SerializeToString()
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def probe_model(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """Copy of ``model`` computing only ``names``: the nodes they depend on, those as the outputs
    (graph inputs are all kept so that every feed stays valid)."""
    nodes = list(model.graph.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output}
    need, stack = set(), [producer[x] for x in names if x in producer]
    while stack:
        i = stack.pop()
        if i in need:
            continue
        need.add(i)
        stack.extend(producer[x] for x in nodes[i].input if x in producer and producer[x] not in need)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.node[:]
    m.graph.node.extend(n for i, n in enumerate(nodes) if i in need)
    used = {x for i in need for x in nodes[i].input} | {x.name for x in model.graph.input}
    kept = [t for t in model.graph.initializer if t.name in used or t.name in names]
    del m.graph.initializer[:]
    m.graph.initializer.extend(kept)
    del m.graph.output[:]
    return m


class ActivationCache:
    """Run-time tensors of the model being pruned, per calibration batch, kept between the
    per-group runs of the sequential methods: a run then computes only what lies between
    cached tensors and the captured ones (:meth:`plan`), so the cost of one group does not grow
    with the depth of the model.

    Validity: nodes are numbered in topological order; a rewrite whose first changed node has
    number ``p`` cannot change a tensor produced before ``p``, and :meth:`changed` drops the
    others. Values are kept as onnxruntime returned them for each batch (padding rows of a
    fixed-batch model included) and serve only runs with the same batches. At most ``limit``
    bytes are held: what does not fit is not kept, and the run starts further up."""

    def __init__(self, value_info: dict[str, onnx.ValueInfoProto], position: dict[str, int],
                 limit: int | None = None) -> None:
        self.value_info = value_info  # of the model (by name, in order): sub-models keep theirs
        self.info_order = {name: i for i, name in enumerate(value_info)}
        self.position = position  # node name → its number in the model's topological order
        self.limit = CACHE_BYTES if limit is None else limit
        self.values: dict[str, list[np.ndarray]] = {}
        self.batches: tuple | None = None  # (indices, samples per run) the values belong to
        self.nbytes: dict[str, int] = {}
        self.order: dict[str, int] | None = None  # initializer name → its position

    def changed(self, first: int, producer: dict) -> None:
        """Nodes numbered ``first`` and after may have changed: drop what they compute."""
        for name in [t for t in self.values if self.position[producer[t].name] >= first]:
            del self.values[name]

    def plan(self, model: onnx.ModelProto, graph: Graph, names: Sequence[str],
             store: Sequence[str], batches: tuple, per_run: Callable[[str], int | None],
             runs: int) -> tuple[onnx.ModelProto, dict[str, list[np.ndarray]], list[str], int]:
        """``(sub-model, cut, kept, room)``: the sub-model computing ``names`` from the graph
        inputs and the cached tensors ``cut`` it starts from (its inputs, with the graph inputs
        it reads), the tensors of ``store`` it computes that fit in the cache (``per_run``: their
        bytes per run, None when unknown: measured as they come) and the bytes the cache has
        left for them (:func:`run_outputs` stops keeping what passes it)."""
        if batches != self.batches:
            self.values, self.nbytes, self.batches = {}, {}, batches
        need: dict[str, onnx.NodeProto] = {}
        cut: dict[str, list[np.ndarray]] = {}
        inputs: set[str] = set()
        stack = [(t, True) for t in names]  # a captured tensor itself is computed again
        while stack:
            t, target = stack.pop()
            if t in self.values and not target:
                cut[t] = self.values[t]
                continue
            node = graph.producer.get(t)
            if node is None:
                inputs.add(t)
                continue
            if node.name in need:
                continue
            need[node.name] = node
            stack.extend((x, False) for x in all_inputs(node) if not graph.is_const(x))
        # a cached output of a node that runs anyway (a Split whose other output is not cached)
        # is computed again, not fed: a tensor may not be both a graph input and a node output
        produced = {o for n in need.values() for o in n.output}
        cut = {t: v for t, v in cut.items() if t not in produced}
        room = total = self.limit - sum(self.nbytes[t] for t in cut)
        kept = []
        for t in dict.fromkeys(store):
            p = graph.producer.get(t)
            if p is None or p.name not in need:
                continue
            size = per_run(t)
            if size is None or size * runs <= room:  # unknown: measured during the run
                room -= 0 if size is None else size * runs
                kept.append(t)
        nodes = sorted(need.values(), key=lambda n: self.position[n.name])
        m = onnx.ModelProto()
        m.ir_version = model.ir_version
        m.opset_import.extend(model.opset_import)
        m.functions.extend(model.functions)
        g = m.graph
        g.name = model.graph.name
        g.node.extend(nodes)
        # the order of the model's own lists (onnxruntime's optimisations may depend on it)
        reads = {x for n in nodes for x in all_inputs(n)}
        if self.order is None or any(x not in self.order for x in reads if graph.is_const(x)):
            self.order = {name: i for i, name in enumerate(graph.initializers)}
        g.initializer.extend(graph.initializers[x] for x in sorted(
            (x for x in reads if graph.is_const(x)), key=self.order.__getitem__))
        seen = {o for n in nodes for o in n.output} | reads
        g.value_info.extend(self.value_info[name] for name in sorted(
            (x for x in seen if x in self.info_order), key=self.info_order.__getitem__))
        g.input.extend(i for i in model.graph.input if i.name in inputs)
        for t in sorted(cut):  # typed and shaped as in the model (shape-based fusions)
            if t in self.value_info:
                g.input.add().CopyFrom(self.value_info[t])
            else:
                g.input.append(onnx.helper.make_tensor_value_info(t, graph.elem_types[t], None))
        return m, cut, kept, total

    def keep(self, cut: dict[str, list[np.ndarray]], stored: dict[str, list[np.ndarray]]
             ) -> None:
        """After a run: the tensors it started from and those it stored, nothing else."""
        self.values = {**cut, **stored}
        self.nbytes = {t: sum(a.nbytes for a in v) for t, v in self.values.items()}


def sample_first(arr: np.ndarray, fed: int, axis: dict[str, int] | None = None,
                 name: str = "") -> np.ndarray:
    """A graph output of one run on ``fed`` samples, with its sample axis first.

    Exported models almost always put it first. A sequence-first output (a CTC recogniser's
    ``[T, N, C]``) has it further in: the first axis of size ``fed`` is moved to the front. With
    one sample per run and no axis of size 1 (a fixed batch of 1 that the output does not show)
    the whole output is that sample's: a first axis is added. The choice is made on an output's
    first batch and kept in ``axis`` (one dict per pass over the samples), so that every batch of
    the pass is read the same way (a last batch whose size happens to equal ``T``, or of one
    sample)."""
    axis = {} if axis is None else axis
    if arr.ndim == 0:
        return arr[None]
    if name not in axis:
        k = next((i for i in range(arr.ndim) if arr.shape[i] == fed), -1)
        axis[name] = k if k >= 0 else (-1 if fed == 1 else 0)  # -1: add a sample axis
    k = axis[name]
    if k > 0 and arr.ndim > k and arr.shape[k] == fed:
        return np.moveaxis(arr, k, 0)
    return arr[None] if k < 0 else arr


def run_outputs(sess: ort.InferenceSession, calib: Calibration, indices: np.ndarray,
                names: Sequence[str], batch_size: int = 32,
                cut: dict[str, list[np.ndarray]] | None = None,
                stored: dict[str, list[np.ndarray]] | None = None, room: int = 0,
                outputs: bool = False):
    """Yield ``({name: array}, token_mask)`` per batch, sample axis first, padding rows dropped;
    ``token_mask`` is the batch's ``[n, seq]`` boolean valid-token mask, or None when the
    calibration has none (see :func:`token_valid`). ``cut``: values of batch ``b`` fed to the
    session beside the graph inputs it reads (:meth:`ActivationCache.plan`); ``stored``: lists
    that receive each batch's value of their tensor as onnxruntime returns it, as long as they
    hold at most ``room`` bytes together (a tensor that would pass it is dropped).
    ``outputs``: ``names`` are graph outputs, whose sample axis is found (:func:`sample_first`)
    rather than taken to be the first."""
    stored = {} if stored is None else stored
    axis: dict[str, int] = {}
    inputs = None if cut is None else {i.name for i in sess.get_inputs()}
    used = 0
    for b, (feed, valid) in enumerate(calib.feeds(indices, batch_size)):
        run_feed = feed if cut is None else {
            **{k: v for k, v in feed.items() if k in inputs}, **{t: v[b] for t, v in cut.items()}}
        fetch = list(names) + [t for t in stored if t not in names]
        outs = dict(zip(fetch, sess.run(fetch, run_feed)))
        for t in list(stored):
            stored[t].append(outs[t])
            used += outs[t].nbytes
            if used > room:  # what passes the cache's room is not kept
                used -= sum(a.nbytes for a in stored.pop(t))
        fed = len(next(iter(feed.values()))) if calib.mode != "unbatched" else 1
        batch = {}
        for name in names:
            arr = np.asarray(outs[name])
            if calib.mode == "unbatched":
                batch[name] = arr[None]
                continue
            if outputs:
                arr = sample_first(arr, fed, axis, name)
            # Only padded runs drop rows: an intermediate tensor's first axis need not be the
            # sample axis (sequence-first attention: [s·b, E]).
            batch[name] = arr[:valid] if valid < fed else arr
        yield batch, calib.token_valid(feed, valid)


def token_valid(x: np.ndarray, mask: np.ndarray | None) -> np.ndarray | None:
    """The ``[n, seq]`` mask when ``x`` is a per-token tensor ``[n, seq, ...]`` of its batch
    (same two leading axes), else None (the mask says nothing about ``x``'s rows)."""
    if mask is None or x.ndim < 3 or tuple(x.shape[:2]) != tuple(mask.shape):
        return None
    return mask


def drop_padding(x: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """``x`` with the padding positions of a per-token tensor set to zero (a copy), so that
    output comparisons only see real tokens; ``x`` itself when the mask does not apply."""
    valid = token_valid(x, mask)
    if valid is None or valid.all():
        return x
    return np.where(valid.reshape(valid.shape + (1,) * (x.ndim - 2)), x, np.zeros((), x.dtype))


def site_key(node: str, tensor: str) -> int:
    """A stable 32-bit key of a consumer site (seeds its position draws)."""
    return zlib.crc32(f"{node}\x00{tensor}".encode())


def _selector(seed: int, key: int, cap: int
              ) -> Callable[[int, int, np.ndarray | None, np.ndarray | None], np.ndarray]:
    """Row indices into ``n`` samples × ``p`` positions: all positions (only the ``valid`` ones
    when a ``[n, p]`` mask is given), at most ``cap`` per sample drawn without replacement.

    Sample ``i`` of the batch draws from a generator seeded by ``(seed, key, ids[i])``: the rows
    of a sample do not depend on the batches, the order or the shard it was run in, so
    statistics collected in shards sum to the single-run ones."""
    def rng(ids: np.ndarray | None, n: int, i: int) -> np.random.Generator:
        if ids is not None and len(ids) == n:
            return np.random.default_rng([seed, key, int(ids[i])])
        first = int(ids[0]) if ids is not None and len(ids) else 0
        return np.random.default_rng([seed, key, first, 1 << 31, i])

    def select(n: int, p: int, valid: np.ndarray | None = None,
               ids: np.ndarray | None = None) -> np.ndarray:
        if valid is None:
            if p <= cap:
                return np.arange(n * p)
            return np.concatenate([i * p + np.sort(rng(ids, n, i).choice(p, cap, replace=False))
                                   for i in range(n)])
        parts = []
        for i in range(n):
            pos = np.flatnonzero(valid[i])
            if len(pos) > cap:
                pos = pos[np.sort(rng(ids, n, i).choice(len(pos), cap, replace=False))]
            parts.append(i * p + pos)
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return select


@dataclass(frozen=True, eq=False)
class SiteStats:
    G: np.ndarray  # (n, n) with the constant column last when has_const
    rows: int
    has_const: bool
    C: np.ndarray | None = None  # (n, n_A): B_augᵀ A against a reference model (asym only)
    GA: np.ndarray | None = None  # (n_A, n_A): AᵀA
    sensitivity: np.ndarray | None = None  # PFP sensitivity per channel block (sampling only)


class _Replay:
    """A position selector whose draws can be replayed (same rows for two models' tensors)."""

    def __init__(self, select: Callable[..., np.ndarray]) -> None:
        self.select = select
        self.last: np.ndarray | None = None

    def draw(self, n: int, p: int, valid: np.ndarray | None = None,
             ids: np.ndarray | None = None) -> np.ndarray:
        """Rows of ``n`` samples × ``p`` positions; ``valid``: an ``[n, p]`` token mask (ignored
        when the rule's positions are not the mask's); ``ids``: the batch's sample indices."""
        self.last = self.select(n, p, valid if valid is not None and valid.shape == (n, p)
                                else None, ids)
        return self.last

    def replay(self, n: int, p: int) -> np.ndarray:
        assert self.last is not None
        return self.last


class GramAccumulator:
    """Streams ``G = BᵀB`` for a list of consumer sites."""

    def __init__(self, graph: Graph, sites: Sequence[ConsumerSite], seed: int,
                 max_positions: int = DEFAULT_MAX_POSITIONS, reference: Graph | None = None,
                 sensitivity: bool = False) -> None:
        self.graph = graph
        self.reference = reference
        self.pfp_rng = np.random.default_rng([seed, 7919]) if sensitivity else None
        self.sites = list(sites)
        self.rules = [rule_for(graph.node(s.node)) for s in self.sites]
        self.has_const = [r.has_bias_slot(graph.node(s.node), graph)
                          for r, s in zip(self.rules, self.sites)]
        self.selects = [_Replay(_selector(seed, site_key(s.node, s.tensor), max_positions))
                        for s in self.sites]
        self.G: list[np.ndarray | None] = [None] * len(self.sites)
        self.C: list[np.ndarray | None] = [None] * len(self.sites)
        self.GA: list[np.ndarray | None] = [None] * len(self.sites)
        self.sens: list[np.ndarray | None] = [None] * len(self.sites)
        self.weights: dict[int, np.ndarray] = {}  # consumer weights for PFP, read once per site
        self.rows = [0] * len(self.sites)

    @property
    def tensors(self) -> list[str]:
        return sorted({s.tensor for s in self.sites})

    def update(self, batch: dict[str, np.ndarray],
               reference: dict[str, np.ndarray] | None = None,
               mask: np.ndarray | None = None, ids: np.ndarray | None = None) -> None:
        """Add one batch; ``ids``: its sample indices (they seed the position draws)."""
        for i, site in enumerate(self.sites):
            x = batch[site.tensor]
            valid = token_valid(x, mask) if self.rules[i].token_rows else None
            B = self.rules[i].rows(self.graph.node(site.node), self.graph, x,
                                   partial(self.selects[i].draw, valid=valid, ids=ids))
            B = B.astype(np.float64, copy=False)
            if self.has_const[i]:
                B = np.hstack([B, np.ones((B.shape[0], 1))])
            self.G[i] = _add(self.G[i], B.T @ B)
            self.rows[i] += B.shape[0]
            if self.pfp_rng is not None:
                self._sensitivity(i, site, B[:, :-1] if self.has_const[i] else B)
            if reference is not None:
                ref = self.reference
                A = self.rules[i].rows(ref.node(site.node), ref, reference[site.tensor],
                                       self.selects[i].replay).astype(np.float64, copy=False)
                self.C[i] = _add(self.C[i], B.T @ A)
                self.GA[i] = _add(self.GA[i], A.T @ A)

    def _sensitivity(self, i: int, site: ConsumerSite, B: np.ndarray) -> None:
        W = self.weights.get(i)
        if W is None:
            W = self.weights[i] = self.rules[i].weight_matrix(self.graph.node(site.node),
                                                              self.graph)
        rows = B if B.shape[0] <= PFP_ROWS else B[np.sort(self.pfp_rng.choice(
            B.shape[0], PFP_ROWS, replace=False))]
        s = pfp_sensitivity(rows, W, W.shape[1] // site.g, site.g)
        self.sens[i] = s if self.sens[i] is None else np.maximum(self.sens[i], s)

    def result(self) -> list[SiteStats]:
        return [SiteStats(G=G, rows=r, has_const=c, C=C, GA=GA, sensitivity=sv)
                for G, r, c, C, GA, sv in zip(self.G, self.rows, self.has_const, self.C, self.GA,
                                              self.sens)]


def _add(acc: np.ndarray | None, x: np.ndarray) -> np.ndarray:
    return x if acc is None else acc + x


def tensor_bytes(graph: Graph, name: str) -> int | None:
    """Bytes of run-time tensor ``name`` as inferred for one sample; None when unknown (a
    symbolic dim, or -1 as some exporters write for one)."""
    shape, et = graph.static_shape(name), graph.elem_types.get(name)
    if shape is None or not et or any(d < 0 for d in shape):
        return None
    return weights.nbytes(shape, et)


def memory_batch(graph: Graph, names: Sequence[str], batch_size: int, runs: int = 1) -> int:
    """``batch_size``, or fewer samples so that ``runs`` models' captured ``names`` of one
    batch stay under :data:`BATCH_BYTES` (shapes as inferred for one sample; unknown: 0)."""
    per_sample = sum(tensor_bytes(graph, name) or 0 for name in names) * runs
    return batch_size if per_sample == 0 else max(1, min(batch_size, BATCH_BYTES // per_sample))


def collect(model: onnx.ModelProto, graph: Graph, calib: Calibration, indices: np.ndarray,
            sites: Sequence[ConsumerSite], seed: int, max_positions: int = DEFAULT_MAX_POSITIONS,
            batch_size: int = 32, reference: tuple[onnx.ModelProto, Graph] | None = None,
            truncate: bool = True, sensitivity: bool = False,
            progress: Callable[[str], None] | None = None,
            memory_sites: Sequence[ConsumerSite] | None = None,
            cache: tuple[ActivationCache, Sequence[str]] | None = None,
            reference_cache: tuple[ActivationCache, Sequence[str]] | None = None
            ) -> list[SiteStats]:
    """Run the model on ``indices`` and return every site's streamed statistics; with
    ``reference`` (a model and its index, same tensor and node names) also the cross statistics.
    ``truncate``: run only the ancestors of the captured tensors; ``sensitivity``: also the PFP
    sensitivities (``--method sampling``). ``progress``: told of every batch when it is a live
    display (a ``live`` attribute that is true: a terminal), else not at all.

    Samples run in batches of ``batch_size``, fewer when the captured tensors of one batch would
    exceed :data:`BATCH_BYTES` (:func:`memory_batch`), and each batch's rows are added to the
    Grams at once, so the floating-point sums depend on the batch. ``memory_sites`` (default:
    ``sites``) are the sites whose tensors size it: give every prunable site of the model
    (``Analysis.prunable_sites``) and the statistics of any subset of them are those of the
    whole set (a statistics file, a budget, a sweep and a plain prune agree to the bit).

    ``cache`` / ``reference_cache`` (with ``truncate``): an :class:`ActivationCache` of the
    model / the reference and the tensors to keep in it for the next run."""
    acc = GramAccumulator(graph, sites, seed, max_positions,
                          None if reference is None else reference[1], sensitivity)
    if not sites:
        return []
    names = acc.tensors
    bound = names if memory_sites is None else sorted({s.tensor for s in memory_sites})
    batch_size = memory_batch(graph, bound, batch_size, 1 if reference is None else 2)
    step = calib.step(batch_size)
    ids = [np.asarray(indices)[s:s + step] for s in range(0, len(indices), step)]
    batches = (np.asarray(indices).tobytes(), step)
    done = []

    def open_(m: onnx.ModelProto, g: Graph, cached):
        if truncate and cached is not None:
            c, store = cached

            def per_run(t: str) -> int | None:
                size = tensor_bytes(g, t)
                return None if size is None else size * (step if calib.mode == "batched" else 1)

            sub, cut, kept, room = c.plan(m, g, names, store, batches, per_run, len(ids))
            stored: dict[str, list[np.ndarray]] = {t: [] for t in kept}
            done.append(partial(c.keep, cut, stored))
            return run_outputs(session(sub, list(names) + kept, g.elem_types), calib, indices,
                               names, batch_size, cut, stored, room)
        sess = session(probe_model(m, names) if truncate else m, names, g.elem_types)
        return run_outputs(sess, calib, indices, names, batch_size)

    runs = open_(model, graph, cache)
    tick = progress if getattr(progress, "live", False) else (lambda msg: None)
    ref_runs = (open_(*reference, reference_cache)
                if reference is not None else itertools.repeat((None, None)))
    for b, ((batch, mask), (ref, _), chunk) in enumerate(zip(runs, ref_runs, ids)):
        acc.update(batch, ref, mask, chunk)
        tick(f"calibration batch {b + 1}/{len(ids)}")
    for keep in done:
        keep()
    log.debug("collected statistics of %d consumer(s) on %d sample(s)", len(sites), len(indices))
    return acc.result()
