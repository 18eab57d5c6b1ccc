"""The shared base of seed 002's configs (``seed002_sgd.py``, ``seed002_adam.py``, ``seed002_kfac.py``).

Seed 002 (Naganuma, Iwase, Kaku, Nakata & Yokota, "自然勾配近似法を用いた大規模並列深層学習における
ハイパーパラメータ最適化"): LeNet5 on CIFAR-10 with data augmentation, trained with momentum SGD,
Adam and K-FAC at batch sizes 128 / 512 / 2048, each optimizer tuned per batch size by TPE over
weight decay, learning rate, step decay (factor and period in epochs) and the optimizer's own
hyperparameters. Table 1 lists the best trial of each; every config file holds its optimizer's rows.

Assumptions (the paper does not state them): 100 epochs of training (the longest decay period in
Table 1 is 100 epochs); ``standard`` augmentation (crop + flip + normalize); the learning rate
decays in steps (``lr ← lr · lr_decay`` every ``lr_decay_epoch`` epochs) with no warmup; Table 1's
"val-acc" is reported on the test split unless ``validation_fraction`` is set.

TPE search (``lbjax/hpo/``): each optimizer file declares its ``SEARCH_SPACE`` over Table 1's
columns (log-uniform where the range spans decades); the search trains on 90% of the training set
and maximises the accuracy on the held-out 10% (``config.hpo.validation_fraction``):

    python -m lbjax.hpo --config=configs/seed002_sgd.py:bs=512 --config.data_dir=DIR \
        --study=sgd_512 --storage=postgresql://USER@HOST/hpo --trials=100

The config argument is ``bs=N[,row=M][,data=D]``. ``N`` is any batch size of the seed: Table 1's
128, 512, 2048, or 256 and 1024, which experiment 2 (Fig. 2, "128 to 2048, doubling") trains
too. The seed reports tuned hyperparameters for Table 1's batch sizes only; ``row=M`` picks the
Table 1 row whose hyperparameters a run uses (default: the row of ``N`` itself, for 256 and
1024 the next smaller Table 1 batch size, 128 and 512; the seed's own values at 256 and 1024
are unknown: tune them with the TPE search above). ``data=digits`` is a small variant on the
embedded digits (10 epochs, decay periods scaled by 10/100) for smoke runs and tests.

Momentum SGD runs in the seed's form, eqs. (1)–(2) ``m ← αm − ε∇L; w ← w + m`` (the learning rate
inside the momentum buffer, ``optimizer.lr_in_buffer=True``), as the seed's K-FAC does; it differs
from optax's ``v ← μv + g; w ← w − εv`` for about ``1/(1 − α)`` steps after each step decay
(``--config.optimizer.lr_in_buffer=False`` runs optax's).
"""


import ml_collections

from configs import default
from lbjax.hpo import space
from lbjax.optim import registry

BATCH_SIZES = (128, 512, 2048)  # the rows of Table 1
# Experiment 2 (Fig. 2): "ミニバッチサイズを128から2048まで2倍ずつ変化させた".
EXPERIMENT2_BATCH_SIZES = (128, 256, 512, 1024, 2048)


def _cifar10(c: ml_collections.ConfigDict) -> None:
  del c  # the paper's setting


def _digits(c: ml_collections.ConfigDict) -> None:
  """The embedded digits, 10 epochs: every decay period (and its search range) scaled by 10/100."""
  scale = 10.0 / c.num_epochs
  c.dataset, c.image_size, c.augment = "digits", 16, "crop+normalize"  # digits are not mirrorable
  c.num_epochs, c.eval_every_epochs, c.log_every_steps = 10.0, 1.0, 10
  c.schedule.lr_decay_epoch *= scale
  for entry in (c.get("search_space") or {}).values():
    if entry.key == "schedule.lr_decay_epoch":
      entry.low, entry.high = max(1, round(entry.low * scale)), round(entry.high * scale)
      entry.step = max(1, round(entry.step * scale))


DATA_VARIANTS = {"cifar10": _cifar10, "digits": _digits}


def options_of(arg) -> dict:
  """``"bs=1024,data=digits"`` → ``{"bs": 1024, "row": 512, "data": "digits"}``.

  Defaults: bs=128, data=cifar10, row = the largest Table 1 batch size <= bs.
  """
  options = {"bs": BATCH_SIZES[0], "row": None, "data": "cifar10"}
  for item in filter(None, str(arg or "").split(",")):
    key, _, value = item.partition("=")
    if key == "bs" and value.isdigit() and int(value) in EXPERIMENT2_BATCH_SIZES:
      options["bs"] = int(value)
    elif key == "row" and value.isdigit() and int(value) in BATCH_SIZES:
      options["row"] = int(value)
    elif key == "data" and value in DATA_VARIANTS:
      options["data"] = value
    else:
      raise ValueError(f"config argument must be bs=N[,row=M][,data=D] with N in "
                       f"{EXPERIMENT2_BATCH_SIZES}, M in {BATCH_SIZES} and D in "
                       f"{tuple(DATA_VARIANTS)}, got {arg!r}")
  if options["row"] is None:
    options["row"] = max(b for b in BATCH_SIZES if b <= options["bs"])
  return options


def batch_size_of(arg) -> int:
  """``"bs=512"`` → 512; ``None`` or ``""`` → 128 (the first row of Table 1)."""
  return options_of(arg)["bs"]


def uniform(key: str, low: float, high: float, label: str, *, log: bool = False) -> dict:
  """A float search-space entry for ``config.<key>``; ``label`` is its Table 1 column."""
  return {"key": key, "type": "float", "low": low, "high": high, "log": log, "label": label}


def log_uniform(key: str, low: float, high: float, label: str) -> dict:
  return uniform(key, low, high, label, log=True)


def step_decay_space(name: str = "lr", label: str = "lr") -> dict:
  """Table 1's "lr-decay" in [0.1, 1] and "lr-decay-epoch" in 10, 20, ..., 100 epochs."""
  return {f"{name}_decay": uniform("schedule.lr_decay", 0.1, 1.0, f"{label}-decay"),
          f"{name}_decay_epoch": {"key": "schedule.lr_decay_epoch", "type": "int", "low": 10, "high": 100,
                                      "step": 10, "log": False, "label": f"{label}-decay-epoch"}}


def base(batch_size: int, row: dict, search_space: dict | None = None,
         data: str = "cifar10") -> ml_collections.ConfigDict:
  """The seed 002 run at ``batch_size`` with Table 1's ``row``.

  ``row`` holds the optimizer's fields plus ``lr_decay`` and ``lr_decay_epoch`` (the schedule's).
  ``search_space`` (the optimizer's TPE space) adds ``config.search_space`` and ``config.hpo``;
  ``data`` is a key of ``DATA_VARIANTS``.
  """
  c = default.get_config()
  c.dataset = "cifar10"
  c.augment = "standard"
  c.model.name = "lenet5"
  c.batch_size = batch_size
  c.num_epochs = 100.0
  c.schedule.name = "step"
  c.schedule.warmup_epochs = 0.0
  c.schedule.lr_decay = row["lr_decay"]
  c.schedule.lr_decay_epoch = float(row["lr_decay_epoch"])
  c.optimizer = registry.config_block(
      **{k: v for k, v in row.items() if k not in ("lr_decay", "lr_decay_epoch", "val_acc")})
  c.log_every_steps = 50
  c.eval_every_epochs = 5.0
  if search_space is not None:
    # ConfigDict sorts its keys: `column` keeps Table 1's order for the report.
    c.search_space = ml_collections.ConfigDict(
        {name: {**entry, "column": i} for i, (name, entry) in enumerate(search_space.items())})
    c.hpo = space.default_config(validation_fraction=0.1)
  DATA_VARIANTS[data](c)
  return c
