"""TFLite → ONNX with tf2onnx, corrected where tf2onnx 1.17 produces graphs that fail at run time.

    model = tflite_to_onnx("model.tflite", opset=17)     # an onnx.ModelProto

It is `tf2onnx.convert.from_tflite` (the same graph conversion and optimizer
passes) with three corrections, found on ConvNeXt and ViT at 32 px:

  * Unsorted segment reductions with negative segment ids. TensorFlow (and so
    TFLite) drops the elements whose segment id is negative; tf2onnx scatters
    them into a grid with the id as an index, where -1 means the *last*
    segment. The TFLite converter emits exactly this for every `dot_general`
    whose operand has a dynamic batch and more than two dimensions (a `Linear`
    on [B, H, W, C]: ConvNeXt's MLP): the 2-D shape [B·H·W, C] of a RESHAPE is
    `UNSORTED_SEGMENT_PROD` over the input's shape with ids [0, 0, 0, -1] and
    [-1, -1, -1, 0]. `HANDLERS` sends negative constant ids to one extra
    segment, slices it off and then uses tf2onnx's own segment conversion.
  * tf2onnx's transpose optimizer ends by rewriting each transpose that only
    moves size-1 axes as a reshape, from the shapes it recorded. After pushing
    a transpose through an op whose two inputs are the same transposed tensor
    (`x * x` in LayerNorm's variance) the recorded shape is the pre-transpose
    one, so on a 1×1 feature map it reshapes [B, C, 1, 1] as if it were
    [B, 1, 1, C]. `_optimizers()` is tf2onnx's optimizer list with that last
    rewrite left out; ONNX Runtime's own graph optimizer makes it from the
    real shapes at load time.
  * Select. For speed, tf2onnx writes a float `select(c, a, b)` as
    `c·a + (1 − c)·b`, which is NaN wherever the branch not taken is inf
    (0·inf). XLA's exact erf (GELU, `approximate=False`) selects between two
    polynomials, one of which overflows for large inputs, so ViT's ONNX
    logits were NaN. `HANDLERS` writes every select as ONNX `Where`.

The first two made ONNX Runtime fail in a `Reshape` at run time (ConvNeXt).

Ids computed at run time keep tf2onnx's segment behaviour; everything else is
tf2onnx's.
"""

from __future__ import annotations

import collections
import logging
import os
import warnings

import numpy as np

_SEGMENT_OPS = ("UnsortedSegmentSum", "UnsortedSegmentProd", "UnsortedSegmentMax",
                "UnsortedSegmentMin")
# What tf2onnx logs (at ERROR) when it cannot map a node; the conversion itself continues.
_FAILURE_MESSAGES = ("Failed to convert node", "Unsupported ops")


def _unsorted_segment(ctx, node, name, args) -> None:
  """tf2onnx's (old-style) custom handler signature: (graph, node, node name, extra args)."""
  del name, args
  # pylint: disable=import-outside-toplevel  # tf2onnx is heavy and only needed when converting
  from tf2onnx import utils
  from tf2onnx.onnx_opset.reduction import SegmentSum

  ids_node, count_node = node.inputs[1], node.inputs[2]
  if ids_node.is_const() and count_node.is_const():
    ids = np.asarray(ids_node.get_tensor_value(as_list=False))
    count = np.asarray(count_node.get_tensor_value(as_list=False))
    if (ids < 0).any():
      spare = int(count)
      new_ids = ctx.make_const(utils.make_name(f"{node.name}_ids"),
                               np.where(ids < 0, spare, ids).astype(ids.dtype))
      new_count = ctx.make_const(utils.make_name(f"{node.name}_count"),
                                 np.asarray(spare + 1, count.dtype))
      ctx.replace_input(node, node.input[1], new_ids.output[0], 1)
      ctx.replace_input(node, node.input[2], new_count.output[0], 2)
      starts, ends, axes = (ctx.make_const(utils.make_name(f"{node.name}_{part}"),
                                           np.asarray([value], np.int64)).output[0]
                            for part, value in (("start", 0), ("end", spare), ("axis", 0)))
      # Every consumer now reads the first `spare` segments; SegmentSum rewires this slice's
      # input to its own result when it replaces the node.
      ctx.insert_new_node_on_output("Slice", node.output[0],
                                    inputs=[node.output[0], starts, ends, axes])
  SegmentSum.any_version(ctx.opset, ctx, node)


def _select_as_where(ctx, node, name, args) -> None:
  """Select as ONNX `Where`, never as tf2onnx's `cond·a + (1 − cond)·b` (see the docstring)."""
  del name, args
  from tf2onnx.onnx_opset.controlflow import Select  # pylint: disable=import-outside-toplevel

  node.set_attr("handles_nan", True)  # tf2onnx's own switch for this choice
  Select.version_9(ctx, node)


HANDLERS = {**{op: (_unsorted_segment, []) for op in _SEGMENT_OPS},
            "Select": (_select_as_where, []), "SelectV2": (_select_as_where, [])}


def _optimizers() -> collections.OrderedDict:
  """tf2onnx's optimizer passes, its transpose optimizer without the final reshape rewrite."""
  # pylint: disable=import-outside-toplevel
  from tf2onnx import optimizer
  from tf2onnx.optimizer.transpose_optimizer import TransposeOptimizer

  class TransposeOptimizerKeepingTransposes(TransposeOptimizer):
    """See the module docstring: the size-1 reshape rewrite trusts stale shapes."""

    def post_optimize_action(self):
      pass

  passes = collections.OrderedDict(optimizer._get_optimizers())  # pylint: disable=protected-access
  if passes.get("optimize_transpose") is not TransposeOptimizer:
    raise RuntimeError("tf2onnx's optimizer list changed; revisit vision/export/tf2onnx_fixes.py")
  passes["optimize_transpose"] = TransposeOptimizerKeepingTransposes
  return passes


class _Records(logging.Handler):
  """Keeps tf2onnx's ERROR records: the nodes it could not convert."""

  def __init__(self):
    super().__init__(logging.ERROR)
    self.messages: list[str] = []

  def emit(self, record: logging.LogRecord) -> None:
    self.messages.append(record.getMessage())


class UnconvertedOps(RuntimeError):
  """tf2onnx left nodes it could not convert; `messages` holds what it logged."""

  def __init__(self, messages: list[str]):
    super().__init__("; ".join(m.splitlines()[0] for m in messages))
    self.messages = messages


def tflite_to_onnx(tflite_path: str | os.PathLike, *, opset: int):
  """An `onnx.ModelProto` of the TFLite file (tf2onnx plus the corrections above).

  Raises `UnconvertedOps` when tf2onnx could not convert some node (it logs
  them and carries on, which would leave a graph no runtime can load).
  """
  # pylint: disable=import-outside-toplevel
  from tf2onnx import optimizer, tfonnx

  records = _Records()
  tf2onnx_log = logging.getLogger("tf2onnx")
  tf2onnx_log.addHandler(records)
  try:
    with warnings.catch_warnings():
      # tf2onnx reads the file with tf.lite.Interpreter, which warns that LiteRT replaces it.
      warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
      graph = tfonnx.process_tf_graph(None, continue_on_error=True, opset=opset,
                                      custom_op_handlers=dict(HANDLERS),
                                      tflite_path=str(tflite_path))
    graph = optimizer.optimize_graph(graph, catch_errors=True, optimizers=_optimizers())
  finally:
    tf2onnx_log.removeHandler(records)
  failures = [m for m in records.messages if m.startswith(_FAILURE_MESSAGES)]
  if failures:
    raise UnconvertedOps(failures)
  return graph.make_model(f"converted from {os.path.basename(tflite_path)}")
