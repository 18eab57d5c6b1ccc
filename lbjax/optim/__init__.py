"""Optimizers of the seed studies, each a function returning ``optax.GradientTransformation``."""

from lbjax.optim.baselines import adam, adamw, sgd
from lbjax.optim.registry import OPTIMIZERS, build, decay_mask
