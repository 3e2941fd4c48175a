"""Every option's value check, in one place.

The Python API calls these on its arguments; the CLI's argparse types convert the text to a
number and call the same function, so both refuse the same values with the same sentence
(:class:`~onnxprune.errors.OptionError`, one line, exit 2 on the command line).
"""

from __future__ import annotations

import math
import re

import numpy as np

from onnxprune.errors import OptionError


def interval(value, flag: str, lo: float, hi: float, closed: str = "[)",
             meaning: str = "") -> float:
    """A finite real number in the interval ``lo … hi`` (``closed``: which ends belong to it,
    as the brackets read), else ``FLAG must be in [lo, hi) (MEANING), got VALUE``."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
    if ok:
        v = float(value)
        ok = math.isfinite(v) and (lo <= v if closed[0] == "[" else lo < v) and (
            v <= hi if closed[1] == "]" else v < hi)
    if not ok:
        span = f"{closed[0]}{lo:g}, {hi:g}{closed[1]}"
        raise OptionError(f"{flag} must be in {span}{f' ({meaning})' if meaning else ''}, "
                          f"got {value!r}")
    return float(value)


def removed_fraction(value, flag: str, what: str) -> float:
    """``--ratio``, ``--head-ratio``, ``--sparsity``: the fraction of ``what`` removed."""
    return interval(value, flag, 0, 1, "[)", f"the fraction of {what} removed")


def sweep_ratios(values) -> list[float]:
    """The ``--ratio`` values of a sweep: each a removed fraction, none twice."""
    out = [removed_fraction(v, "--ratio", "channels") for v in values]
    if not out:
        raise OptionError("a sweep needs at least one --ratio")
    if len(set(out)) != len(out):
        raise OptionError(f"--ratio {' '.join(f'{v:g}' for v in out)}: a ratio is given twice")
    return out


def kept_fraction(value, flag: str, what: str) -> float:
    """``--target-macs``, ``--target-params``: the fraction of the original ``what`` kept."""
    return interval(value, flag, 0, 1, "(]", f"the fraction of the original {what} to keep")


def min_cosine(value) -> float:
    return interval(value, "--min-cosine", -1, 1, "()",
                    "the held-out output cosine the pruned model must keep, e.g. 0.99")


def nonzeros(value) -> float:
    return interval(value, "--nonzeros", 0, 1, "()",
                    "the fraction of the original non-zero parameters kept")


def holdout(value) -> float:
    return interval(value, "--holdout", 0, 1, "()",
                    "the fraction of calibration samples kept aside for the fidelity check")


def count(value, flag: str, limit: int = 1 << 20) -> int:
    """An integer in ``[1, limit]``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
            or not 1 <= value <= limit:
        raise OptionError(f"{flag} must be an integer in [1, {limit}], got {value!r}")
    return int(value)


def seed(value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise OptionError(f"--seed must be a non-negative integer, got {value!r}")
    return int(value)


def ridge(value, words: tuple[str, ...] = ("auto", "gcv")) -> float | str:
    """A non-negative number or one of ``words``."""
    if isinstance(value, str) and value in words:
        return value
    ok = not isinstance(value, (bool, str)) and isinstance(
        value, (int, float, np.integer, np.floating)) and math.isfinite(value) and value >= 0
    if not ok:
        quoted = " or ".join(f"'{w}'" for w in words)
        raise OptionError(f"--ridge must be a non-negative number{', ' if words else ''}"
                          f"{quoted}, got {value!r}")
    return float(value) if isinstance(value, (float, np.floating)) else value


def round_to(value) -> tuple[int, bool]:
    """``(K, auto)`` for ``--round-to``: ``"auto"`` (by width, ``KeepPlan.round_step``) or a
    multiple K ≥ 1 for every segment."""
    if value == "auto":
        return 1, True
    return count(value, "--round-to", 4096), False


def choice(value, what: str, choices) -> str:
    if value not in choices:
        raise OptionError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")
    return value


def shard(value) -> tuple[int, int]:
    """``(k, n)``: the k-th of n parts (``"K/N"`` text from the command line)."""
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", value)
        if not m:
            raise OptionError(f"--shard must be K/N (e.g. 2/4), got {value!r}")
        value = (int(m.group(1)), int(m.group(2)))
    try:
        k, n = value
    except (TypeError, ValueError):
        raise OptionError(f"--shard must be K/N (e.g. 2/4), got {value!r}") from None
    if not (isinstance(k, (int, np.integer)) and isinstance(n, (int, np.integer))
            and 1 <= k <= n <= 4096):
        raise OptionError(f"--shard K/N needs 1 ≤ K ≤ N ≤ 4096, got {k}/{n}")
    return int(k), int(n)


def exclusive(**given) -> None:
    """At most one of the named options (flag → value; None/False: not given)."""
    named = [flag for flag, v in given.items() if v is not None and v is not False]
    if len(named) > 1:
        raise OptionError(f"give either {named[0]} or {', '.join(named[1:])}, not both")


def sampling(holdout_: float, max_positions: int, seed_: int) -> None:
    """The options every calibrated run shares: held-out fraction, position cap, seed."""
    holdout(holdout_)
    count(max_positions, "--max-positions")
    seed(seed_)
