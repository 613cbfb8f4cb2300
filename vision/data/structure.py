"""A dataset's class structure, checked before anything trains on it.

    warnings = check_classes("folder:data", ("defect",), {"train": np.array([20])})
    # SourceError: found 1 class ('defect'); a classifier needs at least 2

`open_dataset` (every source) and `experiments.prepare` call it with the
number of examples per class in each split. Errors (`SourceError`, exit 2 in
the entry points) are structures training cannot use: fewer than two classes,
a class seen in val/test but never in train (also when carving val/test took a
class's last training examples), and a class with no examples at all where the
classes come from the data itself (an empty class folder, a label whose every
file was unreadable). Warnings, returned as one-line strings for the caller to
log, are structures that train soundly but report less: a class the source's
own val/test split lacks, and a declared class (IDX/TFDS, `data.class_names`)
without examples.
"""

from __future__ import annotations

from typing import Collection, Mapping, Sequence

import numpy as np

from vision.data.errors import SourceError


def check_classes(source: str, class_names: Sequence[str], counts: Mapping[str, np.ndarray], *,
                  train_split: str = "train", native_splits: Collection[str] = (),
                  discovered: bool = False) -> list[str]:
  """Raises SourceError for an unusable class structure; returns warnings.

  `counts[split][c]`: examples of class c in `split`. `native_splits`: the
  splits the source itself holds (the others were carved from train).
  `discovered`: the class list comes from the data (folders, labels), so a class
  without training examples is a mistake, not a choice.
  """
  if len(class_names) < 2:
    found = (f"1 class ({class_names[0]!r})" if class_names else "no classes")
    # The whole line is the message: the user knows which source they gave.
    raise SourceError(f"found {found}; a classifier needs at least 2")
  train = np.asarray(counts[train_split])
  problems, warnings = [], []
  for split, split_counts in counts.items():
    if split == train_split:
      continue
    unseen = [class_names[c] for c, n in enumerate(split_counts) if n and not train[c]]
    if unseen and split not in native_splits:
      problems.append(
          f"carving {split} from train left {_names(unseen)} without training examples: lower "
          "data.val_fraction / data.test_fraction or add images")
    elif unseen:
      problems.append(
          f"{_names(unseen)} {_has(unseen)} examples in {split} but none in {train_split}, so "
          f"the model could never predict {_it(unseen)}: add training images or remove "
          f"{_it(unseen)} from {split}")
  seen = np.sum([np.asarray(c) for c in counts.values()], axis=0)
  empty = [name for name, n in zip(class_names, seen) if not n]
  if empty:
    message = (f"{_names(empty)} {_has(empty)} no examples; the model can never learn to "
               f"predict {_it(empty)}")
    if discovered:
      problems.append(f"{message}: add images or remove the class")
    else:
      warnings.append(f"{source}: {message}")
  for split in native_splits:
    if split == train_split or split not in counts:
      continue
    missing = [name for c, name in enumerate(class_names) if train[c] and not counts[split][c]]
    if missing:  # training is sound; that split's report will just lack them
      warnings.append(f"{source}: {_names(missing)} {_has(missing)} training examples but none "
                      f"in the source's own {split} split, whose report will leave "
                      f"{_it(missing)} out")
  if problems:
    more = f" ({len(problems) - 1} more problem(s) after this one)" if len(problems) > 1 else ""
    raise SourceError(f"{source}: {problems[0]}{more}")
  return warnings


def _has(names: Sequence[str]) -> str:
  return "has" if len(names) == 1 else "have"


def _it(names: Sequence[str]) -> str:
  return "it" if len(names) == 1 else "them"


def _names(names: Sequence[str], limit: int = 5) -> str:
  shown = ", ".join(repr(n) for n in names[:limit])
  more = f" and {len(names) - limit} more" if len(names) > limit else ""
  return f"class{'es' if len(names) > 1 else ''} {shown}{more}"

