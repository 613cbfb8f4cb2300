"""Paired comparisons over seeds: how much a variant beats its baseline, and how surely.

    rows = sweep.rows()          # or list(csv.DictReader(open("runs/compare/results.csv")))
    result = paired_comparison(rows, key="distill.variant", baseline="alone",
                               metric="test/accuracy")
    result["variants"]["distilled"]["mean_difference"], ...["interval_95"]
    print(format_comparison(result))

A comparison sweep runs every variant once per seed (the other swept keys),
so each variant's result pairs with the baseline's of the same seed. The
difference of each pair, their mean and its two-sided 95% Student-t interval
(mean ± t(0.975, n-1) · s / √n, n pairs) are what the README tables report;
the pairing removes the seed-to-seed spread the variants share. Rows are dicts
with the sweep's `results.csv` columns (`status`, the swept keys, the metrics);
only COMPLETE trials count, and a seed whose pair is incomplete is left out.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import numpy as np

COMPARISON_JSON = "comparison.json"


def _number(value: Any) -> float | None:
  try:
    number = float(value)
  except (TypeError, ValueError):
    return None
  return number if math.isfinite(number) else None


def confidence_interval(values: Sequence[float], level: float = 0.95) -> float:
  """Half-width of the Student-t confidence interval of the mean of `values` (nan below 2)."""
  from scipy import stats  # pylint: disable=import-outside-toplevel  (slow import)
  if len(values) < 2:
    return math.nan
  sem = np.std(values, ddof=1) / math.sqrt(len(values))
  return float(stats.t.ppf(0.5 + level / 2, len(values) - 1) * sem)


def t_interval_95(values: Sequence[float]) -> tuple[float, float]:
  """The two-sided 95% Student-t interval of the mean of `values` ((nan, nan) below 2)."""
  half = confidence_interval(values)
  mean = float(np.mean(values)) if len(values) else math.nan
  return mean - half, mean + half


def paired_comparison(rows: Iterable[dict], *, key: str, baseline: Any, metric: str,
                      pair_by: Sequence[str] | None = None) -> dict:
  """Each value of `key` against `baseline` on `metric`, paired by the keys `pair_by`
  (default: every other column that is not a metric, i.e. the other swept keys).

  Returns {'key', 'baseline', 'metric', 'pair_by', 'means': {variant: {'n', 'std' (of
  `metric`) and the mean of every metric column ('val/...', 'test/...')}}, 'variants':
  {variant: {'pairs': [{pair keys..., baseline: value, variant: value, 'difference'}],
  'n', 'mean_difference', 'interval_95': [low, high], 'min_difference', 'all_positive'}}};
  undefined statistics (fewer than two pairs) are None.
  """
  rows = [r for r in rows if r.get("status") == "COMPLETE" and _number(r.get(metric)) is not None]
  if pair_by is None:
    ignored = {"trial", "status", "wall_time_s", "workdir", "error", key}
    pair_by = sorted({k for r in rows for k in r if k not in ignored and "/" not in k})
  pair_by = list(pair_by)
  by_variant: dict[str, dict[tuple, dict]] = {}
  for row in rows:
    pair = tuple(str(row.get(k)) for k in pair_by)
    by_variant.setdefault(str(row[key]), {})[pair] = row
  baseline = str(baseline)
  base = by_variant.get(baseline, {})
  result = {"key": key, "baseline": baseline, "metric": metric, "pair_by": pair_by,
            "means": {}, "variants": {}}
  for variant, results in sorted(by_variant.items(), key=lambda item: item[0] != baseline):
    values = [_number(r[metric]) for r in results.values()]
    means = {"n": len(values), "std": float(np.std(values, ddof=1)) if len(values) > 1 else None}
    for column in sorted({k for r in results.values() for k in r if "/" in k}):
      numbers = [x for x in (_number(r.get(column)) for r in results.values()) if x is not None]
      if numbers:
        means[column] = float(np.mean(numbers))
    result["means"][variant] = means
    if variant == baseline:
      continue
    pairs = []
    for pair in sorted(set(results) & set(base)):
      a, b = _number(base[pair][metric]), _number(results[pair][metric])
      keys = {k: results[pair].get(k) for k in pair_by}
      pairs.append({**keys, baseline: a, variant: b, "difference": b - a})
    differences = [p["difference"] for p in pairs]
    low, high = t_interval_95(differences)
    result["variants"][variant] = {
        "pairs": pairs, "n": len(pairs),
        "mean_difference": float(np.mean(differences)) if pairs else None,
        "interval_95": [None, None] if math.isnan(low) else [low, high],
        "min_difference": min(differences) if pairs else None,
        "all_positive": bool(pairs) and min(differences) > 0}
  return result


def format_comparison(result: dict) -> str:
  """A plain-text table: one line per pair, then the mean difference and its 95% interval."""
  baseline, metric = result["baseline"], result["metric"]
  lines = []
  for variant, summary in result["variants"].items():
    lines.append(f"{result['key']}={variant} vs {baseline} on {metric}, "
                 f"paired by {', '.join(result['pair_by']) or 'nothing'}:")
    header = [*result["pair_by"], baseline, variant, "difference"]
    lines.append("  ".join(f"{h:>12}" for h in header))
    for pair in summary["pairs"]:
      cells = [str(pair[k]) for k in result["pair_by"]]
      cells += [f"{pair[baseline]:.4f}", f"{pair[variant]:.4f}", f"{pair['difference']:+.4f}"]
      lines.append("  ".join(f"{c:>12}" for c in cells))
    if not summary["pairs"]:
      lines.append("no complete pairs yet")
      continue
    low, high = summary["interval_95"]
    interval = "undefined" if low is None else f"{low:+.4f} to {high:+.4f}"
    lines.append(f"mean difference {summary['mean_difference']:+.4f} (95% t-interval "
                 f"{interval}, {summary['n']} pairs; smallest {summary['min_difference']:+.4f})")
  return "\n".join(lines)
