"""``main.py`` with a step hook that signals this process after step N (the resume tests).

  python tests/interrupt_main.py STEP SIGKILL|SIGINT [main.py flags...]

Fault injection is not a product setting: the training loop runs the hooks
in ``loop.STEP_HOOKS`` after every step, and only this test driver adds one.
"""

import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402

import main  # noqa: E402
from segqual_jax.training import loop  # noqa: E402


def _hook(step: int, sig: str):
  def hook(name, done_step):
    del name
    if done_step == step:
      os.kill(os.getpid(), getattr(signal, sig))
  return hook


if __name__ == '__main__':
  step, sig = int(sys.argv[1]), sys.argv[2]
  loop.STEP_HOOKS.append(_hook(step, sig))
  sys.argv = [sys.argv[0]] + sys.argv[3:]
  app.run(main.main, flags_parser=main._parse_flags)  # pylint: disable=protected-access
