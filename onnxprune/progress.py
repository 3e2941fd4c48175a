"""Progress messages of the command line (the library reports progress through a callback;
only :mod:`onnxprune.cli` creates a :class:`Progress`)."""

from __future__ import annotations

import re
import shutil
import sys


class Progress:
    """Progress messages on stderr. On a terminal (``live``) a message counting ``k/N`` (a
    calibration batch, a group, a layer) redraws one line with a bar instead of adding a line;
    elsewhere (logs, pipes) every message is a line and per-batch ticks are not sent at all."""

    _COUNT = re.compile(r"(\d+)/(\d+)")

    def __init__(self, stream=None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self.open = False  # a bar line is drawn and not ended

    def __call__(self, msg: str) -> None:
        m = self._COUNT.search(msg) if self.live else None
        if m is None:
            self._end()
            self.stream.write(f"onnxprune: {msg}\n")
            return
        k, n = int(m.group(1)), max(int(m.group(2)), 1)
        filled = round(20 * min(k, n) / n)
        width = shutil.get_terminal_size((100, 20)).columns
        line = f"onnxprune: [{'#' * filled}{'.' * (20 - filled)}] {msg}"
        self.stream.write("\r" + line[:width - 1].ljust(width - 1))
        self.open = True
        if k >= n:
            self._end()
        self.stream.flush()

    def _end(self) -> None:
        if self.open:
            self.stream.write("\n")
            self.open = False
