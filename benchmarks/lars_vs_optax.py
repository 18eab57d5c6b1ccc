r"""``lbjax.optim.lars`` against ``optax.lars`` in the full ResNet train step.

Both sides are the train step of ``lbjax.step.build(config)`` (augmentation, forward/backward,
BatchNorm, ``pmean``, update, norms), state donated, one batch already on the device; only the
optimizer differs (``benchmarks/common.py:with_optimizer``), at matched settings: learning rate
0.1, momentum 0.9, weight decay 5e-4, trust coefficient 0.001, eps 0, kernels adapted and
decayed, biases and BatchNorm parameters plain momentum SGD (lbjax ``mask=decay_mask``; optax
``weight_decay_mask = trust_ratio_mask = decay_mask``). The two differ only in the trust ratio's
denominator (seed 000's :math:`\lVert g\rVert + \beta\lVert w\rVert` against optax's
:math:`\lVert g + \beta w\rVert`), which costs the same arithmetic.

Model: ResNet-18 (11.2 M parameters) on digits at their native 8x8. The optimizer's cost grows
with the parameter count and the convolutions' with the image area, so this is the setting where
the update is the largest share of a ResNet step: a slow optimizer shows here first. (resnet_tiny,
5 k parameters, would hide any optimizer behind dispatch overhead; ResNet-56 has 13x fewer
parameters and 3x more layers to compile; ResNet-18 at 32x32 costs 16x the convolutions for the
same update.)

Two more rows time the update alone (``tx.update`` + ``apply_updates``, jitted, donated, on the
ResNet-18 parameters) to show where a difference comes from. All four are interleaved in rounds
in one process; medians. Last line: ``ratio: X`` = lbjax step time / optax step time (goal
X <= 1.03).

    python benchmarks/lars_vs_optax.py [--model=resnet18] [--image_size=8] [--batch_size=32]
        [--rounds=10] [--steps=2]
"""

import common  # pylint: disable=g-bad-import-order  (puts the repository on sys.path)
import optax  # pylint: disable=wrong-import-order

from lbjax import step as step_lib  # pylint: disable=wrong-import-order
from lbjax.optim import registry  # pylint: disable=wrong-import-order

SETTINGS = {"learning_rate": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "trust_coefficient": 0.001,
                "eps": 0.0}


def optax_lars(learning_rate):
  s = SETTINGS
  return optax.lars(learning_rate, weight_decay=s["weight_decay"],
                    weight_decay_mask=registry.decay_mask,
                    trust_coefficient=s["trust_coefficient"], eps=s["eps"],
                    trust_ratio_mask=registry.decay_mask, momentum=s["momentum"])


def main(argv=None):
  args = common.model_parser(__doc__.split("\n")[0]).parse_args(argv)
  exp = step_lib.build(common.optimizer_config(args, "lars", **SETTINGS))
  common.print_ratio(common.compare_with_reference(args, exp, "lbjax.optim.lars", "optax.lars",
                                                   optax_lars))


if __name__ == "__main__":
  main()
