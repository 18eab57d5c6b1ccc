"""Errors lbjax reports to users without a traceback."""


class ConfigError(ValueError):
  """A bad config value or flag.

  The message always names the offending key (``config.optimizer.name``,
  ``--workdir``, ...) and, where there is a closed set, the allowed values.
  ``lbjax.main`` prints it on one line and exits non-zero before touching the
  workdir.
  """

  def __init__(self, key: str, message: str):
    self.key = key
    self.message = message
    super().__init__(f"{key}: {message}")


def check_choice(key: str, value, allowed) -> None:
  """Raises ConfigError if ``value`` is not one of ``allowed``."""
  if value not in allowed:
    raise ConfigError(
        key, f"unknown value {value!r}; allowed: {', '.join(sorted(map(str, allowed)))}")
