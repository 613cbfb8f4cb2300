"""The user-mistake exception every layer raises, in a module that imports nothing.

    from vision.errors import ConfigError
    raise ConfigError("config key 'model.name' is 'vgg'; known models: ...")

It lives below `vision.config` so that the model registry (which `config`
imports to check `model.name`) can raise it without importing `config` back.
"""


class ConfigError(ValueError):
  """A user mistake in a config: the message is one actionable line."""
