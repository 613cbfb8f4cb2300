"""What every entry point shares: flag parsing, logging set-up, one-line errors.

    if __name__ == "__main__":
      common.run(main)

A user mistake (a bad flag, config file, config key or data path) ends the
command with one line on stderr, `error: ...`, and exit status 2.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Callable, Iterable, NoReturn

from absl import app
from absl import flags
from absl import logging as absl_logging

from vision.config import ConfigError, check_override_keys
from vision.data.sources import SourceError
from vision.export.errors import ExportError
from vision.train.loop import TrainingDiverged

# Mistakes a user can fix, and failures they can route around (a converter's: ExportError says
# which format, op and what to do); each is reported as one line, without a traceback.
USER_ERRORS = (ConfigError, SourceError, FileNotFoundError, TrainingDiverged, ExportError)


def fail(message: str) -> NoReturn:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def image_paths(argv: list[str]) -> list[str]:
  """The image files after the flags; a usage error without any."""
  if len(argv) < 2:
    raise app.UsageError("give one or more image files after the flags")
  return argv[1:]


def print_results(results: Iterable[dict], count: int) -> None:
  """One JSON line per image's result; exit status 1 after them all when some had an "error"."""
  failed = 0
  for result in results:
    failed += "error" in result
    print(json.dumps(result), flush=True)
  if failed:
    print(f"error: {failed} of {count} images could not be read", file=sys.stderr)
    sys.exit(1)


def reject_extra_arguments(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")


def _config_file(argv: list[str]) -> str | None:
  for arg in argv:
    if arg.startswith("--config="):
      return arg.split("=", 1)[1].split(":", 1)[0]
  return None


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with config mistakes turned into one line each."""
  try:
    check_override_keys(arg.split("=", 1)[0][len("--config."):]
                        for arg in argv if arg.startswith("--config."))
    config_file = _config_file(argv)
    if config_file is not None and not os.path.isfile(config_file):
      raise ConfigError(f"config file {config_file} does not exist")
    return flags.FLAGS(argv)
  except ConfigError as error:
    fail(str(error))
  except flags.Error as error:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if len(lines) == 1:
      fail(f"{lines[0]} (see --helpshort)")
    # An exception inside the config file, which config_flags wraps with its traceback.
    kind, _, message = lines[-1].partition(": ")
    if kind.endswith("ConfigError"):
      fail(message)
    fail(f"config file {_config_file(argv)}: {message or kind}")


def _guarded(main: Callable[[list[str]], None]) -> Callable[[list[str]], None]:
  def wrapped(argv: list[str]) -> None:
    # Our own progress lines only; libraries speak up at WARNING and above.
    logging.basicConfig(level=logging.WARNING, format="%(message)s", force=True)
    logging.getLogger("vision").setLevel(logging.INFO)
    absl_logging.set_verbosity(absl_logging.WARNING)
    # Orbax reports read-only checkpoint managers (evaluation) at WARNING.
    logging.getLogger("absl").setLevel(logging.ERROR)
    try:
      main(argv)
    except USER_ERRORS as error:
      fail(str(error))
  return wrapped


def run(main: Callable[[list[str]], None]) -> None:
  app.run(_guarded(main), flags_parser=parse_flags)
