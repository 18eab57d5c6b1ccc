r"""K-FAC with its statistics every τ steps: amortised step time over plain SGD's (issue 25).

K-FAC's extra cost on a convolutional net is the statistics (the patches' second moments), not
the preconditioning: with ``config.optimizer.factor_update_period = τ`` the train step captures
them on the steps ``step % τ == 0`` only and runs the plain forward/backward pass on the others
(two compiled programs, picked by the host from the step: `lbjax.step.Experiment.statistics_at`).
A step then costs about ``1 + c/τ`` SGD steps (``c`` ≈ 2.3 on LeNet-5).

Cases, each the real train step of ``lbjax.step.build(config)`` on one device as a run takes it
(`PeriodicCase`: the program of each step chosen as `lbjax.train.Run` chooses it):

* ``plain sgd``: ``w ← w − η g`` (momentum 0, no weight decay), the reference;
* ``kfac T=1 inv=1``: K-FAC as before issue 25, statistics and inverses every step;
* ``kfac T=1 / 10 / 100``: statistics every τ steps, inverses every 100 (``inverse_update_period``
  counts steps and is a multiple of τ);
* ``kfac T=10 inv=10``: ``configs/seed002_kfac.py``'s setting, inverses at every refresh.

Every case runs whole periods of 100 steps per round (the least common multiple of every
case's periods), so each K-FAC time is amortised over a whole period of statistics and inverse
refreshes; rounds are interleaved in one process (``benchmarks/common.py``); medians.

Last line: ``ratio: X`` = the τ = 10, ``inverse_update_period=100`` case's amortised step time
over plain SGD's (paired per round). Issue 25's goal: X ≤ 1.3 on the 2-core CPU.

    python benchmarks/kfac_period.py [--model=lenet5] [--image_size=32] [--batch_size=128]
        [--rounds=5] [--steps=100]
"""

import math

import common  # pylint: disable=g-bad-import-order  (puts the repository on sys.path)
import jax  # pylint: disable=wrong-import-order

from lbjax import mesh as mesh_lib  # pylint: disable=wrong-import-order
from lbjax import step as step_lib  # pylint: disable=wrong-import-order

LEARNING_RATE = 0.01
REFERENCE = "plain sgd"
INVERSE_UPDATE_PERIOD = 100
PERIODS = (1, 10, 100)
TARGET = 10  # the τ of the `ratio:` line


class PeriodicStep:
  """``(state, batch) -> (state, metrics)`` of a run: step ``s`` (counted here from 0, as the
  state's step) runs ``exp.train_program(mesh, statistics=exp.statistics_at(s))``."""

  def __init__(self, exp: step_lib.Experiment, mesh: jax.sharding.Mesh):
    self.exp, self.step = exp, 0
    self.programs = {True: exp.train_program(mesh)}
    if exp.plain_parts is not None:
      self.programs[False] = exp.train_program(mesh, statistics=False)
    self.lower = self.programs[True].lower  # XLA footprint: the program with the statistics

  def __call__(self, state, batch):
    program = self.programs[self.exp.statistics_at(self.step)]
    self.step += 1
    return program(state, batch)


class PeriodicCase(common.Case):
  """A `common.Case` of a `PeriodicStep` that always runs whole periods: warming up is the
  first period (both programs compile: ``compile_s`` is that period's wall time), every round
  ``max(1, round(steps / period))`` periods, so its step time is amortised over whole periods
  whatever ``steps`` the other cases run."""

  period: int = 1

  def warm_up(self):
    super().warm_up()  # compiles and runs step 0, records the XLA footprint
    first = self.compile_s
    common.Case.run(self, self.period - 1)  # the rest of the first period: the other compiles
    self.compile_s = first + self.times.pop() * (self.period - 1)

  def run(self, steps: int) -> float:
    return super().run(self.period * max(1, round(steps / self.period)))


def periodic_case(name: str, exp: step_lib.Experiment, period: int,
                  devices=None) -> PeriodicCase:
  """`PeriodicCase` of ``exp``'s run on ``devices`` (default: the first), batch 0 on them."""
  mesh = mesh_lib.data_mesh(devices or jax.local_devices()[:1])
  state = exp.init_state()
  case = PeriodicCase(name, PeriodicStep(exp, mesh), mesh_lib.put_replicated(state, mesh),
                      (exp.put_train_batch(0, mesh),), examples=exp.config.batch_size,
                      state_mib=common.tree_mib(state))
  case.period = period
  return case


def kfac_settings(factor_update_period: int, inverse_update_period: int) -> dict:
  return {"learning_rate": LEARNING_RATE, "factor_update_period": factor_update_period,
          "inverse_update_period": inverse_update_period}


def main(argv=None):
  parser = common.model_parser(__doc__.split("\n")[0], model="lenet5", image_size=32,
                               batch_size=128, rounds=5, steps=100)
  args = parser.parse_args(argv)
  period = math.lcm(INVERSE_UPDATE_PERIOD, *PERIODS)
  settings = {"kfac T=1 inv=1": kfac_settings(1, 1),
              **{f"kfac T={t} inv={INVERSE_UPDATE_PERIOD}": kfac_settings(t, INVERSE_UPDATE_PERIOD)
                 for t in PERIODS},
              f"kfac T={TARGET} inv={TARGET}": kfac_settings(TARGET, TARGET)}
  reference = periodic_case(REFERENCE, step_lib.build(common.optimizer_config(
      args, "sgd", learning_rate=LEARNING_RATE, momentum=0.0, weight_decay=0.0)), period)
  cases = [reference] + [
      periodic_case(name, step_lib.build(common.optimizer_config(args, "kfac", **values)),
                    period) for name, values in settings.items()]
  common.interleave(cases, args.rounds, args.steps)

  steps = cases[0].period * max(1, round(args.steps / cases[0].period))
  print(common.machine_line())
  print(f"{args.model} on digits {args.image_size}x{args.image_size}, batch {args.batch_size} on "
        f"1 device, {args.rounds} interleaved rounds x {steps} steps (whole periods); K-FAC at "
        f"its defaults with learning rate {LEARNING_RATE}; T = factor_update_period, inv = "
        f"inverse_update_period (both in steps); compile s = the first period's wall time; "
        f"ratio = amortised step time / {REFERENCE}'s (paired median)")
  common.print_table(common.CASE_HEADER, common.case_rows(cases, reference))
  print(common.memory_line())
  target = next(c for c in cases if c.name == f"kfac T={TARGET} inv={INVERSE_UPDATE_PERIOD}")
  ratio = common.paired_ratio(target, reference)
  every = next(c for c in cases if c.name == f"kfac T=1 inv={INVERSE_UPDATE_PERIOD}")
  c = common.paired_ratio(every, reference) - 1  # statistics every step (+ inverses / 100)
  print(f"K-FAC with statistics every step costs 1 + {c:.2f} SGD steps; 1 + {c:.2f}/{TARGET} = "
        f"{1 + c / TARGET:.3f} is the T={TARGET} ratio if only the statistics cost")
  common.print_ratio(ratio)


if __name__ == "__main__":
  main()
