"""A converter's failure as one line: the format, the op (or reason), and what to do.

    with converter_step("tflite"):               # any converter exception → ExportError
      converters.write_tflite(saved_model, path)
    # ExportError: "tflite: op 'vhlo.dynamic_gather_v1' (vision/models/vit.py:78) has no TFLite
    #               conversion; write it with lax ops TFLite has (...), or export
    #               --format=stablehlo or --format=saved_model, which take every op"

The converters (the TFLite converter's MLIR passes, tf2onnx, ONNX Runtime)
print pages of diagnostics on the process's stderr, from C++ as well as
Python, and raise exceptions whose first line rarely names the problem.
`converter_step` keeps that output away from the terminal (our own log lines
still show), and turns whatever the step raises into an `ExportError` whose
message `experiments.export` prints as `error: <format>: <op or reason>; <what
to do>` (exit status 2).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import re
import sys
import tempfile
from typing import Iterator

from vision.config import ConfigError

# Where the model code is blamed: "path/to/file.py:78:14: error: ..." in MLIR diagnostics.
_LOCATION = re.compile(r"([^\s\"'()]+\.py):(\d+):\d+: error")
_TFLITE_OP = (
    re.compile(r"'([\w.]+)' op is not part of the vhlo support yet"),
    re.compile(r"'([\w.]+)' op is neither a custom op nor a flex op"),
    re.compile(r"failed to legalize operation '([\w.]+)'"),
    re.compile(r"'([\w.]+)' op .*?(?:not supported|unsupported)"),
)
_TF2ONNX_OP = (
    re.compile(r"Unsupported ops: Counter\(\{'([\w.]+)'"),
    re.compile(r"Failed to convert node '?([^'\s]+)'? \(fct=.*?\)"),
)
_ORT_NODE = re.compile(r"running (\w+) node\. Name:'([^']*)'")
_ORT_STATUS = re.compile(r"\[ONNXRuntimeError\] : \d+ : (\w+) : (.*)")
_OTHER_FORMATS = {
    "tflite": "--format=stablehlo or --format=saved_model, which take every op",
    "onnx": "--format=tflite (the ONNX file is converted from it) or --format=saved_model",
    "saved_model": "--format=stablehlo",
    "stablehlo": "--format=saved_model",
}


class ExportError(RuntimeError):
  """A converter or exported runtime failed; `str()` is `<format>: <what failed>; <what to do>`."""

  def __init__(self, fmt: str, reason: str, advice: str):
    super().__init__(f"{fmt}: {reason}; {advice}")
    self.format, self.reason, self.advice = fmt, reason, advice


def _first_line(text: str, limit: int = 200) -> str:
  line = next((l.strip() for l in text.splitlines() if l.strip()), "")
  return line if len(line) <= limit else line[:limit - 1] + "…"


def _source_file(token: str) -> pathlib.Path:
  """The file a diagnostics token names; converters glue text to it ("FlatBuffer./src/x.py")."""
  candidates = [token] + [token[i:] for i, char in enumerate(token) if char == "/" and i]
  return next((pathlib.Path(c) for c in candidates if pathlib.Path(c).is_file()),
              pathlib.Path(token))


def _blamed_location(text: str) -> str | None:
  """The first model-code location the diagnostics blame, relative to the working directory."""
  for match in _LOCATION.finditer(text):
    path = _source_file(match.group(1))
    if "site-packages" in path.parts or "dist-packages" in path.parts:
      continue
    try:
      path = path.resolve().relative_to(pathlib.Path.cwd().resolve())
    except ValueError:
      pass
    return f"{path}:{match.group(2)}"
  return None


def explain(fmt: str, stage: str, error: BaseException, diagnostics: str = "") -> ExportError:
  """The one-line `ExportError` for `error`, raised while converting (`stage="convert"`) or
  while running the exported model (`stage="run"`); `diagnostics` is what it printed."""
  text = f"{error}\n{diagnostics}"
  other = _OTHER_FORMATS.get(fmt, "another --format")
  if stage == "convert":
    for pattern in _TFLITE_OP:
      if match := pattern.search(text):
        where = _blamed_location(text)
        return ExportError(
            fmt, f"op '{match.group(1)}'{f' ({where})' if where else ''} has no TFLite conversion",
            "write that line with ops TFLite converts under a free batch dimension (lax.slice or "
            f"lax.index_in_dim instead of NumPy indexing, for instance), or export {other}")
    for pattern in _TF2ONNX_OP:
      if match := pattern.search(text):
        return ExportError(fmt, f"tf2onnx cannot convert op '{match.group(1)}' from the TFLite "
                           "model", f"export {other}")
    return ExportError(fmt, f"conversion failed: {type(error).__name__}: {_first_line(str(error))}",
                       f"export {other}, and report this with the model's arch")
  if match := _ORT_NODE.search(text):
    status = _ORT_STATUS.search(text)
    return ExportError(
        fmt, f"ONNX Runtime fails at run time in {match.group(1)} node '{match.group(2)}'"
        f"{f' ({status.group(1)})' if status else ''}",
        f"the converted graph is wrong for this model; export {other}, and report this with "
        "the model's arch")
  return ExportError(fmt, f"the exported model does not run: {type(error).__name__}: "
                     f"{_first_line(str(error))}", f"export {other}, and report this with the "
                     "model's arch")


@contextlib.contextmanager
def _stderr_to(file) -> Iterator[None]:
  """Points file descriptor 2 at `file`; our logging handlers keep writing to the terminal."""
  sys.stderr.flush()
  saved = os.dup(2)
  terminal = os.fdopen(os.dup(saved), "w", buffering=1)
  handlers = [h for h in logging.getLogger().handlers + logging.getLogger("vision").handlers
              if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
              and h.stream in (sys.stderr, sys.__stderr__)]
  previous = [h.setStream(terminal) for h in handlers]
  os.dup2(file.fileno(), 2)
  try:
    yield
  finally:
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)
    for handler, stream in zip(handlers, previous):
      handler.setStream(stream)
    terminal.close()


@contextlib.contextmanager
def converter_step(fmt: str, stage: str = "convert",
                   keep: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
  """Runs a conversion (`stage="convert"`) or the exported model (`"run"`) quietly; its
  failures become ExportError.

  Our own errors pass through unchanged: `ConfigError` (a user mistake found
  on the way), `ExportError`, and the exception types in `keep`.
  """
  with tempfile.TemporaryFile("w+") as captured:
    try:
      with _stderr_to(captured):
        yield
    except (ConfigError, ExportError, *keep):
      raise
    except Exception as error:  # pylint: disable=broad-except  # every converter raises its own
      captured.seek(0)
      raise explain(fmt, stage, error, captured.read()) from error
