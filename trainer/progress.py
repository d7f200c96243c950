"""Progress of a group of fits (the folds of a cross-validation, the heads of ``mmfeat compare``) a person can watch.

Each fit reports its epochs (``Progress.update``) and its end (``Progress.finish``). When stderr is a terminal
and the ``trainer`` logger shows INFO, a ``tqdm`` bar counts epochs; otherwise an INFO log line comes at most
every ``interval_s`` seconds. Both say which fit ran last, its epoch and validation loss, the time elapsed and
an upper bound of the time left: the epochs not yet run (a fit that stops early gives its remaining epochs
back) at the rate epochs ran so far.
"""
from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, TextIO

logger = logging.getLogger("trainer.progress")

LOG_INTERVAL_S = 5.0
BAR_INTERVAL_S = 0.2

EpochCallback = Callable[[int, float], None]
"""Called after each epoch with the number of epochs done and the validation loss."""


@dataclass
class _FitState:
    name: str
    epochs: int
    done: int = 0  # epochs counted (a finished fit counts all of its epochs)
    ran: int = 0  # epochs actually run
    val_loss: float = math.nan
    finished: bool = False


def format_seconds(seconds: float) -> str:
    """``75.2`` -> ``"1m15s"``; ``9.7`` -> ``"10s"``."""
    seconds = int(round(max(seconds, 0.0)))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes}m{seconds:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


class Progress:
    """Epoch counts of the fits ``names`` (each at most ``epochs``), shown as a bar or as periodic log lines.

    Args:
        names: one per fit, e.g. ``"attention fold 2/5"``.
        epochs: the most epochs a fit runs (``TrainConfig.epochs``).
        title: what the group is, first on each line (``"cross-validation"``, ``"compare"``).
        bar: ``True``/``False`` to force; ``None``: a bar when ``stream`` is a terminal and INFO is shown.
        interval_s: seconds between log lines (default ``LOG_INTERVAL_S``; bars redraw more often).
        stream: where a bar is drawn (default: the ``sys.stderr`` of the moment).
    """

    def __init__(self, names: list[str], epochs: int, *, title: str, bar: Optional[bool] = None, interval_s: Optional[float] = None,
                 stream: Optional[TextIO] = None) -> None:
        self.title = title
        self.fits = {name: _FitState(name, max(1, epochs)) for name in names}
        self.interval_s = LOG_INTERVAL_S if interval_s is None else interval_s
        self.started = time.monotonic()
        self._last_shown = self.started
        self._current: Optional[_FitState] = None
        self._epochs_run = 0  # epochs actually run (the epochs a fit that stopped early gives back do not count)
        self._rate_origin: Optional[tuple[float, int]] = None  # (time, epochs run) at the first report: the rate leaves start-up out
        stream = stream or sys.stderr
        if bar is None:
            bar = bool(getattr(stream, "isatty", lambda: False)()) and logger.isEnabledFor(logging.INFO)
        self._bar: Any = None
        if bar:
            from tqdm import tqdm

            self._bar = tqdm(total=sum(f.epochs for f in self.fits.values()), desc=title, unit="epoch", file=stream,
                             mininterval=BAR_INTERVAL_S, dynamic_ncols=True, leave=False)

    def callback(self, name: str) -> EpochCallback:
        """An ``EpochCallback`` reporting for the fit ``name``."""
        return lambda done, val_loss: self.update(name, done, val_loss)

    def update(self, name: str, done: int, val_loss: float) -> None:
        """Fit ``name`` has run ``done`` epochs; its latest validation loss is ``val_loss``."""
        state = self.fits[name]
        if state.finished:  # a late report from a worker process
            return
        step, state.done, state.ran, state.val_loss = done - state.done, done, done, val_loss
        self._current = state
        self._epochs_run += step
        if self._rate_origin is None:
            self._rate_origin = (time.monotonic(), self._epochs_run)
        self._advance(step)

    def finish(self, name: str) -> None:
        """Fit ``name`` ended (its epochs not run count as done)."""
        state = self.fits[name]
        if state.finished:
            return
        state.finished = True
        step, state.done = state.epochs - state.done, state.epochs
        self._advance(step, force=all(f.finished for f in self.fits.values()))

    def close(self) -> None:
        """Remove the bar (log lines need nothing)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def time_left_s(self) -> float:
        """Upper bound of the seconds left: epochs not run, at the rate since the first report (``inf`` until it is known)."""
        remaining = sum(f.epochs - f.done for f in self.fits.values())
        if not remaining:
            return 0.0
        if self._rate_origin is None:
            return math.inf
        since, run_then = self._rate_origin
        run = self._epochs_run - run_then
        return remaining * (time.monotonic() - since) / run if run > 0 else math.inf

    def describe(self) -> str:
        """``"3/10 fits done; attention fold 2/5 epoch 40/300, validation loss 0.512; 12s elapsed, at most 40s left"``, or
        once every fit ended ``"10 fits done in 1m05s"`` (one fit: ``"attention ran 80 epochs in 4s, validation loss 0.210"``)."""
        elapsed = format_seconds(time.monotonic() - self.started)
        if all(f.finished for f in self.fits.values()):
            if len(self.fits) == 1:
                only = next(iter(self.fits.values()))
                return f"{only.name} ran {only.ran} epochs in {elapsed}, last validation loss {only.val_loss:.4f}"
            return f"{len(self.fits)}/{len(self.fits)} fits done in {elapsed}"
        finished = sum(f.finished for f in self.fits.values())
        parts = [f"{finished}/{len(self.fits)} fits done"] if len(self.fits) > 1 else []
        current = self._current
        if current is not None and not current.finished:
            parts.append(f"{current.name} epoch {current.done}/{current.epochs}, validation loss {current.val_loss:.4f}")
        left = self.time_left_s()
        parts.append(f"{elapsed} elapsed" + (f", at most {format_seconds(left)} left" if math.isfinite(left) else ""))
        return "; ".join(parts)

    def _advance(self, epochs: int, *, force: bool = False) -> None:
        if self._bar is not None:
            self._bar.update(epochs)
            current = self._current
            if current is not None:
                self._bar.set_postfix_str(f"{current.name} epoch {current.done}, val {current.val_loss:.4f}", refresh=False)
            return
        now = time.monotonic()
        if force or now - self._last_shown >= self.interval_s:
            self._last_shown = now
            logger.info("%s: %s", self.title, self.describe())
