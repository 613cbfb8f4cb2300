"""The data layer's one user-facing error type.

    raise SourceError(f"{path} line 7: label 'dgo' is not in config key 'data.class_names'")

Entry points print it as one line, `error: ...`, with exit status 2
(`experiments/common.py`); the message names the file or key and the fix.
"""


class SourceError(ValueError):
  """A data source that cannot be read; the message names the path and the fix."""
