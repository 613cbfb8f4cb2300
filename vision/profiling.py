"""Where a compiled step spends its time: a `jax.profiler` trace summed by HLO op.

    shares = op_profile(one_step, repeats=3)     # runs one_step 3× under the profiler
    print(format_op_profile(shares, top=15))     # each op's and each kind's share of op time

XLA:CPU records one trace event per executed HLO op (its thunk), named after
the op in the optimised HLO (`transpose_copy_fusion.64`, `ynn_fusion.8`,
`convolution.2`, ...). Summing their durations per op, and per kind (the name
without its number), shows what to tune; `compiled.as_text()` then says what
each op computes. Shares hold up on a loaded machine far better than times do,
though memory-bound ops suffer most from other processes.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import gzip
import json
import os
import re
import tempfile
from typing import Callable

import jax


@dataclasses.dataclass(frozen=True)
class OpProfile:
  """Microseconds per call of each HLO op and of each kind of op, summed over threads."""
  ops: dict[str, float]
  kinds: dict[str, float]

  @property
  def total(self) -> float:
    return sum(self.ops.values())


def op_kind(name: str) -> str:
  """`transpose_copy_fusion.64` → `transpose_copy_fusion`."""
  return re.sub(r"[._]\d+$", "", name)


def op_profile(fn: Callable[[], object], repeats: int = 3) -> OpProfile:
  """Runs `fn` (blocking, already compiled and warmed up) `repeats` times under the profiler."""
  with tempfile.TemporaryDirectory() as directory:
    with jax.profiler.trace(directory, create_perfetto_trace=True):
      for _ in range(repeats):
        fn()
    trace, = glob.glob(os.path.join(directory, "**", "*.trace.json.gz"), recursive=True)
    with gzip.open(trace) as file:
      events = json.load(file)["traceEvents"]
  ops: collections.Counter = collections.Counter()
  for event in events:
    op = event.get("args", {}).get("hlo_op")
    if event.get("ph") == "X" and op:
      ops[op] += event.get("dur", 0.0) / repeats
  kinds: collections.Counter = collections.Counter()
  for op, micros in ops.items():
    kinds[op_kind(op)] += micros
  return OpProfile(dict(ops.most_common()), dict(kinds.most_common()))


def format_op_profile(profile: OpProfile, top: int = 12) -> str:
  total = profile.total or 1.0
  lines = [f"op time {profile.total / 1000:.1f} ms per call, summed over threads; "
           f"by kind: " + ", ".join(f"{kind} {100 * micros / total:.0f}%"
                                    for kind, micros in list(profile.kinds.items())[:6])]
  lines += [f"  {100 * micros / total:5.1f}%  {op}" for op, micros in
            list(profile.ops.items())[:top]]
  return "\n".join(lines)
