"""The seeds' result tables as data: which runs fill which cell, and the seed's number there.

A `Table` has rows and columns, each a label and a *match*: dotted config keys and the values a
run's ``config.json`` must hold (floats compared with a relative tolerance of 1e-9; the key
``"run"`` matches the run's directory name without its ``,seed=N`` suffix). A run belongs to the
cell whose row and column both match; several runs in a cell are seeds (mean ± std).

The seed numbers live beside the sweeps that reproduce them (``configs/seed00X_*.py``);
`TABLES` maps a name to a builder, and `for_config` picks the table of a config file.
"""

from collections.abc import Callable, Mapping
import dataclasses
from typing import Any

SeedValue = float | str | None  # a number (%), "diverged", or None (the seed gives none)


@dataclasses.dataclass(frozen=True)
class Table:
  """One result table.

  Attributes:
    name: file name stem of the outputs.
    title: heading, naming the seed and its table.
    row_header: header of the label column.
    rows, columns: ``(label, match)`` pairs.
    seed: the seed's value per ``(row label, column label)``.
    metrics: the run's value is the first of these present in its ``status.json``.
    percent: values are fractions shown ×100.
    configs: the commands that fill the table (for the report's header).
  """
  name: str
  title: str
  row_header: str
  rows: tuple[tuple[str, Mapping[str, Any]], ...]
  columns: tuple[tuple[str, Mapping[str, Any]], ...]
  seed: Mapping[tuple[str, str], SeedValue] = dataclasses.field(default_factory=dict)
  metrics: tuple[str, ...] = ("test_accuracy",)
  percent: bool = True
  configs: tuple[str, ...] = ()


def seed000_table1() -> Table:
  from configs import seed000_swap as cfg  # pylint: disable=g-import-not-at-top
  rows = (("SGD", {"optimizer.name": "sgd"}), ("LARS", {"optimizer.name": "lars"}))
  columns = tuple((f"BS{bs}", {"batch_size": bs}) for bs in cfg.BATCH_SIZES)
  seed = {(label, f"BS{bs}"): cfg.SEED_TABLE[(label.lower(), bs)]
          for label, _ in rows for bs in cfg.BATCH_SIZES}
  return Table("seed000_table1", "Seed 000 Table 1: SWAP test accuracy (%), ResNet18, CIFAR-10",
               "optimizer (phase 1)", rows, columns, seed,
               configs=(("python -m experiments.run --config=configs/seed000_swap.py:seeds=10 "
                        "--root=ROOT --data_dir=DIR"),))


def seed001(method: str = "noise") -> Table:
  from configs import seed001_noise as cfg  # pylint: disable=g-import-not-at-top
  other = "smoothout" if method == "noise" else "noise"
  rows = [("Base Line", {f"{method}.scale": 0.0, f"{other}.scale": 0.0})]
  for n in cfg.NOISE_EXPONENTS:
    for annealing in cfg.ANNEALING:
      label = f"10e-{n} Uniform Noise" + (f" ({annealing} annealing)" if annealing != "none"
                                          else "")
      rows.append((label, {f"{method}.scale": 10.0 ** -n, f"{method}.annealing": annealing,
                           f"{other}.scale": 0.0}))
  columns = (("SB (128)", {"batch_size": 128}), ("LB (8192)", {"batch_size": 8192}))
  arg = "" if method == "noise" else ":method=smoothout"
  kind = "update noise, eq. (1)" if method == "noise" else "SmoothOut noise"
  return Table(f"seed001_{method}", f"Seed 001 Fig. 2 (final values): VGG9, CIFAR-10, no "
               f"preprocessing, uniform {kind} — test accuracy (%); the seed gives curves, "
               "no numbers",
               "noise", tuple(rows), columns,
               configs=((f"python -m experiments.run --config=configs/seed001_noise.py{arg} "
                        "--root=ROOT --data_dir=DIR"),))


def seed002_table1() -> Table:
  # pylint: disable=g-import-not-at-top
  from configs import seed002_adam
  from configs import seed002_common
  from configs import seed002_kfac
  from configs import seed002_sgd
  # pylint: enable=g-import-not-at-top
  modules = {"Momentum SGD": ("sgd", seed002_sgd), "Adam": ("adam", seed002_adam),
             "K-FAC": ("kfac", seed002_kfac)}
  rows = tuple((label, {"optimizer.name": name}) for label, (name, _) in modules.items())
  columns = tuple((str(bs), {"batch_size": bs}) for bs in seed002_common.BATCH_SIZES)
  seed = {(label, str(bs)): 100 * module.TABLE1[bs]["val_acc"]
          for label, (_, module) in modules.items() for bs in seed002_common.BATCH_SIZES}
  commands = tuple(f"python -m experiments.run --config=configs/seed002_{name}.py:bs={bs} "
                   "--root=ROOT --data_dir=DIR" for name in ("sgd", "adam", "kfac")
                   for bs in seed002_common.BATCH_SIZES)
  return Table("seed002_table1", "Seed 002 Table 1: LeNet5, CIFAR-10, val-acc (%) at the tuned "
               "hyperparameters", "optimizer \\ batch size", rows, columns, seed,
               metrics=("validation_accuracy", "test_accuracy"), configs=commands)


def seed003_table1() -> Table:
  from configs import seed003_ablation as cfg  # pylint: disable=g-import-not-at-top
  rows = tuple((cfg.LABELS[stage], {"optimizer.name": "nag", **cfg.stage_overrides(stage)})
               for stage in cfg.STAGES)
  column = "精度 (%)"
  seed = {(cfg.LABELS[stage], column): cfg.SEED_TABLE1[stage] for stage in cfg.STAGES}
  return Table("seed003_table1", "Seed 003 Table 1: ResNet-56, CIFAR-10, NAG, each row adds one "
               "piece — test accuracy (%)", "", rows, ((column, {}),), seed,
               configs=(("python -m experiments.run --config=configs/seed003_ablation.py "
                        "--root=ROOT --data_dir=DIR"),))


def seed003_table2() -> Table:
  from configs import seed003_table2 as cfg  # pylint: disable=g-import-not-at-top
  rows = tuple((cfg.LABELS[name], {"optimizer.name": name}) for name in cfg.OPTIMIZERS)
  columns = tuple((f"η = {lr:g}", {"optimizer.learning_rate": lr}) for lr in cfg.LEARNING_RATES)
  seed = {(cfg.LABELS[name], f"η = {lr:g}"): cfg.SEED_TABLE2[name][i]
          for name in cfg.OPTIMIZERS for i, lr in enumerate(cfg.LEARNING_RATES)}
  return Table("seed003_table2", "Seed 003 Table 2: ResNet-56, CIFAR-10, optimizers × learning "
               "rate — test accuracy (%)", "", rows, columns, seed,
               configs=(("python -m experiments.run --config=configs/seed003_table2.py "
                        "--root=ROOT --data_dir=DIR"),))


def seed003_table3() -> Table:
  from configs import seed003_table3 as cfg  # pylint: disable=g-import-not-at-top
  rows = tuple((f"{lr:g}", {"optimizer.learning_rate": lr}) for lr in cfg.LEARNING_RATES)
  columns = tuple((f"{wd:g}", {"optimizer.weight_decay": wd}) for wd in cfg.WEIGHT_DECAYS)
  seed = {(f"{lr:g}", f"{wd:g}"): cfg.SEED_TABLE3[lr][j]
          for lr in cfg.LEARNING_RATES for j, wd in enumerate(cfg.WEIGHT_DECAYS)}
  return Table("seed003_table3", "Seed 003 Table 3: hybrid optimizer, ResNet-34, CIFAR-10, "
               "learning rate η (rows) × weight decay λ (columns) — test accuracy (%)",
               "η \\ λ", rows, columns, seed,
               configs=(("python -m experiments.run --config=configs/seed003_table3.py "
                        "--root=ROOT --data_dir=DIR"),))


TABLES: dict[str, Callable[[], Table]] = {
    "seed000_table1": seed000_table1,
    "seed001_noise": seed001,
    "seed001_smoothout": lambda: seed001("smoothout"),
    "seed002_table1": seed002_table1,
    "seed003_table1": seed003_table1,
    "seed003_table2": seed003_table2,
    "seed003_table3": seed003_table3,
}

# Config file (stem, argument prefix) → table name.
_CONFIG_TABLES = {
    "seed000_swap": "seed000_table1",
    "seed001_noise": "seed001_noise",
    "seed002_sgd": "seed002_table1",
    "seed002_adam": "seed002_table1",
    "seed002_kfac": "seed002_table1",
    "seed003_ablation": "seed003_table1",
    "seed003_table2": "seed003_table2",
    "seed003_table3": "seed003_table3",
}


def for_config(spec: str) -> str | None:
  """The table a config file (``configs/X.py[:arg]``) fills, or None."""
  import os  # pylint: disable=g-import-not-at-top
  path, _, arg = spec.partition(":")
  stem = os.path.splitext(os.path.basename(path))[0]
  name = _CONFIG_TABLES.get(stem)
  if name == "seed001_noise" and "method=smoothout" in arg:
    return "seed001_smoothout"
  return name
