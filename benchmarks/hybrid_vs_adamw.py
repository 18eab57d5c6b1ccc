r"""``lbjax.optim.hybrid`` (seed 003) against ``optax.adamw`` in the full ResNet train step.

Both sides are the train step of ``lbjax.step.build(config)``, state donated, one batch already
on the device; only the optimizer differs (``benchmarks/common.py:with_optimizer``), at matched
settings: learning rate 1e-3, :math:`\beta_1` 0.9, :math:`\beta_2` 0.999, eps 1e-8, decoupled
weight decay 0.01 on kernels only (``mask=decay_mask`` on both). Both keep two moments per
parameter; the hybrid adds AdaBelief's :math:`(g - m)^2`, eps inside the root and RAdam's
rectifier (scalars per step, and one select per element).

Model: ResNet-18 (11.2 M parameters) on digits at their native 8x8, the setting where the
update is the largest share of a ResNet step (see ``benchmarks/lars_vs_optax.py``). Two more
rows time the update alone (``tx.update`` + ``apply_updates``, jitted, donated). All four are
interleaved in rounds in one process; medians. Last line: ``ratio: X`` = lbjax step time /
optax step time (goal X <= 1.05).

    python benchmarks/hybrid_vs_adamw.py [--model=resnet18] [--image_size=8] [--batch_size=32]
        [--rounds=10] [--steps=2]
"""

import common  # pylint: disable=g-bad-import-order  (puts the repository on sys.path)
import optax  # pylint: disable=wrong-import-order

from lbjax import step as step_lib  # pylint: disable=wrong-import-order
from lbjax.optim import registry  # pylint: disable=wrong-import-order

SETTINGS = {"learning_rate": 1e-3, "b1": 0.9, "b2": 0.999, "eps": 1e-8, "weight_decay": 0.01}


def optax_adamw(learning_rate):
  s = SETTINGS
  return optax.adamw(learning_rate, b1=s["b1"], b2=s["b2"], eps=s["eps"],
                     weight_decay=s["weight_decay"], mask=registry.decay_mask)


def main(argv=None):
  args = common.model_parser(__doc__.split("\n")[0]).parse_args(argv)
  exp = step_lib.build(common.optimizer_config(args, "hybrid", **SETTINGS))
  common.print_ratio(common.compare_with_reference(args, exp, "lbjax.optim.hybrid",
                                                   "optax.adamw", optax_adamw))


if __name__ == "__main__":
  main()
