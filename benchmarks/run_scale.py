#!/usr/bin/env python
"""Scale benchmark for issue 10 ("One in-place graph and a linear-time engine").

Every measurement runs in its own subprocess (this script re-run as ``--child NAME``, or the
``onnxprune`` CLI as ``python -m onnxprune.cli``) with a timeout and a resident-memory guard
(``--rss-limit-gb``, default 12: the machine is shared); its wall time and peak RSS (``ru_maxrss``
of that one process, through a small launcher) are recorded, and a failure — exception, non-zero
exit, timeout, kill — becomes a row carrying the error's first line instead of stopping the run. Sections (``--only a,b,...``):

* ``chain``        10k / 30k / 100k-node Relu/Neg chains: ``onnxprune inspect`` and load +
                   normalisation alone (target: 100k inspect < 30 s).
* ``external``     an MLP of > 2 GiB external data (the bytes are in its 262,000-wide input layer;
                   the hidden widths stay ≤ 2048 so the O(k·n²) greedy does not dominate once the
                   2 GiB path works): ``onnxprune prune --ratio 0.25`` — wall, peak RSS, peak RSS /
                   model size (target ≤ 2.5×); the files are deleted afterwards unless ``--keep``.
* ``calib_memory`` a ResNet-50-shaped model (Conv+bias, no BN) at 224²: peak RSS of the statistics
                   collection (``onnxprune.api.calibrate_stats``) and of the whole prune at ratio
                   0.25 (``--calib-mode stats|prune|both``, default both), each with 16 and with
                   128 samples (target: growth ≤ 10 %).
* ``seq``          a 401-Gemm MLP (400 groups): ``prune(method="inchange")`` and ``method="seq"``
                   side by side in one child, alternated, min of 2 each (target: seq ≤ 3× inchange).
* ``greedy``       the repo's greedy (``onnxprune.solvers.greedy``) keeping 2304 of 3072 channels
                   against a textbook greedy with a full n×n Schur downdate (a temporary per step),
                   same kept set checked; the textbook one is timed on its first steps and
                   extrapolated when a full run would not fit (said in the table).
* ``modules``      line counts of onnxprune/ and passes/ (> 500 flagged), and a non-editable
                   ``pip install`` of a copy of the working tree into a fresh venv, imported from
                   outside the repo.

Scratch files go to ``--work`` (default /tmp/scale). Writes ``benchmarks/results_scale.md`` and
``benchmarks/results_scale.json``.

    OPENBLAS_NUM_THREADS=1 python benchmarks/run_scale.py [--only chain,external,calib_memory,seq,greedy,modules]
        [--work /tmp/scale] [--keep]
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from common import fmt, git_info, versions  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("chain", "external", "calib_memory", "seq", "greedy", "modules")
MARK = "@@JSON "
GB = 1e9


# ---------------------------------------------------------------------------------------------
# Measuring one subprocess
# ---------------------------------------------------------------------------------------------

def _snap() -> tuple[float, float, float]:
    """(wall s, busy CPU-seconds of the machine, CPU-seconds of this process and its reaped
    children)."""
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:]]
    busy = (sum(vals[:8]) - vals[3] - vals[4]) / os.sysconf("SC_CLK_TCK")
    t = os.times()
    return time.perf_counter(), busy, t.user + t.system + t.children_user + t.children_system


def _load_between(a, b) -> float | None:
    """Cores kept busy by processes other than this one and its children between two snaps."""
    if b[0] <= a[0]:
        return None
    return round(max(0.0, (b[1] - a[1]) - (b[2] - a[2])) / (b[0] - a[0]), 2)


def _mem_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of ``pid`` in MB; zeros once it is gone."""
    rss = hwm = 0.0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) / 1024
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return rss, hwm


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except (OSError, ValueError):
        return []


# A minimal launcher between this script and each measured command: a child's ru_maxrss starts
# at the RSS of the process that forked it (Linux keeps the high-water mark across exec), so
# forking the command from this (growing) Python process would add its size to every peak. The
# launcher (python -I -S, ~10 MB) forks, execs the command, waits for it and writes its status,
# peak RSS (KB) and CPU seconds to a file.
LAUNCHER = r"""
import os, sys
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, st, ru = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(f"{st} {ru.ru_maxrss} {ru.ru_utime + ru.ru_stime}")
code = os.waitstatus_to_exitcode(st)
os._exit(code if code >= 0 else 128 - code)
"""


def _first_error_line(text: str) -> str:
    """The exception line of a traceback (its first line), else the last non-empty line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return ""
    for i in range(len(lines) - 1, -1, -1):
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b.*", lines[i]) or \
                lines[i].startswith("error:"):
            return lines[i][:300]
    return lines[-1][:300]


def measure(cmd: list[str], timeout: float, rss_limit_mb: float, cwd: str | None = None,
            label: str = "") -> dict:
    """Run ``cmd`` (through :data:`LAUNCHER`, in its own session); wall time, peak RSS (MB),
    exit code, the JSON records it printed (``@@JSON {...}`` lines), the last line of stderr,
    and an error for any failure. Killed (SIGKILL to its process group) after ``timeout`` s or
    when its RSS passes ``rss_limit_mb``."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parent),
                                                      env.get("PYTHONPATH")]))
    if label:
        print(f"[{time.strftime('%H:%M:%S')}] {label} ...", file=sys.stderr, flush=True)
    out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    fd, status_file = tempfile.mkstemp(prefix="scale_rusage_")
    os.close(fd)
    s0 = _snap()
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", LAUNCHER, status_file, *cmd],
                            stdout=out, stderr=err, cwd=cwd, env=env, start_new_session=True)
    killed = None
    hwm = 0.0
    target = None
    while proc.poll() is None:
        elapsed = time.perf_counter() - t0
        if target is None:
            kids = _children(proc.pid)
            target = kids[0] if kids else None
        rss = 0.0
        if target is not None:
            rss, h = _mem_mb(target)
            hwm = max(hwm, h)
        if elapsed > timeout:
            killed = f"timeout after {timeout:.0f} s"
        elif rss > rss_limit_mb:
            killed = (f"killed by the benchmark: RSS above {rss_limit_mb / 1024:g} GiB")
        if killed is not None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            break
        time.sleep(0.05 if elapsed < 5 else 0.2)
    wall = time.perf_counter() - t0
    load = _load_between(s0, _snap())
    try:
        st, maxrss_kb, cpu = Path(status_file).read_text().split()
        rc, peak, cpu = os.waitstatus_to_exitcode(int(st)), int(maxrss_kb) / 1024, float(cpu)
    except (OSError, ValueError):  # the launcher was killed: the polled high-water mark
        rc, peak, cpu = proc.returncode, hwm, None
    Path(status_file).unlink(missing_ok=True)
    out.seek(0)
    err.seek(0)
    stdout = out.read().decode(errors="replace")
    stderr = err.read().decode(errors="replace")
    records = []
    for line in stdout.splitlines():
        if line.startswith(MARK):
            try:
                records.append(json.loads(line[len(MARK):]))
            except ValueError:
                pass
    row = {"cmd": " ".join(cmd), "rc": rc, "wall_s": round(wall, 2),
           "peak_rss_mb": round(max(peak, hwm), 1),
           "cpu_s": None if cpu is None else round(cpu, 1), "other_load": load,
           "stderr_last": next((ln.strip()[:300] for ln in reversed(stderr.splitlines())
                                if ln.strip()), ""),
           "records": records, "ok": killed is None and rc == 0}
    if killed is not None:
        row["error"] = killed
    elif rc < 0:
        sig = signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else -rc
        row["error"] = f"killed by {sig}, not sent by the benchmark" + (
            " (the kernel's OOM killer?)" if -rc == 9 else
            " (a memory watchdog of the machine?)" if -rc == 15 else "")
    elif rc != 0:
        row["error"] = _first_error_line(stderr) or f"exit code {rc}"
    else:
        bad = [r for r in records if r.get("error")]
        if bad:
            row["ok"] = False
            row["error"] = bad[0]["error"]
    if label:
        print(f"    -> {'ok' if row['ok'] else 'FAILED: ' + row.get('error', '')}"
              f" ({row['wall_s']} s, {row['peak_rss_mb']} MB)", file=sys.stderr, flush=True)
    return row


def child_cmd(name: str, **kw) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--child", name, json.dumps(kw)]


def cli_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "onnxprune.cli", *args]


def emit(**rec) -> None:
    print(MARK + json.dumps(rec), flush=True)


def _err(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0] if msg else ''}"[:300]


# ---------------------------------------------------------------------------------------------
# Model builders (run in children)
# ---------------------------------------------------------------------------------------------

def _model(nodes, inputs, outputs, inits=()):
    from onnx import helper
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def build_chain(n: int, path: str) -> None:
    """x [1,4] → Relu → Neg → Relu → … (n nodes) → y."""
    import onnx
    from onnx import TensorProto, helper
    nodes = []
    prev = "x"
    for i in range(n):
        out = "y" if i == n - 1 else f"t{i}"
        nodes.append(helper.make_node("Relu" if i % 2 == 0 else "Neg", [prev], [out],
                                      name=f"n{i}"))
        prev = out
    m = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    onnx.save_model(m, path)


def build_external(path: str, calib: str, d_in: int, hidden: list[int], n_out: int,
                   n_samples: int, seed: int = 0) -> dict:
    """A Gemm/Relu MLP whose weights are written straight to one external-data file, row block
    by row block (never the whole model in memory), and its calibration npz."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper
    rng = np.random.default_rng(seed)
    p = Path(path)
    data_name = p.name + ".data"
    dims = [d_in, *hidden, n_out]
    inits, nodes = [], []
    offset = 0
    with open(p.parent / data_name, "wb") as f:
        def write(name: str, shape: tuple[int, ...], gen) -> None:
            nonlocal offset
            pad = (-offset) % 4096
            f.write(b"\0" * pad)
            offset += pad
            start = offset
            for block in gen:
                b = np.ascontiguousarray(block, dtype=np.float32)
                f.write(b.tobytes())
                offset += b.nbytes
            t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(shape))
            t.data_location = TensorProto.EXTERNAL
            for k, v in (("location", data_name), ("offset", str(start)),
                         ("length", str(offset - start))):
                e = t.external_data.add()
                e.key, e.value = k, v
            inits.append(t)

        prev = "x"
        for i in range(len(dims) - 1):
            fan_in, fan_out = dims[i], dims[i + 1]
            scale = math.sqrt(2.0 / fan_in)
            rows = max(1, (64 << 20) // (4 * fan_in))  # ~64 MB per block
            write(f"W{i}", (fan_out, fan_in),
                  (rng.standard_normal((min(rows, fan_out - r), fan_in), dtype=np.float32)
                   * np.float32(scale) for r in range(0, fan_out, rows)))
            write(f"b{i}", (fan_out,), [rng.standard_normal(fan_out, dtype=np.float32) * 0.01])
            out = "y" if i == len(dims) - 2 else f"h{i}"
            last = i == len(dims) - 2
            nodes.append(helper.make_node("Gemm", [prev, f"W{i}", f"b{i}"],
                                          [out if last else f"g{i}"], name=f"fc{i}", transB=1))
            if not last:
                nodes.append(helper.make_node("Relu", [f"g{i}"], [out], name=f"relu{i}"))
            prev = out
    m = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", d_in])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", n_out])], inits)
    p.write_bytes(m.SerializeToString())
    x = rng.standard_normal((n_samples, d_in), dtype=np.float32)
    np.savez(calib, x=x)
    onnx.checker.check_model(str(p))  # path form: does not load the data
    return {"model_bytes": p.stat().st_size + (p.parent / data_name).stat().st_size,
            "largest_tensor_bytes": 4 * max(a * b for a, b in zip(dims[:-1], dims[1:])),
            "layers": [f"{a}→{b}" for a, b in zip(dims[:-1], dims[1:])]}


def build_resnet50(path: str, seed: int = 0) -> dict:
    """ResNet-50 v1.5 shape with BN folded away: Conv(+bias)+Relu, Add residuals, GAP, Gemm."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    count = [0]

    def conv(x, cin, cout, k, stride=1, relu=True, gain=1.0):
        i = count[0]
        count[0] += 1
        w = rng.standard_normal((cout, cin, k, k), dtype=np.float32) * np.float32(
            gain * math.sqrt(2.0 / (cin * k * k)))
        inits.append(numpy_helper.from_array(w, f"conv{i}.w"))
        inits.append(numpy_helper.from_array(
            rng.standard_normal(cout, dtype=np.float32) * np.float32(0.01), f"conv{i}.b"))
        y = f"conv{i}"
        nodes.append(helper.make_node("Conv", [x, f"conv{i}.w", f"conv{i}.b"], [y],
                                      name=f"Conv{i}", kernel_shape=[k, k],
                                      strides=[stride, stride], pads=[k // 2] * 4))
        if relu:
            nodes.append(helper.make_node("Relu", [y], [y + ".r"], name=f"Relu{i}"))
            y += ".r"
        return y

    x = conv("x", 3, 64, 7, 2)
    nodes.append(helper.make_node("MaxPool", [x], ["pool"], name="MaxPool", kernel_shape=[3, 3],
                                  strides=[2, 2], pads=[1, 1, 1, 1]))
    x, cin = "pool", 64
    for si, (width, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3))):
        for bi in range(blocks):
            stride = 2 if (bi == 0 and si > 0) else 1
            y = conv(x, cin, width, 1)
            y = conv(y, width, width, 3, stride)
            y = conv(y, width, 4 * width, 1, relu=False, gain=0.2)
            sc = conv(x, cin, 4 * width, 1, stride, relu=False) if bi == 0 else x
            a = f"add{si}_{bi}"
            nodes.append(helper.make_node("Add", [y, sc], [a], name=f"Add{si}_{bi}"))
            nodes.append(helper.make_node("Relu", [a], [a + ".r"], name=f"ReluAdd{si}_{bi}"))
            x, cin = a + ".r", 4 * width
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"], name="GAP"))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], name="Flatten", axis=1))
    inits.append(numpy_helper.from_array(
        rng.standard_normal((1000, 2048), dtype=np.float32) * np.float32(math.sqrt(1 / 2048)),
        "fc.w"))
    inits.append(numpy_helper.from_array(np.zeros(1000, np.float32), "fc.b"))
    nodes.append(helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="fc",
                                  transB=1))
    m = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 224, 224])],
               [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1000])], inits)
    onnx.checker.check_model(m)
    onnx.save_model(m, path)
    return {"params": int(sum(np.prod(t.dims) for t in inits)), "convs": count[0],
            "model_bytes": Path(path).stat().st_size}


def build_seq_mlp(path: str, calib: str, groups: int, n_samples: int, d_in: int = 16,
                  seed: int = 0) -> dict:
    """``groups + 1`` Gemm layers (hidden widths 16–32, Relu between), input [N, d_in]."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(seed)
    widths = [d_in, *rng.integers(16, 33, size=groups).tolist(), 10]
    nodes, inits = [], []
    prev = "x"
    for i in range(len(widths) - 1):
        a, b = widths[i], widths[i + 1]
        # orthogonal-ish scaling keeps the activations alive through 400 layers
        inits.append(numpy_helper.from_array(
            (rng.standard_normal((b, a)) * math.sqrt(2.0 / a)).astype(np.float32), f"W{i}"))
        inits.append(numpy_helper.from_array(
            (rng.standard_normal(b) * 0.01).astype(np.float32), f"b{i}"))
        last = i == len(widths) - 2
        nodes.append(helper.make_node("Gemm", [prev, f"W{i}", f"b{i}"],
                                      ["y" if last else f"g{i}"], name=f"fc{i}", transB=1))
        if not last:
            nodes.append(helper.make_node("Relu", [f"g{i}"], [f"h{i}"], name=f"relu{i}"))
            prev = f"h{i}"
    m = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", d_in])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits)
    onnx.checker.check_model(m)
    onnx.save_model(m, path)
    np.savez(calib, x=rng.standard_normal((n_samples, d_in)).astype(np.float32))
    return {"layers": len(widths) - 1, "groups": groups}


def build_greedy(path: str, n: int, rows: int, m: int, seed: int = 0) -> dict:
    """G = XᵀX of X [rows, n] with correlated columns (a 256-factor model plus noise, unequal
    column scales), a consumer weight W [m, n], H = G Wᵀ, ‖T‖² = tr(W G Wᵀ)."""
    import numpy as np
    rng = np.random.default_rng(seed)
    k = 256
    L = rng.standard_normal((k, n)) / math.sqrt(k)
    scales = np.exp(0.5 * rng.standard_normal(n))
    G = np.zeros((n, n))
    for r in range(0, rows, 4000):
        c = min(4000, rows - r)
        X = (rng.standard_normal((c, k)) @ L + 0.3 * rng.standard_normal((c, n))) * scales
        G += X.T @ X
    G = (G + G.T) / 2
    W = rng.standard_normal((m, n)) / math.sqrt(n)
    H = G @ W.T
    np.savez(path, G=G, H=H, W=W, t_norm2=float(np.sum(W * (W @ G))))
    return {"n": n, "rows": rows, "m": m}


# ---------------------------------------------------------------------------------------------
# Children
# ---------------------------------------------------------------------------------------------

def child_normalize(path: str) -> None:
    t0 = time.perf_counter()
    from onnxprune.modelio import load_model
    from onnxprune.passbase import run_passes
    from onnxprune.passes import NormalizePass
    t1 = time.perf_counter()
    loaded = load_model(path)
    t2 = time.perf_counter()
    normalized, _ = run_passes([NormalizePass()], loaded.model)
    t3 = time.perf_counter()
    emit(import_s=round(t1 - t0, 2), load_s=round(t2 - t1, 2), normalize_s=round(t3 - t2, 2),
         nodes=len(normalized.graph.node))


def child_ort(path: str, d_in: int) -> None:
    import numpy as np
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    t0 = time.perf_counter()
    s = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    y = s.run(None, {"x": np.ones((2, d_in), np.float32)})[0]
    emit(session_and_run_s=round(time.perf_counter() - t0, 2), finite=bool(np.isfinite(y).all()))


def child_calib(model: str, calib: str, mode: str, out: str) -> None:
    """Statistics collection (``calibrate_stats``) or a whole prune at ratio 0.25, with the
    calibration file's path (onnxprune reads it, as the CLI would)."""
    import onnxprune
    t0 = time.perf_counter()
    if mode == "stats":
        from onnxprune.api import calibrate_stats
        calibrate_stats(model, calib, out)
        extra = {"stats_bytes": Path(out).stat().st_size}
        Path(out).unlink()
    else:
        rep = onnxprune.prune(model, calib, ratio=0.25).report
        extra = {"macs_fraction": round(rep.macs_after / rep.macs_before, 4),
                 "samples": rep.calib_samples + rep.holdout_samples}
    emit(seconds=round(time.perf_counter() - t0, 2), **extra)


def _count_fields(d, prefix="") -> dict:
    """Report fields whose name says they count statistics collections / model runs."""
    found = {}
    for k, v in (d.items() if isinstance(d, dict) else ()):
        if re.search(r"collect|statistic|stats_run|calibration_run|model_run|forward", k, re.I) \
                and isinstance(v, (int, float, dict)) and not isinstance(v, bool):
            found[prefix + k] = v
        elif isinstance(v, dict) and k in ("safeguard", "budget", "timings", "counters"):
            found.update(_count_fields(v, prefix + k + "."))
    return found


def child_seq(model: str, calib: str, repeats: int, budget_s: float) -> None:
    import numpy as np
    import onnxprune
    x = {"x": np.load(calib)["x"]}
    t_start = time.perf_counter()
    for r in range(repeats):
        order = ("inchange", "seq") if r % 2 == 0 else ("seq", "inchange")
        for meth in order:
            t0 = time.perf_counter()
            try:
                rep = onnxprune.prune(model, x, ratio=0.25, method=meth).report
            except Exception as e:  # noqa: BLE001
                emit(method=meth, repeat=r, error=_err(e))
                return
            d = rep.to_dict()
            emit(method=meth, repeat=r, seconds=round(time.perf_counter() - t0, 2),
                 report_seconds=round(rep.seconds, 2), groups=len(rep.groups),
                 macs_fraction=round(d["macs_fraction"], 4), counters=_count_fields(d),
                 safeguard=d.get("safeguard"))
        if r + 1 < repeats and (time.perf_counter() - t_start) * (r + 2) / (r + 1) > budget_s:
            emit(note=f"stopped after {r + 1} round(s): another would pass the {budget_s:.0f} s "
                      "budget of this section")
            break
    t0 = time.perf_counter()
    try:  # a budget decides every candidate allocation from one statistics collection
        d = onnxprune.prune(model, x, target_macs=0.75).report.to_dict()
    except Exception as e:  # noqa: BLE001
        emit(method="budget", repeat=0, error=_err(e))
        return
    emit(method="budget", repeat=0, seconds=round(time.perf_counter() - t0, 2),
         groups=len(d["groups"]), macs_fraction=round(d["macs_fraction"], 4),
         counters=_count_fields(d))


def _problem(data):
    import numpy as np
    from onnxprune.solvers.problem import ConsumerStats, Problem
    G, H, W = data["G"], data["H"], data["W"]
    n = G.shape[0]
    st = ConsumerStats(G=G, H=H, t_norm2=float(data["t_norm2"]), channels=np.arange(n), g=1,
                       has_const=False, weight=W)
    return Problem(n_channels=n, consumers=(st,), segments=np.zeros(n, dtype=np.int64),
                   quotas=np.array([0]))


def child_greedy_repo(data: str, keep: int, out: str) -> None:
    import dataclasses

    import numpy as np
    from onnxprune.solvers import greedy
    d = np.load(data)
    prob = _problem(d)
    t0 = time.perf_counter()
    if hasattr(greedy, "greedy_path"):
        picks = np.asarray(greedy.greedy_path(prob, keep)[0])
        fn = "greedy_path"
    else:
        prob = dataclasses.replace(prob, quotas=np.array([keep]))
        picks = np.asarray(greedy.greedy_select(prob))
        fn = "greedy_select"
    sec = time.perf_counter() - t0
    np.save(out, picks)
    emit(seconds=round(sec, 2), function=f"onnxprune.solvers.greedy.{fn}", picked=int(len(picks)),
         ordered=fn == "greedy_path")


def child_greedy_naive(data: str, steps: int, out: str) -> None:
    """Textbook greedy (1×1 blocks): gains tr(H_r,cᵀ H_r,c)/R_cc, then the Schur downdate of the
    whole n×n residual Gram with a fresh n×n temporary per step, R −= (U·W⁻¹) Uᵀ."""
    import numpy as np
    from onnxprune.solvers.greedy import RTOL
    d = np.load(data)
    G, H = d["G"], d["H"]
    n = G.shape[0]
    t0 = time.perf_counter()
    R, Hr = G.copy(), H.copy()
    scale = np.maximum(np.diag(G), np.finfo(float).tiny)
    selected = np.zeros(n, dtype=bool)
    picks = []
    for _ in range(steps):
        r = np.diag(R).copy()
        ok = r > RTOL * scale
        num = np.einsum("nm,nm->n", Hr, Hr)
        vals = np.where(ok, num / np.where(ok, r, 1.0), 0.0)
        vals = np.where(~selected, np.maximum(vals, 0.0), -np.inf)
        c = int(np.argmax(vals))
        selected[c] = True
        picks.append(c)
        w = R[c, c]
        if w > RTOL * scale[c]:
            U = R[:, [c]]
            Winv = np.array([1.0 / w])
            Hr -= (U * Winv) @ Hr[[c]]
            R -= (U * Winv) @ U.T
        R[c, :] = 0.0
        R[:, c] = 0.0
        Hr[c, :] = 0.0
    sec = time.perf_counter() - t0
    np.save(out, np.asarray(picks, dtype=np.int64))
    emit(seconds=round(sec, 2), steps=steps)


def run_child(name: str, kw: dict) -> int:
    builders = {"build_chain": build_chain, "build_external": build_external,
                "build_resnet50": build_resnet50, "build_seq_mlp": build_seq_mlp,
                "build_greedy": build_greedy}
    children = {"normalize": child_normalize, "ort": child_ort, "calib": child_calib,
                "seq": child_seq, "greedy_repo": child_greedy_repo,
                "greedy_naive": child_greedy_naive}
    try:
        if name in builders:
            t0 = time.perf_counter()
            info = builders[name](**kw) or {}
            emit(seconds=round(time.perf_counter() - t0, 2), **info)
        else:
            children[name](**kw)
    except Exception as e:  # noqa: BLE001
        import traceback
        traceback.print_exc()
        emit(error=_err(e))
        return 1
    return 0


# ---------------------------------------------------------------------------------------------
# Sections (parent)
# ---------------------------------------------------------------------------------------------

def _rec(row: dict, key: str, default=None):
    for r in row.get("records", []):
        if key in r:
            return r[key]
    return default


def _row(what: str, m: dict, **extra) -> dict:
    out = {"what": what, "ok": m["ok"], "wall_s": m["wall_s"], "peak_rss_mb": m["peak_rss_mb"],
           "rc": m["rc"], "other_load": m["other_load"], "error": m.get("error"), **extra}
    return out


def section_chain(a, work: Path) -> dict:
    rows, notes = [], []
    for n in a.chain_sizes:
        path = work / f"chain_{n}.onnx"
        b = measure(child_cmd("build_chain", n=n, path=str(path)), 600, a.rss_limit_mb,
                    label=f"chain: build {n}")
        if not b["ok"]:
            rows.append(_row(f"build {n}", b, nodes=n))
            continue
        m = measure(cli_cmd("inspect", str(path)), a.chain_timeout, a.rss_limit_mb,
                    label=f"chain: onnxprune inspect {n}")
        rows.append(_row("onnxprune inspect (CLI)", m, nodes=n))
        m = measure(child_cmd("normalize", path=str(path)), a.chain_timeout, a.rss_limit_mb,
                    label=f"chain: load + normalise {n}")
        rows.append(_row("load + NormalizePass (API)", m, nodes=n, load_s=_rec(m, "load_s"),
                         normalize_s=_rec(m, "normalize_s")))
        if not a.keep:
            path.unlink(missing_ok=True)
    # growth exponent between consecutive sizes: t ∝ n^b
    for what, key in (("onnxprune inspect (CLI)", "wall_s"),
                      ("load + NormalizePass (API)", "normalize_s")):
        pts = [(r["nodes"], r[key]) for r in rows if r["what"] == what and r["ok"] and r.get(key)]
        for (n1, t1), (n2, t2) in zip(pts, pts[1:]):
            if t1 > 0 and t2 > 0:
                notes.append(f"{what}, {key} {n1}→{n2} nodes: time ∝ n^"
                             f"{math.log(t2 / t1) / math.log(n2 / n1):.2f}")
    big = [r for r in rows if r["what"] == "onnxprune inspect (CLI)" and r["nodes"] == 100_000]
    target = None
    if big:
        target = bool(big[0]["ok"] and big[0]["wall_s"] < 30)
    return {"rows": rows, "notes": notes, "target": "100k-node inspect < 30 s",
            "target_met": target}


def section_external(a, work: Path) -> dict:
    rows, notes = [], []
    model = work / "mlp_ext.onnx"
    calib = work / "mlp_ext_calib.npz"
    out = work / "mlp_ext.pruned.onnx"
    files = [model, Path(str(model) + ".data"), calib, out, Path(str(out) + ".data")]
    summary: dict = {}
    try:
        b = measure(child_cmd("build_external", path=str(model), calib=str(calib),
                              d_in=a.external_input, hidden=a.external_hidden, n_out=10,
                              n_samples=a.external_samples), 1800, a.rss_limit_mb,
                    label="external: build")
        size = _rec(b, "model_bytes")
        rows.append(_row("build (numpy blocks → one .data file)", b,
                         model_gb=round(size / GB, 3) if size else None))
        summary.update(layers=_rec(b, "layers"), model_bytes=size,
                       largest_tensor_bytes=_rec(b, "largest_tensor_bytes"))
        if not b["ok"]:
            return {"rows": rows, "notes": notes, "summary": summary,
                    "target": "peak RSS ≤ 2.5× model size", "target_met": False}
        m = measure(child_cmd("ort", path=str(model), d_in=a.external_input), 900,
                    a.rss_limit_mb, label="external: onnxruntime session (reference)")
        rows.append(_row("onnxruntime session + 1 run (reference)", m,
                         rss_over_size=round(m["peak_rss_mb"] * 2**20 / size, 2)))
        m = measure(cli_cmd("inspect", str(model)), 900, a.rss_limit_mb,
                    label="external: onnxprune inspect")
        rows.append(_row("onnxprune inspect", m,
                         rss_over_size=round(m["peak_rss_mb"] * 2**20 / size, 2),
                         stderr_last=m["stderr_last"]))
        m = measure(cli_cmd("prune", str(model), str(out), "--calib", str(calib), "--ratio",
                            "0.25"), a.external_timeout, a.rss_limit_mb,
                    label="external: onnxprune prune --ratio 0.25")
        ratio = round(m["peak_rss_mb"] * 2**20 / size, 2)
        rows.append(_row("onnxprune prune --ratio 0.25", m, rss_over_size=ratio,
                         stderr_last=m["stderr_last"]))
        if m["ok"] and out.exists():
            summary["pruned_bytes"] = out.stat().st_size + (
                Path(str(out) + ".data").stat().st_size if Path(str(out) + ".data").exists()
                else 0)
        target = bool(m["ok"] and ratio <= 2.5)
    finally:
        if not a.keep:
            for f in files:
                f.unlink(missing_ok=True)
            notes.append("model, data, calibration and output files deleted after the run")
    return {"rows": rows, "notes": notes, "summary": summary,
            "target": "prune succeeds with peak RSS ≤ 2.5× model size", "target_met": target}


def section_calib_memory(a, work: Path) -> dict:
    rows, notes = [], []
    model = work / "resnet50.onnx"
    b = measure(child_cmd("build_resnet50", path=str(model)), 900, a.rss_limit_mb,
                label="calib_memory: build ResNet-50")
    rows.append(_row("build ResNet-50", b, params=_rec(b, "params")))
    modes = ["stats", "prune"] if a.calib_mode == "both" else [a.calib_mode]
    what = {"stats": "calibrate_stats (statistics collection only)", "prune": "prune ratio 0.25"}
    calibs = {n: work / f"resnet50_calib_{n}.npz" for n in a.resnet_samples}
    if b["ok"]:
        import numpy as np
        x = np.random.default_rng(0).standard_normal((max(a.resnet_samples), 3, 224, 224),
                                                     dtype=np.float32)
        for n, f in calibs.items():  # one file per size: a child reads only its own samples
            np.savez(f, x=x[:n])
        del x
        for mode in modes:
            for n in a.resnet_samples:
                m = measure(child_cmd("calib", model=str(model), calib=str(calibs[n]),
                                      mode=mode, out=str(work / f"resnet50_stats_{n}.npz")),
                            a.resnet_timeout, a.rss_limit_mb,
                            label=f"calib_memory: {what[mode]}, {n} samples")
                rows.append(_row(what[mode], m, mode=mode, samples=n,
                                 seconds=_rec(m, "seconds"),
                                 input_mb=round(calibs[n].stat().st_size / 2**20, 1)))
    growth = {}
    for mode in modes:
        ok = [r for r in rows if r.get("mode") == mode and r["ok"]]
        if len(ok) >= 2:
            lo, hi = ok[0], ok[-1]
            growth[mode] = round(100 * (hi["peak_rss_mb"] / lo["peak_rss_mb"] - 1), 1)
            notes.append(f"{what[mode]}: peak RSS {lo['peak_rss_mb']:.0f} MB with "
                         f"{lo['samples']} samples, {hi['peak_rss_mb']:.0f} MB with "
                         f"{hi['samples']}: growth {growth[mode]} % (the calibration file "
                         f"itself grows by {hi['input_mb'] - lo['input_mb']:.0f} MB)")
    if not a.keep:
        for f in (model, *calibs.values()):
            f.unlink(missing_ok=True)
    return {"rows": rows, "notes": notes, "growth_pct": growth, "measured": modes,
            "target": f"peak RSS growth {a.resnet_samples[0]} → {a.resnet_samples[1]} samples "
                      "≤ 10 %",
            "target_met": None if len(growth) < len(modes) else
            all(g <= 10 for g in growth.values())}


def section_seq(a, work: Path) -> dict:
    rows, notes = [], []
    model = work / "seq_mlp.onnx"
    calib = work / "seq_mlp_calib.npz"
    b = measure(child_cmd("build_seq_mlp", path=str(model), calib=str(calib),
                          groups=a.seq_groups, n_samples=256), 600, a.rss_limit_mb,
                label="seq: build MLP")
    rows.append(_row("build", b))
    summary: dict = {}
    if b["ok"]:
        m = measure(child_cmd("seq", model=str(model), calib=str(calib), repeats=a.seq_repeats,
                              budget_s=a.seq_timeout * 0.8), a.seq_timeout, a.rss_limit_mb,
                    label="seq: inchange vs seq, alternated")
        runs = [r for r in m["records"] if "method" in r]
        for r in runs:
            what = ("prune --target-macs 0.75 (inchange budget)" if r["method"] == "budget"
                    else f"prune method={r['method']} (run {r['repeat'] + 1})")
            rows.append({"what": what,
                         "ok": not r.get("error"), "wall_s": r.get("seconds"),
                         "error": r.get("error"), "groups": r.get("groups"),
                         "counters": r.get("counters"), "safeguard": r.get("safeguard")})
        notes += [r["note"] for r in m["records"] if "note" in r]
        if not m["ok"]:
            rows.append(_row("seq child", m))
        best = {}
        for meth in ("inchange", "seq"):
            ts = [r["seconds"] for r in runs if r["method"] == meth and r.get("seconds")]
            best[meth] = min(ts) if ts else None
        summary = {"min_s": best, "child_peak_rss_mb": m["peak_rss_mb"],
                   "child_wall_s": m["wall_s"]}
        if best["inchange"] and best["seq"]:
            summary["seq_over_inchange"] = round(best["seq"] / best["inchange"], 2)
        budget_runs = [(r.get("counters") or {}).get("statistics_runs")
                       for r in runs if r["method"] == "budget"]
        summary["budget_statistics_runs"] = budget_runs[0] if budget_runs else None
    if not a.keep:
        model.unlink(missing_ok=True)
        calib.unlink(missing_ok=True)
    ratio = summary.get("seq_over_inchange")
    once = summary.get("budget_statistics_runs")
    return {"rows": rows, "notes": notes, "summary": summary,
            "target": "seq wall ≤ 3× inchange; a budget collects statistics once",
            "target_met": None if ratio is None or once is None else ratio <= 3 and once == 1}


def section_greedy(a, work: Path) -> dict:
    rows, notes = [], []
    data = work / "greedy_gram.npz"
    b = measure(child_cmd("build_greedy", path=str(data), n=a.greedy_n, rows=a.greedy_rows,
                          m=a.greedy_m), 900, a.rss_limit_mb, label="greedy: build Gram")
    rows.append(_row(f"build G = XᵀX, X [{a.greedy_rows}, {a.greedy_n}]", b))
    summary: dict = {"n": a.greedy_n, "keep": a.greedy_keep, "consumer_outputs": a.greedy_m}
    if not b["ok"]:
        return {"rows": rows, "notes": notes, "summary": summary, "target": None,
                "target_met": None}
    repo_out, naive_out = work / "greedy_repo.npy", work / "greedy_naive.npy"
    m = measure(child_cmd("greedy_repo", data=str(data), keep=a.greedy_keep, out=str(repo_out)),
                a.greedy_timeout, a.rss_limit_mb, label="greedy: repo solver")
    t_repo = _rec(m, "seconds")
    rows.append(_row(f"repo: {_rec(m, 'function', 'greedy')}", m, solver_s=t_repo,
                     steps=a.greedy_keep))
    # the textbook greedy: a short probe, then the full run if it fits, else extrapolate
    probe = min(a.naive_probe_steps, a.greedy_keep)
    m = measure(child_cmd("greedy_naive", data=str(data), steps=probe, out=str(naive_out)),
                a.greedy_timeout, a.rss_limit_mb, label=f"greedy: textbook, {probe} steps")
    t_probe = _rec(m, "seconds")
    rows.append(_row("textbook (n×n temporary per step)", m, solver_s=t_probe, steps=probe))
    steps_done = probe
    if m["ok"] and t_probe and probe < a.greedy_keep:
        est = t_probe * a.greedy_keep / probe
        if est <= a.naive_budget:
            m = measure(child_cmd("greedy_naive", data=str(data), steps=a.greedy_keep,
                                  out=str(naive_out)), a.greedy_timeout, a.rss_limit_mb,
                        label=f"greedy: textbook, all {a.greedy_keep} steps")
            rows.append(_row("textbook (n×n temporary per step)", m, solver_s=_rec(m, "seconds"),
                             steps=a.greedy_keep))
            if m["ok"]:
                steps_done = a.greedy_keep
        else:
            notes.append(f"the textbook greedy's full run is EXTRAPOLATED: {probe} steps took "
                         f"{t_probe:.1f} s, × {a.greedy_keep}/{probe} = {est:.0f} s (above the "
                         f"{a.naive_budget:.0f} s budget); every step costs the same (the whole "
                         "n×n matrix is downdated), so the estimate is linear")
    naive_rows = [r for r in rows if r["what"].startswith("textbook") and r["ok"]]
    t_naive_full = next((r["solver_s"] for r in naive_rows if r["steps"] == a.greedy_keep), None)
    summary.update(repo_s=t_repo, naive_s=t_naive_full,
                   naive_extrapolated_s=None if t_naive_full or not t_probe else
                   round(t_probe * a.greedy_keep / probe, 1))
    t_naive = t_naive_full or summary["naive_extrapolated_s"]
    if t_repo and t_naive:
        summary["speedup"] = round(t_naive / t_repo, 2)
    if repo_out.exists() and naive_out.exists():
        import numpy as np
        rp, nv = np.load(repo_out), np.load(naive_out)
        k = min(steps_done, len(nv))
        if k == a.greedy_keep:
            same = set(rp.tolist()) == set(nv.tolist())
            summary["same_kept_set"] = same
            notes.append(f"kept sets ({a.greedy_keep} of {a.greedy_n}): "
                         f"{'IDENTICAL' if same else 'DIFFERENT'}"
                         + ("" if same else f" ({len(set(rp.tolist()) ^ set(nv.tolist()))} "
                            "channels differ)"))
        else:
            same = rp[:k].tolist() == nv[:k].tolist()
            summary["same_first_picks"] = {"k": k, "same": same}
            notes.append(f"first {k} picks (in order): {'IDENTICAL' if same else 'DIFFERENT'} "
                         "(the full kept set was not computed by the textbook greedy)")
        summary["agree"] = same
    if not a.keep:
        for f in (data, repo_out, naive_out):
            f.unlink(missing_ok=True)
    return {"rows": rows, "notes": notes, "summary": summary,
            "target": "same kept set as the textbook greedy; faster",
            "target_met": bool(summary.get("agree")) and (summary.get("speedup") or 0) > 1}


IMPORT_ALL = r"""
import importlib, json, pkgutil, sys
import onnxprune
bad = {}
names = [m.name for m in pkgutil.walk_packages(onnxprune.__path__, "onnxprune.")]
for m in names:
    try:
        importlib.import_module(m)
    except Exception as e:
        bad[m] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
print("@@JSON " + json.dumps({"file": onnxprune.__file__, "failed": bad, "modules": len(names),
                              "passes": sorted(n for n in names if ".passes" in n)}))
"""


def section_modules(a, work: Path) -> dict:
    notes = []
    counts = []
    for d in ("onnxprune", "passes"):
        for p in sorted((ROOT / d).rglob("*.py")):
            if "__pycache__" in p.parts:
                continue
            with open(p, encoding="utf-8", errors="replace") as f:
                counts.append((str(p.relative_to(ROOT)), sum(1 for _ in f)))
    counts.sort(key=lambda x: -x[1])
    over = [c for c in counts if c[1] > 500]
    install: list[dict] = []
    if not a.no_install:
        src, venv = work / "src", work / "venv"
        for d in (src, venv):
            shutil.rmtree(d, ignore_errors=True)
        src.mkdir(parents=True)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        for d in ("onnxprune", "passes"):
            shutil.copytree(ROOT / d, src / d, ignore=ignore)
        for f in ("pyproject.toml", "README.md", "LICENSE", "setup.cfg", "setup.py",
                  "MANIFEST.in"):
            if (ROOT / f).exists():
                shutil.copy2(ROOT / f, src / f)
        notes.append(f"installed from a copy of the working tree ({src}: onnxprune/, passes/, "
                     "pyproject.toml, README.md), so that the build writes nothing into the repo")
        steps = [
            ("python -m venv (plain, fresh)", [sys.executable, "-m", "venv", str(venv)], 300),
            ("pip install <copy of /work/main> (non-editable, from PyPI)",
             [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
              "--disable-pip-version-check", str(src)], a.install_timeout),
            ("import onnxprune, onnxprune.passes; from onnxprune.passes import prune",
             [str(venv / "bin" / "python"), "-c",
              "import onnxprune, onnxprune.passes; from onnxprune.passes import prune; "
              "print(onnxprune.__file__)"], 300),
            ("import every installed onnxprune module", [str(venv / "bin" / "python"), "-c",
                                                         IMPORT_ALL], 300),
            ("onnxprune --help (console script)", [str(venv / "bin" / "onnxprune"), "--help"],
             120),
        ]
        for what, cmd, timeout in steps:
            m = measure(cmd, timeout, a.rss_limit_mb, cwd=str(work), label=f"modules: {what}")
            r = _row(what, m)
            if "every installed" in what and m["ok"]:
                failed = _rec(m, "failed") or {}
                r["failed_modules"] = failed
                if failed:
                    r["ok"] = False
                    r["error"] = "; ".join(f"{k}: {v}" for k, v in failed.items())[:400]
                r["imported_from"] = _rec(m, "file")
                r["modules"] = _rec(m, "modules")
                notes.append(f"imported {_rec(m, 'modules')} installed modules from "
                             f"{_rec(m, 'file')}, of which onnxprune.passes: "
                             f"{', '.join(_rec(m, 'passes') or []) or 'none'}")
            install.append(r)
            if not m["ok"] and ("venv" in what or "pip install" in what):
                break
        # files of the source tree missing from the installed package
        site = next(iter(sorted(venv.glob("lib/python*/site-packages/onnxprune"))), None)
        if site is not None:
            want = {str(p.relative_to(src / "onnxprune")) for p in (src / "onnxprune").rglob("*.py")}
            want |= {"passes/" + str(p.relative_to(src / "passes"))
                     for p in (src / "passes").rglob("*.py")}
            have = {str(p.relative_to(site)) for p in site.rglob("*.py")}
            missing = sorted(want - have)
            notes.append("source .py files missing from the installed package: "
                         + (", ".join(missing) if missing else "none"))
            install.append({"what": "every source module installed", "ok": not missing,
                            "error": ", ".join(missing)[:400] if missing else None})
        if not a.keep:
            shutil.rmtree(venv, ignore_errors=True)
            shutil.rmtree(src, ignore_errors=True)
    ok = all(r["ok"] for r in install) if install else None
    return {"rows": install, "line_counts": counts, "over_500": over, "notes": notes,
            "target": "no module > 500 lines; non-editable install imports from outside the repo",
            "target_met": (not over) and bool(ok), "install_ok": ok}


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------

def _met(v) -> str:
    return "–" if v is None else ("**yes**" if v else "**no**")


def _status(r) -> str:
    return "ok" if r.get("ok") else f"FAILED: {r.get('error') or ''}".replace("|", "\\|")


def _table(cols, section: dict, cells) -> list[str]:
    """A section's markdown table (a row of ``cells(row)`` per row) and its notes."""
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(str(c) for c in cells(r)) + " |" for r in section["rows"]]
    return out + [""] + [f"- {n}" for n in section["notes"]] + [""]


def render(res: dict, meta: dict) -> str:
    L = ["# Scale benchmark (issue 10: one in-place graph, a linear-time engine)", "",
         f"Command: `{meta['command']}`  ",
         f"Date: {meta['date']}; commit {meta['commit'][:12]}"
         f"{' (onnxprune/ or passes/ modified in the working tree)' if meta['dirty'] else ''}; "
         f"total {meta['total_s']:.0f} s; other processes kept {meta['other_load']} cores busy on "
         "average (per row: `load`)  ",
         "Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()), "",
         "Every measurement is its own subprocess; `peak RSS` is that process's `ru_maxrss` "
         "(interpreter and imports included: ~80–100 MB for a bare onnxprune process), measured "
         "through a ~10 MB launcher so that this script's own size does not leak into it. A "
         "failure is a row with the first line of its error.", ""]
    made = {name: sec["run"] for name, sec in res.items() if sec.get("run")}
    if any(r["commit"] != meta["commit"] or r["date"] != meta["date"] for r in made.values()):
        L += ["Sections re-run alone keep the others from the previous file; which run made "
              "each:", "", "| section | commit | date | command |", "|---|---|---|---|"]
        L += [f"| {name} | {r['commit'][:12]}{' (modified)' if r['dirty'] else ''} | "
              f"{r['date']} | `{r['command']}` |" for name, r in made.items()] + [""]
    s = res.get("chain")
    if s:
        L += ["## chain: Relu/Neg chains", "", f"Target: {s['target']} — met: "
              f"{_met(s['target_met'])}", "",
              *_table(("nodes", "measurement", "wall s", "model load s", "normalise s",
                       "peak RSS MB", "load", "status"), s, lambda r: (
                  r.get('nodes', ''), r['what'], fmt(r['wall_s'], 2), fmt(r.get('load_s'), 2),
                  fmt(r.get('normalize_s'), 2), fmt(r['peak_rss_mb'], 0),
                  fmt(r['other_load'], 2), _status(r)))]
    s = res.get("external")
    if s:
        sm = s.get("summary", {})
        L += ["## external: MLP with > 2 GiB of external data", "",
              f"Layers (Gemm, Relu between): {', '.join(sm.get('layers') or [])}; model + data "
              f"{fmt((sm.get('model_bytes') or 0) / GB, 3)} GB; largest tensor "
              f"{fmt((sm.get('largest_tensor_bytes') or 0) / GB, 3)} GB (below protobuf's 2 GiB "
              "limit per message: the total is above it). The hidden widths stay ≤ 2048 so that "
              "the greedy (O(k·n²) per group) fits the run once the 2 GiB path works.", "",
              f"Target: {s['target']} — met: {_met(s['target_met'])}", "",
              "| step | wall s | peak RSS MB | RSS / model size | exit | load | status | "
              "stderr last line |", "|---|---|---|---|---|---|---|---|"]
        for r in s["rows"]:
            L.append(f"| {r['what']} | {fmt(r['wall_s'], 1)} | {fmt(r['peak_rss_mb'], 0)} | "
                     f"{'> ' if (r.get('error') or '').startswith('killed by the benchmark') else ''}"
                     f"{fmt(r.get('rss_over_size'), 2)} | {r['rc']} | "
                     f"{fmt(r['other_load'], 2)} | {_status(r)} | "
                     f"{(r.get('stderr_last') or '').replace('|', '/')[:160]} |")
        L += [""] + [f"- {n}" for n in s["notes"]] + [""]
    s = res.get("calib_memory")
    if s:
        L += ["## calib_memory: ResNet-50 shape at 224², 16 vs 128 samples", "",
              "Measured: " + " and ".join(
                  {"stats": "`onnxprune.api.calibrate_stats` (statistics collection only)",
                   "prune": "the whole `prune(ratio=0.25)`"}[m] for m in s["measured"]) + ".",
              "", f"Target: {s['target']} — growth "
              + ", ".join(f"{m}: {fmt(g, 1)} %" for m, g in s["growth_pct"].items())
              + f" — met: {_met(s['target_met'])}", "",
              *_table(("measurement", "samples", "in-child s", "wall s", "peak RSS MB", "load",
                       "status"), s, lambda r: (
                  r['what'], r.get('samples', ''), fmt(r.get('seconds'), 1), fmt(r['wall_s'], 1),
                  fmt(r['peak_rss_mb'], 0), fmt(r['other_load'], 2), _status(r)))]
    s = res.get("seq")
    if s:
        sm = s.get("summary", {})
        L += ["## seq: 401-Gemm MLP (400 groups), 256 samples", "",
              f"Target: {s['target']} — seq / inchange = {fmt(sm.get('seq_over_inchange'), 2)}× "
              f"(min of each), statistics runs of the budget: "
              f"{fmt(sm.get('budget_statistics_runs'), 0)} — met: {_met(s['target_met'])}", "",
              "| run | wall s | statistics runs (report) | status |", "|---|---|---|---|"]
        for r in s["rows"]:
            runs = (r.get("counters") or {}).get("statistics_runs", "")
            L.append(f"| {r['what']} | {fmt(r['wall_s'], 1)} | {runs} | {_status(r)} |")
        mn = sm.get("min_s") or {}
        L += ["", f"- min inchange {fmt(mn.get('inchange'), 1)} s, min seq "
              f"{fmt(mn.get('seq'), 1)} s; the child (both methods, all runs) peaked at "
              f"{fmt(sm.get('child_peak_rss_mb'), 0)} MB"] + [f"- {n}" for n in s["notes"]] + [""]
    s = res.get("greedy")
    if s:
        sm = s["summary"]
        L += [f"## greedy: keep {sm['keep']} of {sm['n']} channels (consumer with "
              f"{sm['consumer_outputs']} outputs)", "",
              f"Target: {s['target']} — met: {_met(s['target_met'])}; speedup "
              f"{fmt(sm.get('speedup'), 2)}×"
              f"{' (textbook time extrapolated)' if sm.get('naive_extrapolated_s') else ''}", "",
              "| solver | steps | solver s | wall s | peak RSS MB | load | status |",
              "|---|---|---|---|---|---|---|"]
        for r in s["rows"]:
            L.append(f"| {r['what']} | {r.get('steps', '')} | {fmt(r.get('solver_s'), 1)} | "
                     f"{fmt(r['wall_s'], 1)} | {fmt(r['peak_rss_mb'], 0)} | "
                     f"{fmt(r['other_load'], 2)} | {_status(r)} |")
        if sm.get("naive_extrapolated_s"):
            L.append(f"| textbook, all {sm['keep']} steps (**extrapolated**) | {sm['keep']} | "
                     f"{fmt(sm['naive_extrapolated_s'], 0)} | – | – | – | estimate |")
        L += [""] + [f"- {n}" for n in s["notes"]] + [""]
    s = res.get("modules")
    if s:
        L += ["## modules: sizes and a non-editable install", "",
              f"Target: {s['target']} — met: {_met(s['target_met'])}", "",
              f"Modules over 500 lines: {len(s['over_500'])} of {len(s['line_counts'])}", "",
              "| module | lines |", "|---|---|"]
        L += [f"| {p} | {n}{' **> 500**' if n > 500 else ''} |" for p, n in s["line_counts"]]
        L += ["", f"Total: {sum(n for _, n in s['line_counts'])} lines.", ""]
        if s["rows"]:
            L += ["| install step | wall s | status |", "|---|---|---|"]
            L += [f"| `{r['what']}` | {fmt(r.get('wall_s'), 1)} | {_status(r)} |"
                  for r in s["rows"]]
            L += [""]
        L += [f"- {n}" for n in s["notes"]] + [""]
    return "\n".join(L)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        return run_child(argv[1], json.loads(argv[2]))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(SECTIONS),
                    help=f"comma-separated sections of {', '.join(SECTIONS)}")
    ap.add_argument("--work", default="/tmp/scale")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results_scale.md"))
    ap.add_argument("--keep", action="store_true", help="keep the scratch models and venv")
    ap.add_argument("--rss-limit-gb", type=float, default=12.0,
                    help="kill a measured process whose RSS passes this (protects the machine)")
    ap.add_argument("--chain-sizes", type=int, nargs="+", default=[10_000, 30_000, 100_000])
    ap.add_argument("--chain-timeout", type=float, default=120.0)
    ap.add_argument("--external-input", type=int, default=262_000)
    ap.add_argument("--external-hidden", type=int, nargs="+", default=[2048, 2048, 1024])
    ap.add_argument("--external-samples", type=int, default=64)
    ap.add_argument("--external-timeout", type=float, default=900.0)
    ap.add_argument("--resnet-samples", type=int, nargs=2, default=[16, 128])
    ap.add_argument("--calib-mode", choices=("stats", "prune", "both"), default="both",
                    help="calib_memory measures calibrate_stats, the whole prune (~4-5 min per "
                         "size here), or both (default)")
    ap.add_argument("--resnet-timeout", type=float, default=420.0)
    ap.add_argument("--seq-groups", type=int, default=400)
    ap.add_argument("--seq-repeats", type=int, default=2)
    ap.add_argument("--seq-timeout", type=float, default=900.0)
    ap.add_argument("--greedy-n", type=int, default=3072)
    ap.add_argument("--greedy-keep", type=int, default=2304)
    ap.add_argument("--greedy-rows", type=int, default=20_000)
    ap.add_argument("--greedy-m", type=int, default=768)
    ap.add_argument("--greedy-timeout", type=float, default=900.0)
    ap.add_argument("--naive-probe-steps", type=int, default=200)
    ap.add_argument("--naive-budget", type=float, default=240.0,
                    help="run the textbook greedy in full when the probe predicts ≤ this (s)")
    ap.add_argument("--install-timeout", type=float, default=900.0)
    ap.add_argument("--no-install", action="store_true")
    a = ap.parse_args(argv)
    only = [s.strip() for s in a.only.split(",") if s.strip()]
    unknown = set(only) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown section(s) {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    a.rss_limit_mb = a.rss_limit_gb * 1024
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    funcs = {"chain": section_chain, "external": section_external,
             "calib_memory": section_calib_memory, "seq": section_seq,
             "greedy": section_greedy, "modules": section_modules}
    start = _snap()
    date = dt.datetime.now().isoformat(timespec="seconds")
    res: dict = {}
    for name in SECTIONS:
        if name not in only:
            continue
        t0 = time.perf_counter()
        try:
            res[name] = funcs[name](a, work)
        except Exception as e:  # noqa: BLE001 - a broken section must not lose the others
            import traceback
            traceback.print_exc()
            res[name] = {"rows": [], "notes": [f"section crashed: {_err(e)}"], "target": None,
                         "target_met": None, "summary": {}}
        res[name]["section_s"] = round(time.perf_counter() - t0, 1)
    end = _snap()
    g = git_info(ROOT)
    meta = {"command": " ".join(["OPENBLAS_NUM_THREADS=1 python benchmarks/run_scale.py",
                                 *argv]), "date": date, "commit": g["commit"],
            "dirty": g["dirty"], "total_s": end[0] - start[0],
            "other_load": _load_between(start, end),
            "versions": versions(("onnx", "onnxruntime", "numpy", "scipy", "protobuf",
                                  "onnx-graphsurgeon"))}
    out = Path(a.out)
    jpath = out.with_suffix(".json")
    for sec in res.values():  # each section says which run made it
        sec["run"] = {k: meta[k] for k in ("command", "date", "commit", "dirty")}
    if set(only) != set(SECTIONS) and jpath.exists():  # the other sections of the last file
        old = json.loads(jpath.read_text())
        for name, sec in old["sections"].items():
            if name not in res:
                sec.setdefault("run", {k: old["meta"][k] for k in
                                       ("command", "date", "commit", "dirty")})
                res[name] = sec
        res = {name: res[name] for name in SECTIONS if name in res}
    text = render(res, meta)
    out.write_text(text)
    jpath.write_text(json.dumps({"meta": meta, "sections": res}, indent=1, default=str) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
