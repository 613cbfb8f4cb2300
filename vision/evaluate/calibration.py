"""Calibration: expected calibration error, reliability bins and temperature scaling.

    ece = expected_calibration_error(labels, probs)          # 15 equal-width bins, top-1
    bins = reliability_bins(labels, probs)                   # what the diagram draws
    temperature = fit_temperature(val_logits, val_labels)    # Guo et al. 2017
    calibrated = softmax(test_logits / temperature)
    plot_reliability({"raw": bins, "calibrated": bins_t}, "reliability.png")

Expected calibration error (Naeini et al. 2015, as Guo et al. 2017 use it):
the top-1 confidences are put in `NUM_BINS` = 15 equal-width bins of (0, 1]
(bin m holds confidences in ((m-1)/15, m/15]), and

    ECE = sum_m |B_m| / n · |accuracy(B_m) - confidence(B_m)|,

where accuracy is the fraction of the bin's top-1 predictions that are right
and confidence their mean top-1 probability. The same binning is netcal's
`netcal.metrics.ECE(bins=15)`; tests/test_calibration.py checks that both give
the same number and that both match a case computed by hand. netcal is not
imported here: it imports PyTorch (several seconds per evaluation) and brings
torch, pyro and gpytorch into the base install for a twenty-line sum.

Temperature scaling (Guo et al. 2017, "On calibration of modern neural
networks"): one scalar T > 0 divides the logits, `softmax(z / T)`, fitted by
minimising the negative log-likelihood on the validation split. It leaves the
predicted class (and so accuracy) unchanged. T > 1 softens over-confident
predictions, T < 1 sharpens under-confident ones (label smoothing, which the
quickstart uses, tends to give T < 1).
"""

from __future__ import annotations

import os
from typing import Mapping

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy import optimize, special

NUM_BINS = 15
RELIABILITY_FILENAME = "reliability.png"
BINNING = "15 equal-width bins of the top-1 confidence over (0, 1]"
# Temperatures searched (log-uniformly); beyond these a model is broken, not miscalibrated.
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.02, 50.0


def _top1(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(top-1 confidence [N] float64, top-1 correct [N] bool)."""
  probs = np.asarray(probs, np.float64)
  predicted = probs.argmax(axis=1)
  return probs.max(axis=1), predicted == np.asarray(labels)


def _bin_index(confidence: np.ndarray, num_bins: int) -> np.ndarray:
  """Bin m (0-based) holds confidences in (m/M, (m+1)/M]; 0 itself goes to the first bin."""
  return np.clip(np.ceil(confidence * num_bins).astype(np.int64) - 1, 0, num_bins - 1)


def reliability_bins(labels: np.ndarray, probs: np.ndarray, num_bins: int = NUM_BINS) -> dict:
  """Per bin: count, mean top-1 confidence and accuracy (None for an empty bin).

  Args:
    labels: int [N] true classes. probs: float [N, C] class probabilities.
  Returns:
    {"edges": [M + 1 floats], "count": [M ints], "confidence": [M], "accuracy": [M]}.
  """
  confidence, correct = _top1(labels, probs)
  index = _bin_index(confidence, num_bins)
  count = np.bincount(index, minlength=num_bins)
  safe = np.maximum(count, 1)
  mean_confidence = np.bincount(index, confidence, minlength=num_bins) / safe
  accuracy = np.bincount(index, correct.astype(np.float64), minlength=num_bins) / safe
  return {"edges": np.linspace(0.0, 1.0, num_bins + 1).round(6).tolist(),
          "count": count.tolist(),
          "confidence": [float(c) if n else None for c, n in zip(mean_confidence, count)],
          "accuracy": [float(a) if n else None for a, n in zip(accuracy, count)]}


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray,
                               num_bins: int = NUM_BINS) -> float:
  """ECE over `num_bins` equal-width bins of the top-1 confidence (see the module docstring)."""
  bins = reliability_bins(labels, probs, num_bins)
  total = sum(bins["count"])
  return float(sum(n / total * abs(a - c) for n, a, c in
                   zip(bins["count"], bins["accuracy"], bins["confidence"]) if n))


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
  """Mean cross-entropy of softmax(logits / temperature) against `labels` (float64)."""
  scaled = np.asarray(logits, np.float64) / temperature
  log_probs = scaled - special.logsumexp(scaled, axis=1, keepdims=True)
  return float(-log_probs[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
  """The temperature T minimising the NLL of softmax(logits / T) (Guo et al. 2017).

  The NLL is convex in 1/T, so a bounded scalar search over log T finds the
  optimum; T lies in [MIN_TEMPERATURE, MAX_TEMPERATURE].

  Args:
    logits: float [N, C] raw (uncalibrated) logits of the validation split.
    labels: int [N] true classes.
  Raises:
    ValueError: without examples, or with labels outside [0, C).
  """
  logits, labels = np.asarray(logits, np.float64), np.asarray(labels, np.int64)
  if logits.ndim != 2 or len(logits) == 0 or len(labels) != len(logits):
    raise ValueError(f"need logits [N, C] and labels [N] with N > 0, got {logits.shape} and "
                     f"{labels.shape}")
  if labels.min() < 0 or labels.max() >= logits.shape[1]:
    raise ValueError(f"labels must be in [0, {logits.shape[1]})")
  result = optimize.minimize_scalar(
      lambda log_t: negative_log_likelihood(logits, labels, float(np.exp(log_t))),
      bounds=(np.log(MIN_TEMPERATURE), np.log(MAX_TEMPERATURE)), method="bounded",
      options={"xatol": 1e-5})
  return float(np.exp(result.x))


def calibration_summary(labels: np.ndarray, raw_probs: np.ndarray, probs: np.ndarray,
                        temperature: float) -> dict:
  """report.json's `calibration`: ECE of the raw and of the temperature-scaled probabilities.

  `bins` holds the reliability bins of both ({"raw": ..., "calibrated": ...}).
  """
  raw_bins, calibrated_bins = reliability_bins(labels, raw_probs), reliability_bins(labels, probs)
  return {"ece": expected_calibration_error(labels, raw_probs),
          "temperature": float(temperature),
          "ece_calibrated": expected_calibration_error(labels, probs),
          "binning": BINNING,
          "bins": {"raw": raw_bins, "calibrated": calibrated_bins}}


def plot_reliability(calibration: Mapping, path: str | os.PathLike, title: str = "") -> None:
  """A reliability diagram (accuracy against confidence per bin, raw and calibrated) as PNG.

  `calibration` is report.json's `calibration` (see `calibration_summary`).
  """
  fig = Figure(figsize=(5.2, 5.2), dpi=100, layout="constrained")
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="perfectly calibrated")
  styles = {"raw": ("tab:red", f"raw (ECE {calibration['ece']:.2%})"),
            "calibrated": ("tab:blue", f"T = {calibration['temperature']:.3g} "
                                       f"(ECE {calibration['ece_calibrated']:.2%})")}
  width = None
  for key, (color, label) in styles.items():
    bins = calibration["bins"][key]
    width = np.diff(np.asarray(bins["edges"]))
    shown = [i for i, a in enumerate(bins["accuracy"]) if a is not None]
    # Each bin at its mean confidence: on the diagonal when it is calibrated.
    ax.plot([bins["confidence"][i] for i in shown], [bins["accuracy"][i] for i in shown],
            marker="o", color=color, label=label)
  raw = calibration["bins"]["raw"]
  counts = np.asarray(raw["count"], np.float64)
  edges = np.asarray(raw["edges"])
  ax.bar(edges[:-1], counts / max(counts.sum(), 1), width=width, align="edge", color="0.85",
         edgecolor="0.7", label="share of examples (raw)", zorder=0)
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1)
  ax.set_xlabel("top-1 confidence")
  ax.set_ylabel("accuracy")
  ax.set_title(title or "reliability diagram (15 bins)")
  ax.legend(loc="upper left", fontsize=8)
  fig.savefig(os.fspath(path), format="png")
