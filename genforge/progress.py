"""Progress a person can read, on a terminal and in a log file.

On a terminal a bar redraws in place (tqdm underneath). Piped to a file (CI, `make speedrun > log 2>&1`)
a redrawing bar is a wall of carriage returns (one speedrun wrote 564 KB of them), so there it prints a
plain line every `every` of the total (10 % by default) and once at the end, each with the rate and
the latest postfix, and never a carriage return:

    [pretrain] 120/1,200 step (10%) | 3.4 step/s | 0:35 elapsed, 5:17 left | loss=2.34 tok_s=15,234

The interface is tqdm's `update` / `set_postfix` / `close`, so a tqdm call site changes only where the
bar is made. `GENFORGE_PROGRESS=bar|lines|off` overrides the terminal check (e.g. `lines` under a CI
that fakes a terminal).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO, TypeVar

T = TypeVar("T")
MODES = ("bar", "lines", "off")


def _is_tty(file: Any) -> bool:
    try:
        return bool(file.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _clock(seconds: float) -> str:
    seconds = int(max(0.0, seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def _rate(rate: float, unit: str) -> str:
    if rate <= 0 or math.isinf(rate) or math.isnan(rate):
        return f"– {unit}/s"
    if rate < 1:
        return f"{1 / rate:,.1f} s/{unit}"
    return f"{rate:,.1f} {unit}/s" if rate < 100 else f"{rate:,.0f} {unit}/s"


class Progress:
    """A progress bar on a terminal, a line every few percent elsewhere (see the module docstring).

    total: the count at the end (None: unknown; lines then come every `heartbeat_s` seconds).
    initial: where a resumed run starts. every: fraction of the total between two lines.
    heartbeat_s: longest silence in lines mode, so a slow stage never looks hung.
    mode: "bar", "lines" or "off"; None picks "bar" on a terminal and "lines" otherwise
    (`GENFORGE_PROGRESS` wins over both).
    """

    def __init__(self, total: int | None = None, desc: str = "", unit: str = "it", *, initial: int = 0,
                 file: TextIO | None = None, enabled: bool = True, every: float = 0.1, heartbeat_s: float = 60.0,
                 mode: str | None = None):
        self.file = file if file is not None else sys.stderr  # looked up now, so redirection is honoured
        env = os.environ.get("GENFORGE_PROGRESS", "").strip().lower()
        if env and env not in MODES:
            raise ValueError(f"GENFORGE_PROGRESS must be one of {', '.join(MODES)}; got '{env}'")
        if mode is not None and mode not in MODES:
            raise ValueError(f"progress mode must be one of {', '.join(MODES)}; got '{mode}'")
        self.mode = "off" if not enabled else env or mode or ("bar" if _is_tty(self.file) else "lines")
        if not 0 < every <= 1:
            raise ValueError(f"every must be in (0, 1], got {every}")
        self.total, self.desc, self.unit, self.every, self.heartbeat_s = total, desc, unit, every, heartbeat_s
        self.n = self.initial = initial
        self.postfix: dict[str, str] = {}
        self.t0 = self._last_t = time.perf_counter()
        self._last_bucket = self._bucket(initial)
        self._closed = self._final_done = False
        self._bar = None
        if self.mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=self.file,
                             dynamic_ncols=True, leave=True)

    def _bucket(self, n: int) -> int:
        return int(n / self.total / self.every + 1e-9) if self.total else 0

    def update(self, k: int = 1) -> None:
        """Count k more items; in lines mode print when a new `every` step of the total is reached."""
        self.n += k
        if self._bar is not None:
            self._bar.update(k)
        if self.mode != "lines":
            return
        now = time.perf_counter()
        if self.total and self.n >= self.total:
            self._line(now, final=True)
        elif (b := self._bucket(self.n)) > self._last_bucket or now - self._last_t >= self.heartbeat_s:
            self._last_bucket = max(b, self._last_bucket)
            self._line(now)

    def set_postfix(self, **values: Any) -> None:
        """Key=value pairs shown after the rate (the latest ones; in lines mode on the next line)."""
        self.postfix = {k: str(v) for k, v in values.items()}
        if self._bar is not None:
            self._bar.set_postfix(self.postfix)

    def _line(self, now: float, final: bool = False) -> None:
        if final:
            if self._final_done:
                return
            self._final_done = True
        self._last_t = now
        elapsed = now - self.t0
        rate = (self.n - self.initial) / elapsed if elapsed > 0 else math.inf
        parts = [f"[{self.desc}] " if self.desc else ""]
        if self.total:
            parts.append(f"{self.n:,}/{self.total:,} {self.unit} ({100 * self.n / self.total:.0f}%)")
        else:
            parts.append(f"{self.n:,} {self.unit}")
        parts.append(f" | {_rate(rate, self.unit)} | {_clock(elapsed)} elapsed")
        if self.total and not final and 0 < rate < math.inf:
            parts.append(f", {_clock((self.total - self.n) / rate)} left")
        if final:
            parts.append(", done" if not self.total or self.n >= self.total else ", stopped")
        if self.postfix:
            parts.append(" | " + " ".join(f"{k}={v}" for k, v in self.postfix.items()))
        print("".join(parts), file=self.file, flush=True)

    def close(self) -> None:
        """Finish: the bar's last draw, or the final line (once) in lines mode."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.mode == "lines" and self.n > self.initial:
            self._line(time.perf_counter(), final=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress(iterable: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it",
             **kwargs: Any) -> Iterator[T]:
    """Iterate with a `Progress` (total from len() when the iterable has one)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with Progress(total, desc, unit, **kwargs) as bar:
        for item in iterable:
            yield item
            bar.update(1)
