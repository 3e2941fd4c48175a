"""Calibration samples from a text file (``--calib-text FILE --tokenizer DIR``; optional extra
``text``: the Hugging Face ``tokenizers`` library, no framework).

Every non-empty line of the UTF-8 file is one sample. The tokenizer is the ``tokenizer.json``
of ``DIR`` (the file every Hugging Face model folder ships; a path to the file itself also
works), used as it is — its normaliser, pre-tokeniser and post-processor (``[CLS] … [SEP]``)
apply. Sequences are truncated to ``--max-length`` (default: the model's static sequence length,
else 128) and padded to the longest sample (to the static length when the model has one) with
the tokenizer's padding token (id 0 when it has none). The model's inputs are filled by name:
``input_ids`` (token ids), ``attention_mask`` (1 on tokens, 0 on padding: the token mask of the
statistics), ``token_type_ids`` (the tokenizer's type ids) — anything else is an error naming
the input.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from onnxprune.errors import CalibrationError, OptionError

#: Sequence length when neither ``--max-length`` nor the model's input shape gives one.
DEFAULT_MAX_LENGTH = 128


def tokenizer_file(tokenizer: str | Path) -> Path:
    p = Path(tokenizer)
    f = p / "tokenizer.json" if p.is_dir() else p
    if not f.is_file():
        raise CalibrationError(f"no tokenizer at '{tokenizer}': give a folder holding "
                               "tokenizer.json (a Hugging Face model folder) or the file itself")
    return f


def text_lines(path: str | Path) -> list[str]:
    p = Path(path)
    try:
        lines = [line.strip() for line in p.read_text(encoding="utf-8").splitlines()]
    except FileNotFoundError:
        raise CalibrationError(f"text file '{p}' does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CalibrationError(f"text file '{p}' cannot be read as UTF-8 ({exc})") from None
    lines = [line for line in lines if line]
    if len(lines) < 2:
        raise CalibrationError(f"text file '{p}' holds {len(lines)} non-empty line(s); give at "
                               "least 2 (a few hundred sentences is typical)")
    return lines


def load_texts(path: str | Path, tokenizer: str | Path, model: onnx.ModelProto,
               max_length: int | None = None) -> dict[str, np.ndarray]:
    """``{input name: (N, L) array}`` from the lines of ``path`` (module docstring)."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise OptionError("--calib-text needs the tokenizers library: pip install "
                          "'onnxprune[text]'") from None
    from onnxprune.modelio import model_inputs
    specs = model_inputs(model)
    roles = {}
    for s in specs:
        low = s.name.lower()
        role = next((r for r in ("input_ids", "attention_mask", "token_type_ids") if r in low),
                    None)
        if role is None or len(s.shape) != 2:
            raise OptionError(f"--calib-text fills inputs named input_ids, attention_mask and "
                              f"token_type_ids of shape [batch, sequence]; the model input "
                              f"'{s.name}' {list(s.shape)} is none of them (give --calib)")
        roles[s.name] = (role, s)
    if not any(role == "input_ids" for role, _ in roles.values()):
        raise OptionError("--calib-text: the model has no input_ids input (give --calib)")
    static = {s.shape[1] for _, s in roles.values() if isinstance(s.shape[1], int)
              and s.shape[1] > 0}
    if len(static) > 1:
        raise OptionError(f"the model's text inputs disagree on the sequence length: {static}")
    fixed = static.pop() if static else None
    length = max_length or fixed or DEFAULT_MAX_LENGTH
    if fixed is not None and length != fixed:
        raise OptionError(f"--max-length {length}: the model's inputs have a static sequence "
                          f"length of {fixed}")
    f = tokenizer_file(tokenizer)
    try:
        tok = Tokenizer.from_file(str(f))
    except Exception as exc:  # noqa: BLE001 - the Rust side raises its own exception type
        raise CalibrationError(f"'{f}' is not a tokenizers tokenizer.json ({exc})") from None
    pad_id = tok.padding["pad_id"] if tok.padding else 0
    tok.no_padding()
    tok.enable_truncation(length)
    encodings = tok.encode_batch(text_lines(path))
    width = fixed or max(len(e.ids) for e in encodings)
    n = len(encodings)
    ids = np.full((n, width), pad_id, dtype=np.int64)
    mask = np.zeros((n, width), dtype=np.int64)
    types = np.zeros((n, width), dtype=np.int64)
    for i, e in enumerate(encodings):
        k = len(e.ids)
        ids[i, :k], mask[i, :k], types[i, :k] = e.ids, 1, e.type_ids
    by_role = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    return {name: by_role[role].astype(spec.dtype) for name, (role, spec) in roles.items()}
