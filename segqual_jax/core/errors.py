"""The errors a user can cause, in one place, so ``main`` turns each into one line.

Every class derives from ``SegqualError``: ``main.py`` prints ``error: <message>``
and exits non-zero instead of a traceback. The lower layers raise them (the
device primitive rejects a batch size, the data layer an unreadable folder),
so they live in ``core`` where every layer may import them.
"""

from __future__ import annotations


class SegqualError(Exception):
  """A problem the user can fix; its message says what and how."""


class ConfigError(SegqualError, ValueError):
  """A config field is unknown, has an invalid value, or disagrees with a trained run."""


class DataError(SegqualError, ValueError):
  """A data set cannot be built: missing folder, unmatched masks, bad split list."""


class PredictError(SegqualError, RuntimeError):
  """A predict run as a whole cannot go on (bad --input/--output, no readable image)."""


class NonFiniteLoss(SegqualError, FloatingPointError):
  """The loss became NaN or infinite."""


class TrainingInterrupted(SegqualError, RuntimeError):
  """Raised after a SIGINT once the state is safely checkpointed."""


class NotTrained(SegqualError, FileNotFoundError):
  """A stage needs a trained model that the workdir does not hold (yet).

  ``main`` knows the command line; ``command_hint`` turns the message into the
  exact command that trains the run, instead of a ``<config>`` placeholder.
  """

  def __init__(self, what: str, directory: str, workdir: str):
    self.what, self.directory, self.workdir = what, directory, workdir
    super().__init__(self.message())

  def message(self, config_args: str = '--config=<config>') -> str:
    return (f'no {self.what} in {self.directory}; train the run first (it resumes if '
            f'interrupted): python main.py {config_args} --workdir={self.workdir} --mode=all')
