"""The console progress line: steps/s, ETA and the latest metrics.

    progress = Progress(total_steps=4000, start_step=0)
    steps_per_sec = progress.update(step)
    with progress.paused():        # evaluation and checkpoints don't count as training time
      ...
    print(progress.line(step, {"train/loss": 0.41}))
    # step 400/4000 (10.0%) | 7.9 steps/s | ETA 7m36s | train/loss 0.4100
"""

from __future__ import annotations

import contextlib
import time
from typing import Iterator


def format_duration(seconds: float) -> str:
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  if hours:
    return f"{hours}h{minutes:02d}m"
  return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


class Progress:
  """Training speed measured over training time only, and the ETA it implies."""

  def __init__(self, total_steps: int, start_step: int = 0):
    self.total_steps = total_steps
    self._last_step = start_step
    self._last_time = time.monotonic()
    self._paused_for = 0.0
    self.steps_per_sec = 0.0

  def update(self, step: int) -> float:
    now = time.monotonic()
    elapsed = now - self._last_time - self._paused_for
    if step > self._last_step and elapsed > 0:
      self.steps_per_sec = (step - self._last_step) / elapsed
    self._last_step, self._last_time, self._paused_for = step, now, 0.0
    return self.steps_per_sec

  @contextlib.contextmanager
  def paused(self) -> Iterator[None]:
    start = time.monotonic()
    try:
      yield
    finally:
      self._paused_for += time.monotonic() - start

  def eta_seconds(self, step: int) -> float:
    return (self.total_steps - step) / self.steps_per_sec if self.steps_per_sec else float("nan")

  def line(self, step: int, scalars: dict[str, float]) -> str:
    shown = " ".join(f"{key} {value:.4g}" for key, value in scalars.items()
                     if key.startswith(("train/loss", "train/accuracy", "val/accuracy", "lr")))
    eta = self.eta_seconds(step)
    eta_text = format_duration(eta) if eta == eta else "?"
    return (f"step {step}/{self.total_steps} ({100 * step / self.total_steps:.1f}%) | "
            f"{self.steps_per_sec:.1f} steps/s | ETA {eta_text} | {shown}")
