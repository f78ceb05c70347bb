"""A progress line on stderr for commands that run for more than a few seconds.

tqdm draws it when installed (it comes with the ``rl`` extra); otherwise a plain ``\\r``-rewritten line of our
own. Either way it stays silent when stderr is not a terminal (a log file or a pipe gets no control
characters) or when the command was given ``--quiet``, and it never writes to stdout, which carries results.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any


class Progress:
    """``with Progress(total, "compare") as p: ... p.update(1, "static ep 2")``."""

    def __init__(self, total: int, label: str, *, quiet: bool = False, stream: IO[str] | None = None) -> None:
        self.total = max(0, int(total))
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.enabled = not quiet and bool(isatty and isatty())
        self.done = 0
        self._start = time.monotonic()
        self._bar: Any = None
        self._width = 0
        if self.enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self._bar = tqdm(total=self.total, desc=label, file=self.stream, leave=False, dynamic_ncols=True)

    def update(self, n: int = 1, note: str = "") -> None:
        """Count ``n`` more units done; ``note`` says what is running now."""
        self.done += n
        if not self.enabled:
            return
        if self._bar is not None:
            if note:
                self._bar.set_postfix_str(note, refresh=False)
            self._bar.update(n)
            return
        self._draw(note)

    def _draw(self, note: str) -> None:
        elapsed = time.monotonic() - self._start
        share = self.done / self.total if self.total else 1.0
        eta = f", ~{elapsed / share - elapsed:.0f} s left" if 0 < share < 1 else ""
        line = f"{self.label}: {self.done}/{self.total} ({100 * share:.0f}%) {elapsed:.0f} s{eta}"
        if note:
            line += f"  {note}"
        pad = max(0, self._width - len(line))
        self._width = len(line)
        self.stream.write("\r" + line + " " * pad)
        self.stream.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        elif self._width:
            self.stream.write("\r" + " " * self._width + "\r")  # leave the terminal as it was
            self.stream.flush()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
