r"""Step time of every registered optimizer over plain SGD's, on the same model and batch.

For each name in ``lbjax.optim.registry.OPTIMIZERS`` the train step of
``lbjax.step.build(config)`` with ``config.optimizer = config_block(name, learning_rate=...)``
(every other hyperparameter at its factory's default; the registry supplies the decay mask):
the real step, with K-FAC's statistics capture in the forward/backward pass for ``kfac``. The
reference is ``sgd`` with momentum 0 and no weight decay, i.e. ``w ← w − η g``, the cheapest
update there is. All steps are interleaved in rounds in one process; medians.

With ``kfac`` among the optimizers, one more row: ``kfac T=10 inv=100``, K-FAC with its
statistics every 10 steps (``factor_update_period=10``) and its inverses every 100
(``inverse_update_period=100``), the programs picked per step as a run picks them, its time
amortised over whole periods of 100 steps each round (``benchmarks/kfac_period.py``, which
compares the periods).

Model: LeNet-5 on digits at 32x32, batch 128 (``configs/quickstart.py``'s job), small enough to
compile nine steps in a few minutes. With its 61 k parameters the update is a small part of the
step for the first-order optimizers, which is what a user of the quickstart pays; on ResNet-18
the update's share is larger (``benchmarks/lars_vs_optax.py`` times it alone). ``--model``,
``--image_size`` and ``--batch_size`` change the setting.

Last line: ``ratio: X`` = the largest step-time ratio to plain SGD over all optimizers.

    python benchmarks/optimizer_overhead.py [--model=lenet5] [--image_size=32]
        [--batch_size=128] [--rounds=10] [--steps=5] [--only=sgd,lars,...]
"""

import common  # pylint: disable=g-bad-import-order  (puts the repository on sys.path)
import jax  # pylint: disable=wrong-import-order
import kfac_period  # pylint: disable=g-bad-import-order

from lbjax import step as step_lib  # pylint: disable=wrong-import-order
from lbjax.optim import registry  # pylint: disable=wrong-import-order

LEARNING_RATE = 0.01
REFERENCE = "plain sgd"


def main(argv=None):
  parser = common.model_parser(__doc__.split("\n")[0], model="lenet5", image_size=32,
                               batch_size=128, rounds=10, steps=5)
  parser.add_argument("--only", default=None, help="comma-separated optimizer names")
  args = parser.parse_args(argv)
  names = args.only.split(",") if args.only else list(registry.OPTIMIZERS)
  devices = jax.local_devices()[:1]

  reference = common.train_case(REFERENCE, step_lib.build(common.optimizer_config(
      args, "sgd", learning_rate=LEARNING_RATE, momentum=0.0, weight_decay=0.0)), devices)
  cases = [reference] + [
      common.train_case(name, step_lib.build(common.optimizer_config(
          args, name, learning_rate=LEARNING_RATE)), devices) for name in names]
  if "kfac" in names:  # statistics every 10 steps, inverses every 100 (issue 25)
    cases.append(kfac_period.periodic_case(
        "kfac T=10 inv=100", step_lib.build(common.optimizer_config(
            args, "kfac", **kfac_period.kfac_settings(10, 100))), 100, devices))
  common.interleave(cases, args.rounds, args.steps)

  print(common.machine_line())
  print(f"{args.model} on digits {args.image_size}x{args.image_size}, batch {args.batch_size} on "
        f"1 device, {args.rounds} interleaved rounds x {args.steps} steps; every optimizer at "
        f"its defaults with learning rate {LEARNING_RATE}; ratio = step time / {REFERENCE}'s")
  common.print_table(common.CASE_HEADER, common.case_rows(cases, reference))
  print(common.memory_line())
  ratios = {c.name: common.paired_ratio(c, reference) for c in cases[1:]}
  worst = max(ratios, key=ratios.get)
  print(f"largest overhead: {worst}, {ratios[worst]:.2f}x plain SGD; the others: "
        + ", ".join(f"{name} {r:.2f}x" for name, r in ratios.items() if name != worst))
  common.print_ratio(ratios[worst])


if __name__ == "__main__":
  main()
