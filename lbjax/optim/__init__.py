"""Optimizers of the seed studies, each a function returning ``optax.GradientTransformation``."""

from lbjax.optim.baselines import adabelief, adam, adamw, radam, sgd
from lbjax.optim.hybrid import hybrid, scale_by_hybrid
from lbjax.optim.kfac import kfac, scale_by_kfac
from lbjax.optim.lamb import lamb
from lbjax.optim.lars import lars, scale_by_lars
from lbjax.optim.nag import nag
from lbjax.optim.noise import add_uniform_noise
from lbjax.optim.registry import OPTIMIZERS, build, decay_mask, from_config
from lbjax.optim.smoothout import smoothout_key, smoothout_perturb

__all__ = [
    "OPTIMIZERS",
    "adabelief",
    "adam",
    "adamw",
    "add_uniform_noise",
    "build",
    "decay_mask",
    "from_config",
    "hybrid",
    "kfac",
    "lamb",
    "lars",
    "nag",
    "radam",
    "scale_by_hybrid",
    "scale_by_kfac",
    "scale_by_lars",
    "sgd",
    "smoothout_key",
    "smoothout_perturb",
]
