"""Every typed placeholder of configs/default.py is settable on every config file and argument.

Issue 26 item 1: ml_collections' ``copy_and_resolve_references()`` turned placeholders into plain
``None`` fields (``configs/default.py``'s copies into ``swap.*``, ``configs/sweeps.py``'s
``apply_overrides``), which the launcher then refused. Here the launcher's own flag parsing
(`lbjax.main.define_flags` + `lbjax.main.parse_flags`: absl flags and ml_collections'
``config_flags``, no training) runs once per config file and argument with every placeholder key
set to a value of its type; each value must arrive with that type. A seed 003 config with
``--config.data_dir`` then reaches the CIFAR-10 loader in a real launcher process.
"""

import os
import subprocess
import sys

from absl import flags
import ml_collections
from ml_collections import config_dict
import pytest

from configs import batch_scaling
from configs import default
from configs import digits_study
from configs import quickstart
from configs import seed000_swap
from configs import seed001_noise
from configs import seed002_common
from configs import seed003_ablation
from configs import seed003_table2
from configs import seed003_table3
from lbjax import dotted
from lbjax import main
from tests import xla
from tests.test_configs import _config_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_SEED002 = [None, *(f"bs={b},data={d}" for b in seed002_common.BATCH_SIZES
                    for d in seed002_common.DATA_VARIANTS), "bs=1024,row=2048"]
# Config file -> the arguments it documents (None: no colon). Every file with get_config() must
# be listed, so a new config file fails here until its arguments are.
ARGUMENTS = {
    "configs/default.py": [None],
    "configs/quickstart.py": [None, *quickstart.OPTIMIZERS],
    "configs/digits_study.py": [None, *digits_study.RUNS],
    "configs/seed000_swap.py": [None, *(f"bs={b},opt={o}" for b in seed000_swap.BATCH_SIZES
                                        for o in seed000_swap.PHASE1_OPTIMIZERS)],
    "configs/seed001_noise.py": [None, *(f"method={m}" for m in seed001_noise.METHODS)],
    "configs/seed002_sgd.py": _SEED002,
    "configs/seed002_adam.py": _SEED002,
    "configs/seed002_kfac.py": _SEED002,
    "configs/seed003_ablation.py": [None, *(f"{s},nag={n}" for s in seed003_ablation.STAGES
                                            for n in seed003_ablation.NAG_READINGS)],
    "configs/seed003_table2.py": [None, *(f"{o},nag={n}" for o in seed003_table2.OPTIMIZERS
                                          for n in seed003_ablation.NAG_READINGS),
                                  "hybrid,eps=1e-16"],
    "configs/seed003_table3.py": [None, "eps=1e-16", *(
        f"lr={lr},wd={wd}" for lr in seed003_table3.LEARNING_RATES
        for wd in seed003_table3.WEIGHT_DECAYS)],
    "configs/seed003_augment_digits.py": [None],
    "configs/swap_digits.py": [None],
    "configs/batch_scaling.py": [None, *batch_scaling.LR_CENTER],
}
SPECS = [path + ("" if arg is None else f":{arg}") for path, args in ARGUMENTS.items()
         for arg in args]


def placeholders(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, type]:
  """Dotted key -> type of every typed placeholder (FieldReference) in ``config``."""
  out = {}
  for key, field in config.items(preserve_field_references=True):
    if isinstance(field, config_dict.FieldReference):
      out[prefix + key] = field.get_type()
    elif isinstance(field, ml_collections.ConfigDict):
      out.update(placeholders(field, f"{prefix}{key}."))
  return out


KEYS = placeholders(default.get_config())
_EXAMPLES = {int: (32, 48), float: (0.75, 0.5), str: ("/some/dir", "/other/dir"),
             bool: (True, False)}


def _value(kind: type, current):
  """A value of ``kind`` other than ``current``, and its command-line spelling."""
  value = next(v for v in _EXAMPLES[kind] if v != current)
  return value, str(value)


def parse(monkeypatch, spec: str, *overrides: str) -> ml_collections.ConfigDict:
  """The config the launcher parses from ``--config=spec`` and ``overrides``."""
  argv = ["lbjax", f"--config={spec}", "--workdir=/unused", *overrides]
  monkeypatch.setattr(sys, "argv", argv)  # ml_collections reads the overrides from sys.argv
  fv = flags.FlagValues()
  main.define_flags(fv)
  main.parse_flags(argv, fv)
  return fv.config


def test_every_config_file_and_argument_is_walked():
  assert sorted(ARGUMENTS) == _config_files()


def test_the_walk_covers_the_issues_keys_and_every_copied_block():
  # The keys issue 26 found refused, and the swap blocks' copies of the top-level blocks.
  for key in ("data_dir", "image_size", "micro_batch_size", "model.ghost_batch_size",
              "swap.schedule.base_batch_size", "swap.schedule.weight_decay_off_fraction",
              "swap.micro_batch_size", "swap.phase1_stop_accuracy"):
    assert key in KEYS, key
  for block in ("optimizer", "schedule"):
    mine = {k: t for k, t in KEYS.items() if k.startswith(block + ".")}
    assert mine
    assert {f"swap.{k}": t for k, t in mine.items()}.items() <= KEYS.items(), block
  assert KEYS["swap.schedule.base_batch_size"] is int and KEYS["data_dir"] is str


@pytest.mark.parametrize("spec", SPECS)
def test_every_placeholder_key_is_settable_from_the_command_line(monkeypatch, spec):
  file_config = parse(monkeypatch, spec)
  values, argv = {}, []
  for key, kind in KEYS.items():
    values[key], text = _value(kind, dotted.get(file_config, key))
    argv.append(f"--config.{key}={text}")
  try:
    config = parse(monkeypatch, spec, *argv)
  except SystemExit:  # one launcher error at a time: find every refused key
    refused = []
    for flag in argv:
      try:
        parse(monkeypatch, spec, flag)
      except SystemExit as e:
        refused.append(str(e))
    pytest.fail(f"{spec}: refused\n" + "\n".join(refused))
  for key, value in values.items():
    got = dotted.get(config, key)
    assert got == value and type(got) is KEYS[key], (spec, key, got)
    # ... and the key keeps its type in the parsed config, so another copy can set it again.
    node, last = dotted.parent(config, key)
    assert node.get_type(last) is KEYS[key], (spec, key)
  assert config.is_locked


def test_copies_keep_placeholders_typed_and_unshared():
  c = default.get_config()
  c.schedule.base_batch_size = 256
  copy = dotted.copy(c)
  assert copy.schedule.base_batch_size == 256 and copy.swap.schedule.base_batch_size is None
  copy.swap.schedule.base_batch_size = 64  # a value of the placeholder's type is accepted ...
  copy.schedule.base_batch_size = None     # ... and None again
  assert c.swap.schedule.base_batch_size is None and c.schedule.base_batch_size == 256
  with pytest.raises(TypeError):
    copy.swap.schedule.base_batch_size = "many"
  c.lock()
  assert dotted.copy(c).is_locked
  # A block replaced by a plain dict (a sweep's override) keeps the old block's placeholder types.
  block = dotted.block_like({"name": "adam", "b1": None, "learning_rate": 1}, c.optimizer)
  assert block.get_type("b1") is float and block.learning_rate == 1.0
  block.b1 = 0.8
  assert block.b1 == 0.8


def test_seed003_command_with_data_dir_reaches_the_cifar10_loader(tmp_path):
  """The README's CIFAR-10 flag on a seed 003 config: parsed, then the one-line data error."""
  env = xla.process_env(1)
  workdir = tmp_path / "run"
  run = subprocess.run(
      [sys.executable, "-m", "lbjax.main", "--config=configs/seed003_table2.py:hybrid",
       f"--workdir={workdir}", "--config.data_dir=/some/dir"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
  assert run.returncode == 1, run.stderr[-3000:]
  lines = run.stderr.strip().splitlines()
  assert len(lines) == 1, run.stderr[-3000:]
  assert lines[0].startswith("lbjax: error: config.data_dir: CIFAR-10 needs a TFDS data_dir, "
                             "and no prepared TFDS cifar10 in '/some/dir'"), lines[0]
  assert not workdir.exists()
