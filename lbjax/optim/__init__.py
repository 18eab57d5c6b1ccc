"""Optimizers of the seed studies, each a function returning ``optax.GradientTransformation``."""

from lbjax.optim.baselines import adabelief
from lbjax.optim.baselines import adam
from lbjax.optim.baselines import adamw
from lbjax.optim.baselines import radam
from lbjax.optim.baselines import sgd
from lbjax.optim.hybrid import hybrid
from lbjax.optim.hybrid import scale_by_hybrid
from lbjax.optim.kfac import kfac
from lbjax.optim.kfac import scale_by_kfac
from lbjax.optim.lamb import lamb
from lbjax.optim.lars import lars
from lbjax.optim.lars import scale_by_lars
from lbjax.optim.nag import nag
from lbjax.optim.noise import add_uniform_noise
from lbjax.optim.registry import OPTIMIZERS
from lbjax.optim.registry import build
from lbjax.optim.registry import decay_mask
from lbjax.optim.registry import from_config
from lbjax.optim.smoothout import smoothout_key
from lbjax.optim.smoothout import smoothout_perturb
from lbjax.optim.trust import has_trust_ratios
from lbjax.optim.trust import trust_ratio_metrics
from lbjax.optim.trust import trust_ratios

__all__ = [
    "OPTIMIZERS",
    "adabelief",
    "adam",
    "adamw",
    "add_uniform_noise",
    "build",
    "decay_mask",
    "from_config",
    "has_trust_ratios",
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
    "trust_ratio_metrics",
    "trust_ratios",
]
