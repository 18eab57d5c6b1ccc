r"""Seed 003 Table 1: ResNet-56 on CIFAR-10, NAG baseline → +cosine → +TrivialAugment → +CutMix →
+weight decay off at 75% (each row adds one piece to the previous row).

Seed 003 (Noguchi & Yamauchi, "ハイパーパラメータに対してロバストかつ高精度な深層学習手法の提案") §4:
ResNet-56, NAG (eqs. (3)–(5), η = 0.1, μ = 0.9, `lbjax/optim/nag.py`), weight decay λ = 1e-4,
batch 128, 300 epochs, lr × 0.1 at epochs 150 and 225. Test accuracy (%) it reports:

=====================  =====
Baseline               93.95
+cosine decay          93.99
+TrivialAugment        94.51
+CutMix                95.11
+Weight Decay off      95.73
=====================  =====

Cosine decay is eq. (17) over all 300 epochs; TrivialAugment (Wide) and CutMix (probability 1,
λ ~ Beta(1, 1)) come after the standard crop + flip (`lbjax/data/augment.py`); weight decay is
switched off after 75% of the epochs (``schedule.weight_decay_off_fraction``). Assumption: the
baseline's augmentation is the standard CIFAR crop + flip + normalize (the seed does not say).

The argument picks one row (``baseline``, ``cosine``, ``trivialaugment``, ``cutmix``,
``wd_off``; default ``baseline``); ``sweep()`` is the five rows (``seeds=N`` repeats them).

NAG's reading: the seed's eq. (3) dampens the momentum, Δθ ← μΔθ + (1−μ)ηg, so η = 0.1 steps
like undampened momentum SGD at 0.01; the usual ResNet-56 recipe behind a 93.95% baseline at
η = 0.1 is PyTorch's ``SGD(nesterov=True)`` without (1−μ). ``nag=damped`` (default) runs the
seed's equation, ``nag=undamped`` PyTorch's (``optimizer.damped``, `lbjax/optim/nag.py`), e.g.
``configs/seed003_ablation.py:baseline,nag=undamped``::

    python -m experiments.run --config=configs/seed003_ablation.py --root=runs/seed003_table1 \
        --data_dir=/data/tfds
    python -m experiments.report --root=runs/seed003_table1 --table=seed003_table1

    python -m lbjax.main --config=configs/seed003_ablation.py:wd_off --workdir=runs/s003_wd_off \
        --config.data_dir=/data/tfds
"""

from configs import default
from configs import sweeps
from lbjax.optim import registry

# Seed 003 Table 1, test accuracy (%) of each cumulative row.
SEED_TABLE1 = {"baseline": 93.95, "cosine": 93.99, "trivialaugment": 94.51, "cutmix": 95.11,
               "wd_off": 95.73}
LABELS = {"baseline": "Baseline", "cosine": "+cosine decay", "trivialaugment": "+TrivialAugment",
          "cutmix": "+CutMix", "wd_off": "+Weight Decay off"}

# What each row sets; a row is the baseline plus its own and every earlier row's fields.
_STEPS = {
    "baseline": {"schedule.name": "multistep", "augment": "standard",
                 "schedule.weight_decay_off_fraction": None},
    "cosine": {"schedule.name": "cosine"},
    "trivialaugment": {"augment": "standard+trivialaugment"},
    "cutmix": {"augment": "standard+trivialaugment+cutmix"},
    "wd_off": {"schedule.weight_decay_off_fraction": 0.75},
}
STAGES = tuple(_STEPS)


def stage_overrides(stage: str) -> dict:
  """The fields of row ``stage`` (cumulative over the rows before it)."""
  if stage not in _STEPS:
    raise ValueError(f"config argument: one of {STAGES} (optionally ,seeds=N), got {stage!r}")
  out = {}
  for name in STAGES[:STAGES.index(stage) + 1]:
    out.update(_STEPS[name])
  return out


NAG_READINGS = {"damped": True, "undamped": False}  # config argument nag= -> optimizer.damped


def nag_damped(reading: str) -> bool:
  """``optimizer.damped`` for the config argument ``nag=damped|undamped``."""
  if reading not in NAG_READINGS:
    raise ValueError(f"config argument nag: one of {tuple(NAG_READINGS)}, got {reading!r}")
  return NAG_READINGS[reading]


def base():
  """Seed 003's baseline: ResNet-56, NAG η = 0.1, μ = 0.9, λ = 1e-4, batch 128, 300 epochs."""
  c = default.get_config()
  c.dataset = "cifar10"
  c.model.name = "resnet56"
  c.batch_size = 128
  c.num_epochs = 300.0
  c.optimizer = registry.config_block("nag", learning_rate=0.1, momentum=0.9, weight_decay=1e-4,
                                      damped=True)
  c.schedule.warmup_epochs = 0.0
  c.schedule.milestones = (150.0, 225.0)
  c.schedule.lr_decay = 0.1
  c.eval_every_epochs = 10.0
  c.log_every_steps = 100
  c.checkpoint_every_steps = 2000
  return c


def recipe(stage: str = "wd_off"):
  """`base` with the rows of Table 1 up to ``stage`` applied (``wd_off``: the whole recipe)."""
  return sweeps.apply_overrides(base(), stage_overrides(stage), where="configs/seed003_ablation.py")


def _stage_of(arg):
  stage, _, rest = (arg or "baseline").partition(",")
  if "=" in stage:  # only options, e.g. "seeds=3"
    stage, rest = "baseline", arg
  return stage, sweeps.options(rest, {"seeds": 1, "nag": "damped"})


def get_config(arg=None):
  stage, opts = _stage_of(arg)
  c = recipe(stage)
  c.optimizer.damped = nag_damped(opts["nag"])
  return c


def sweep(arg=None):
  _, opts = _stage_of(arg)
  damped = nag_damped(opts["nag"])
  runs = [{"run_name": f"{i + 1}_{stage}", **stage_overrides(stage), "optimizer.damped": damped}
          for i, stage in enumerate(STAGES)]
  return sweeps.with_seeds(runs, opts["seeds"])
