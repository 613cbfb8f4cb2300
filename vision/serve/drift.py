"""Drift: do the served images still look like the reference data, to the model?

    reference = reference_outputs(model, "idx:/usr/share/datasets/fashion-mnist", "test")
    live = read_predictions("serving.db", version=model.spec.version)
    report = compare(reference, Outputs(live.confidence, live.embedding, live.top1))
    report["drift"], report["tests"]["confidence"]["p_value"]

Three two-sample tests between the reference split (run through the same exported
model) and the logged traffic:
  * confidence: Kolmogorov-Smirnov on the top-1 probability;
  * embedding: KS per stored embedding dimension, Bonferroni-corrected (p x dims);
  * predicted class: chi-squared on the 2 x classes table of top-1 counts.
A test flags drift when its (corrected) p-value is below `alpha` divided by the
number of tests (Bonferroni over the three) and its effect is at least
`threshold` (KS statistic, or Cramér's V for the class test): with thousands of
requests, tiny harmless shifts are significant, so both must hold.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
from scipy import stats

from vision.data.sources import SplitOptions, open_dataset, vectorised_reader
from vision.files import write_atomically
from vision.serve.images import to_model_input
from vision.serve.runtime import ServedModel, compact_embedding

_BATCH = 256


@dataclasses.dataclass(frozen=True)
class Outputs:
  """Per-image model outputs, as logged: confidence [N], compact embedding [N, D], top-1 [N]."""
  confidence: np.ndarray
  embedding: np.ndarray
  top1: np.ndarray


def model_outputs(model: ServedModel, images: np.ndarray) -> Outputs:
  """Runs uint8 model-ready images through `model` as the server does."""
  confidences, embeddings, top1 = [], [], []
  for start in range(0, len(images), _BATCH):
    logits, embedding = model.predict(images[start:start + _BATCH])
    probs = model.primary_probabilities(logits)
    confidences.append(probs.max(-1))
    top1.append(probs.argmax(-1))
    embeddings.append(compact_embedding(embedding).astype(np.float32))
  return Outputs(np.concatenate(confidences).astype(np.float64), np.concatenate(embeddings),
                 np.concatenate(top1))


def reference_images(model: ServedModel, source: str, split: str, *, limit: int | None,
                     seed: int = 0) -> np.ndarray:
  """Up to `limit` images of `source`'s `split` (seeded sample), at the model's input size."""
  records = open_dataset(source, SplitOptions()).split(split)
  indices = np.arange(len(records))
  if limit and limit < len(indices):
    indices = np.sort(np.random.default_rng(seed).choice(indices, limit, replace=False))
  read = vectorised_reader(records)
  raw = read(indices)[0] if read else [records[int(i)]["image"] for i in indices]
  spec = model.spec
  return np.stack([to_model_input(_rgb(image), height=spec.height, width=spec.width,
                                  channels=spec.channels, resize_size=spec.resize_size,
                                  interpolation=spec.interpolation) for image in raw])


def _rgb(image: np.ndarray) -> np.ndarray:
  image = np.asarray(image, np.uint8)
  if image.ndim == 2:
    image = image[..., None]
  return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image[..., :3]


def reference_outputs(model: ServedModel, source: str, split: str = "test", *,
                      limit: int | None = 2000, seed: int = 0) -> Outputs:
  return model_outputs(model, reference_images(model, source, split, limit=limit, seed=seed))


def compare(reference: Outputs, live: Outputs, *, num_classes: int, alpha: float = 0.01,
            threshold: float = 0.1) -> dict:
  """The drift report: each test's statistic and p-value, and the verdict."""
  if len(live.confidence) < 2 or len(reference.confidence) < 2:
    raise ValueError(f"need at least 2 logged and 2 reference predictions, got "
                     f"{len(live.confidence)} and {len(reference.confidence)}")
  if live.embedding.shape[1] != reference.embedding.shape[1]:
    raise ValueError(f"logged embeddings have {live.embedding.shape[1]} values, the model's "
                     f"{reference.embedding.shape[1]}: the log is from another model")
  confidence = stats.ks_2samp(reference.confidence, live.confidence)
  per_dim = [stats.ks_2samp(reference.embedding[:, d], live.embedding[:, d])
             for d in range(reference.embedding.shape[1])]
  dims = len(per_dim)
  worst = int(np.argmin([r.pvalue for r in per_dim]))
  classes = _class_test(reference.top1, live.top1, num_classes)
  tests = {
      "confidence": {"test": "ks_2samp", "statistic": float(confidence.statistic),
                     "p_value": float(confidence.pvalue),
                     "reference_mean": float(reference.confidence.mean()),
                     "live_mean": float(live.confidence.mean())},
      "embedding": {"test": "ks_2samp per dimension, Bonferroni", "dims": dims,
                    "statistic": float(per_dim[worst].statistic),
                    "p_value": float(min(1.0, per_dim[worst].pvalue * dims)),
                    "worst_dim": worst,
                    "per_dim_statistic": [float(r.statistic) for r in per_dim],
                    "per_dim_p_value": [float(r.pvalue) for r in per_dim]},
      "predicted_class": classes,
  }
  level = alpha / len(tests)
  for test in tests.values():
    test["drift"] = bool(test["p_value"] < level and test["statistic"] >= threshold)
  return {"drift": any(t["drift"] for t in tests.values()),
          "drifted": [name for name, t in tests.items() if t["drift"]],
          "alpha": alpha, "alpha_per_test": level, "threshold": threshold,
          "n_reference": int(len(reference.confidence)), "n_live": int(len(live.confidence)),
          "tests": tests}


def _class_test(reference: np.ndarray, live: np.ndarray, num_classes: int) -> dict:
  table = np.stack([np.bincount(reference, minlength=num_classes),
                    np.bincount(live, minlength=num_classes)])
  table = table[:, table.sum(0) > 0]
  if table.shape[1] < 2:  # one class only, in both: nothing to compare
    return {"test": "chi2_contingency", "statistic": 0.0, "p_value": 1.0, "chi2": 0.0}
  result = stats.chi2_contingency(table)
  cramers_v = float(np.sqrt(result.statistic / (table.sum() * (min(table.shape) - 1))))
  return {"test": "chi2_contingency", "statistic": cramers_v, "chi2": float(result.statistic),
          "p_value": float(result.pvalue),
          "reference_counts": table[0].tolist(), "live_counts": table[1].tolist()}


def plot(reference: Outputs, live: Outputs, report: dict, path: str | pathlib.Path) -> None:
  """confidence histograms, per-dimension KS statistics and class frequencies, in one PNG."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel

  figure, axes = plt.subplots(1, 3, figsize=(15, 4))
  bins = np.linspace(0, 1, 21)
  axes[0].hist(reference.confidence, bins, alpha=0.6, density=True, label="reference")
  axes[0].hist(live.confidence, bins, alpha=0.6, density=True, label="served")
  test = report["tests"]["confidence"]
  axes[0].set(title=f"top-1 confidence (KS {test['statistic']:.2f}, p={test['p_value']:.2g})",
              xlabel="confidence")
  axes[0].legend()
  test = report["tests"]["embedding"]
  axes[1].bar(range(test["dims"]), test["per_dim_statistic"])
  axes[1].axhline(report["threshold"], color="red", linestyle="--", label="threshold")
  axes[1].set(title=f"embedding KS per dimension (corrected p={test['p_value']:.2g})",
              xlabel="dimension", ylabel="KS statistic")
  axes[1].legend()
  num_classes = max(int(reference.top1.max(initial=0)), int(live.top1.max(initial=0))) + 1
  x = np.arange(num_classes)
  for offset, (name, top1) in zip((-0.2, 0.2), (("reference", reference.top1),
                                                 ("served", live.top1))):
    axes[2].bar(x + offset, np.bincount(top1, minlength=num_classes) / len(top1), 0.4, label=name)
  test = report["tests"]["predicted_class"]
  axes[2].set(title=f"predicted class (p={test['p_value']:.2g})", xlabel="class",
              ylabel="fraction")
  axes[2].legend()
  figure.suptitle("DRIFT" if report["drift"] else "no drift")
  figure.tight_layout()
  write_atomically(path, lambda tmp: figure.savefig(tmp, format="png", dpi=80))
  plt.close(figure)
