"""A stream monitor: an anytime-valid alarm when the cases stop looking like the run's own.

A clinic sends a run a few cases at a time, for days. The batch test of one
predict call sees only that call; this monitor sees the whole stream, across
calls, through a state file (``--monitor=FILE``). It is a **conformal test
martingale** (Vovk, Nouretdinov & Gammerman 2003; Vovk et al. 2021, "Testing
randomness online"):

1. **Exact, independent p-values: a growing reference.** The applicability
   scores of the run's held-out reference cases are the first M observations;
   each stream case's score joins the bag after it is tested. Case n's p-value
   is its smoothed rank among the references, the earlier stream cases and
   itself: ``p_n = (#{s > s_n} + theta_n #{s = s_n}) / (M + n)``, larger
   scores stranger, ``theta_n`` uniform from the state's own random seed and
   n (not from the case: a name sent every day would reuse one theta). If
   references and stream are exchangeable, p_1, p_2, ... are independent and
   uniform (Vovk et al. 2003, Thm 1). An image already in the stream (the
   same pixels at the model's size) is not fed again: a resent folder would
   otherwise repeat its scores and break exchangeability. The fixed-reference p-values of the per-case
   gate would not do: they share one reference set and are dependent (Bates
   et al. 2023), so a product of them is no martingale.
2. **Betting: a jumper over power betting functions.** ``f_e(p) = e p^(e-1)``
   for e on a grid in (0, 1] integrates to 1 over p in [0, 1], so each
   component's capital is a martingale under uniform p-values; before every
   case a share ``jump`` of the total capital is spread evenly again over the
   components (Vovk's Simple Jumper), so a long calm stretch, which starves
   the bold components, does not blunt the monitor for a later shift. The
   total capital ``C_n`` is a non-negative martingale with ``C_0 = 1``.
3. **Alarm at ``C_n >= 1 / delta``.** By Ville's inequality the chance that an
   exchangeable stream *ever* raises it is at most ``delta``
   (``predict.monitor_delta``). After an alarm the state stays alarmed --
   every later case goes to review -- until a person resets it
   (``--mode=monitor --monitor_action=reset``), which starts a new test.

A missing or unreadable state file, or one kept for another run, is an error
naming the file: a silent fresh start would forget an alarm. Updates hold an
exclusive lock on ``<file>.lock`` from reading to writing, so two predicts
of one stream never overwrite each other's cases or alarm.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import hashlib
import json
import math
import os
import secrets

import numpy as np

from segqual_jax.core import artifacts, keys

VERSION = 1
EPSILONS = tuple(np.round(np.linspace(0.02, 1.0, 50), 4).tolist())  # the power betting functions
JUMP = 0.01  # share of the capital respread over the components before each case


class MonitorError(ValueError):
  """A state file that cannot be used: missing, unreadable, or kept for another run."""

  def __init__(self, path: str, problem: str):
    super().__init__(f'{path}: {problem}')
    self.path, self.problem = path, problem


def fingerprint(reference_scores: np.ndarray) -> str:
  """Which fitted gate a state belongs to: its reference scores (a refitted score, or another
  run, has others; a rewritten config of the same run does not matter)."""
  return hashlib.sha256(np.asarray(reference_scores, np.float64).tobytes()).hexdigest()[:16]


@contextlib.contextmanager
def locked(path: str):
  """An exclusive lock on ``<path>.lock`` for a read-update-write of the state."""
  with open(path + '.lock', 'a') as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


@dataclasses.dataclass
class Monitor:
  """The monitor's state: the stream so far, the capital, and the alarm if it fired."""
  fingerprint: str  # fingerprint() of the gate it watches
  delta: float  # alarm level: the chance of ever alarming on an exchangeable stream
  stream: list[float]  # the applicability scores of the stream's cases, in order
  log_capital: list[float]  # log capital of each betting component
  alarm: dict | None = None  # {'case', 'index', 'time', 'capital'} once it fired
  started: str = ''  # when the test (re)started, UTC
  seed: int = 0  # the tie-breaking thetas' seed, drawn at the start
  seen: dict[str, float] = dataclasses.field(default_factory=dict)  # content hash of each case fed -> its p-value

  @classmethod
  def start(cls, reference_scores: np.ndarray, delta: float, seed: int | None = None) -> 'Monitor':
    """A new test; ``seed`` (the thetas') is drawn from the OS unless given (experiments)."""
    return cls(fingerprint(reference_scores), float(delta), [],
               [math.log(1.0 / len(EPSILONS))] * len(EPSILONS), None, _now(),
               secrets.randbits(63) if seed is None else int(seed), {})

  @property
  def capital(self) -> float:
    """The martingale's value C_n (1 at the start)."""
    return float(np.exp(_logsumexp(np.asarray(self.log_capital))))

  @property
  def alarmed(self) -> bool:
    return self.alarm is not None

  def pvalue(self, reference_scores: np.ndarray, score: float, theta: float) -> float:
    """The smoothed conformal p-value of ``score`` among the references, the stream so far
    and itself (before it joins the stream)."""
    bag = np.concatenate([np.asarray(reference_scores, np.float64), np.asarray(self.stream, np.float64)])
    s = float(score)  # +inf (an image that broke f's arithmetic) ranks above every finite score
    return (int(np.sum(bag > s)) + theta * (1 + int(np.sum(bag == s)))) / (len(bag) + 1)

  def update(self, reference_scores: np.ndarray, score: float, case: str,
             content: str | None = None) -> float | None:
    """Tests one case (its applicability score) and adds it to the stream; returns its
    p-value. A case whose ``content`` hash is already in the stream is not fed again: it
    gets the p-value it had then (so a predict resumed after a kill reports what the
    first attempt fed). Sets ``alarm`` when the capital first reaches 1 / delta."""
    if content is not None and content in self.seen:
      return self.seen[content]
    p = self.pvalue(reference_scores, score, self.theta(len(self.stream) + 1))
    if content is not None:
      self.seen[content] = p
    log_c = np.asarray(self.log_capital)
    total = _logsumexp(log_c)
    spread = total + math.log(JUMP / len(EPSILONS))
    log_c = np.logaddexp(log_c + math.log1p(-JUMP), spread)  # the jumper's respreading
    eps = np.asarray(EPSILONS)
    log_c = log_c + np.log(eps) + (eps - 1.0) * math.log(max(p, 1e-300))
    self.log_capital = log_c.tolist()
    self.stream.append(float(score))
    if self.alarm is None and _logsumexp(log_c) >= math.log(1.0 / self.delta):
      self.alarm = {'case': case, 'index': len(self.stream), 'time': _now(), 'capital': self.capital}
    return p

  def theta(self, index: int) -> float:
    """The tie-breaking uniform of the stream's ``index``-th case."""
    return float(np.random.default_rng([keys.MONITOR, self.seed, index]).random())

  def to_json(self) -> dict:
    return {'version': VERSION, 'fingerprint': self.fingerprint, 'delta': self.delta,
            'epsilons': list(EPSILONS), 'jump': JUMP, 'started': self.started, 'seed': self.seed,
            'cases': len(self.stream), 'capital': self.capital, 'alarm': self.alarm,
            'stream': [s if math.isfinite(s) else 'inf' for s in self.stream],
            'log_capital': self.log_capital, 'seen': dict(sorted(self.seen.items()))}

  def save(self, path: str) -> None:
    artifacts.write_text(path, json.dumps(self.to_json(), indent=1))

  @classmethod
  def load(cls, path: str, reference_scores: np.ndarray | None = None) -> 'Monitor':
    """The state in ``path``; with ``reference_scores``, checked to watch that gate."""
    if not os.path.exists(path):
      raise MonitorError(path, 'no monitor state here (start one with --mode=monitor '
                               '--monitor_action=start; a missing state is never replaced silently, '
                               'which would forget an alarm)')
    try:
      with open(path) as f:
        raw = json.load(f)
      if raw.get('version') != VERSION or list(raw['epsilons']) != list(EPSILONS) or raw['jump'] != JUMP:
        raise ValueError(f'state of another format (version {raw.get("version")})')
      state = cls(str(raw['fingerprint']), float(raw['delta']),
                  [float(s) for s in raw['stream']], [float(c) for c in raw['log_capital']],
                  raw['alarm'], str(raw['started']), int(raw['seed']), _seen(raw['seen']))
      if len(state.log_capital) != len(EPSILONS) or not all(map(math.isfinite, state.log_capital)):
        raise ValueError('the capital is damaged')
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise MonitorError(path, f'unreadable monitor state ({e}); fix or restore the file, or reset it '
                               'with --mode=monitor --monitor_action=reset') from None
    if reference_scores is not None and state.fingerprint != fingerprint(reference_scores):
      raise MonitorError(path, 'this monitor watches another run (or a refitted applicability score); '
                               'start a monitor for this run with --mode=monitor --monitor_action=start '
                               'and another --monitor file')
    return state

  def status_text(self) -> str:
    if self.alarm:
      a = self.alarm
      return (f'STREAM MONITOR ALARM: the stream stopped looking like the run\'s own cases at case '
              f'{a["index"]} ({a["case"]}, {a["time"]}; martingale {a["capital"]:.3g} >= 1/delta = '
              f'{1 / self.delta:g}); auto-accept is stopped until a person resets the monitor '
              '(--mode=monitor --monitor_action=reset).')
    return (f'Stream monitor: {len(self.stream)} cases since {self.started}, martingale '
            f'{self.capital:.3g} (alarm at {1 / self.delta:g}; an exchangeable stream ever alarms '
            f'with probability <= {self.delta}).')


def _seen(raw) -> dict[str, float | None]:
  """The fed cases' content hashes and p-values (a state written before the p-values were kept
  lists the hashes alone: their p-values are unknown, None)."""
  if isinstance(raw, dict):
    return {str(h): (None if p is None else float(p)) for h, p in raw.items()}
  return {str(h): None for h in raw}


def _logsumexp(x: np.ndarray) -> float:
  m = float(np.max(x))
  return m + math.log(float(np.sum(np.exp(x - m))))


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')
