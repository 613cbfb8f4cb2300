"""Learning curves of active-learning runs: accuracy vs labels, mean ± 95% CI over seeds.

    plot(rows, "runs/al/curve.png", full_data_accuracy=0.9238)
    print(table(rows, full_data_accuracy=0.9238))   # Markdown, one line per strategy

`rows` are curve.json's: one per (strategy, seed, round) with `num_labels`,
`test_accuracy` and `macro_f1`. The interval is Student t over the seeds
(`vision.comparison.confidence_interval`).
"""

from __future__ import annotations

import collections
import os
from typing import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np

from vision.comparison import confidence_interval
from vision.files import write_atomically

CURVE_JSON, CURVE_PNG, CURVE_MD = "curve.json", "curve.png", "curve.md"


def summarise(rows: Sequence[dict], metric: str = "test_accuracy") -> dict[str, dict[int, dict]]:
  """{strategy: {num_labels: {"mean", "ci95", "values", "seeds"}}} over the seeds."""
  values: dict[str, dict[int, list[tuple[int, float]]]] = collections.defaultdict(
      lambda: collections.defaultdict(list))
  for row in rows:
    values[row["strategy"]][row["num_labels"]].append((row["seed"], row[metric]))
  return {strategy: {labels: {"mean": float(np.mean([v for _, v in seeded])),
                              "ci95": confidence_interval([v for _, v in seeded]),
                              "values": [v for _, v in sorted(seeded)],
                              "seeds": [s for s, _ in sorted(seeded)]}
                     for labels, seeded in sorted(by_labels.items())}
          for strategy, by_labels in sorted(values.items())}


def plot(rows: Sequence[dict], path: str | os.PathLike, *,
         full_data_accuracy: float | None = None) -> None:
  """Test accuracy vs number of labels, one line per strategy, the CI band shaded."""
  fig = Figure(figsize=(8, 5.5), dpi=100, layout="constrained")
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  for strategy, points in summarise(rows).items():
    labels = np.array(list(points))
    mean = np.array([p["mean"] for p in points.values()])
    ci = np.nan_to_num(np.array([p["ci95"] for p in points.values()]))
    seeds = max(len(p["values"]) for p in points.values())
    style = "--" if strategy.endswith("-warm") else "-"
    line, = ax.plot(labels, mean, style, marker="o", markersize=3,
                    label=f"{strategy} ({seeds} seed{'s' * (seeds > 1)})")
    ax.fill_between(labels, mean - ci, mean + ci, color=line.get_color(), alpha=0.15)
  if full_data_accuracy is not None:
    ax.axhline(full_data_accuracy, color="black", linestyle=":", linewidth=1,
               label=f"all labels ({full_data_accuracy:.4f})")
  ax.set_xlabel("labelled images")
  ax.set_ylabel("test accuracy")
  ax.set_title("Active learning: mean ± 95% CI over seeds")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, loc="lower right")
  write_atomically(path, lambda tmp: fig.savefig(os.fspath(tmp), format="png"))


def table(rows: Sequence[dict], *, full_data_accuracy: float | None = None) -> str:
  """Markdown: accuracy (mean ± CI) per strategy at each label count, gap to random and to all labels."""
  accuracy, f1 = summarise(rows), summarise(rows, "macro_f1")
  counts = sorted({labels for points in accuracy.values() for labels in points})
  last = counts[-1]
  random_last = accuracy.get("random", {}).get(last)
  header = ["strategy", "seeds"] + [f"{n}" for n in counts] + [f"macro F1 @{last}",
                                                              f"vs random @{last}"]
  if full_data_accuracy is not None:
    header.append(f"vs all labels ({full_data_accuracy:.4f})")
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

  def cell(point: dict | None, digits: int = 4) -> str:
    if point is None:
      return ""
    ci = point["ci95"]
    return f"{point['mean']:.{digits}f}" + ("" if np.isnan(ci) else f" ± {ci:.{digits}f}")

  for strategy, points in accuracy.items():
    final = points.get(last)
    seeds = max(len(p["values"]) for p in points.values())
    cells = [strategy, str(seeds)] + [cell(points.get(n)) for n in counts]
    cells.append(cell(f[strategy].get(last)) if (f := f1) else "")
    if final is not None and random_last is not None:
      cells.append(f"{100 * (final['mean'] - random_last['mean']):+.2f} pt")
    else:
      cells.append("")
    if full_data_accuracy is not None:
      cells.append("" if final is None else f"{100 * (final['mean'] - full_data_accuracy):+.2f} pt")
    lines.append("| " + " | ".join(cells) + " |")
  lines.append("")
  lines.append("Test accuracy, mean ± 95% CI (Student t) over seeds, by number of labelled "
               "images; 'vs' columns are differences of means in percentage points.")
  return "\n".join(lines)
