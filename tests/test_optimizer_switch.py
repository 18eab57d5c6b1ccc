"""`--config.optimizer.name=X` / `--config.swap.optimizer.name=X` for every registered optimizer.

Changing a block's optimizer on the command line gives X's defaults, the file's learning rate and
only the keys set for that block on the same command line (`registry.switch_block`); a key X does
not take is refused with the one-line error. Checked at the flag-parsing level for every optimizer
and both blocks, through the sweeps' `apply_overrides` and the HPO CLI, and by one launcher run.
"""

import json
import os
import subprocess
import sys

from absl import flags
import pytest

from configs import sweeps
from lbjax import main
from lbjax import runners
from lbjax.errors import ConfigError
from lbjax.optim import registry
from tests import xla
from tests.hang import HANG_SECONDS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = sorted(registry.OPTIMIZERS)


def parse(monkeypatch, *args, config="configs/quickstart.py"):
  """The launcher's config after flag parsing and `main.switch_optimizers` (no training)."""
  argv = ["lbjax.main", f"--config={config}", "--workdir=/nonexistent", *args]
  monkeypatch.setattr(sys, "argv", argv)  # ml_collections reads the overrides from sys.argv
  fv = flags.FlagValues()
  main.define_flags(fv)
  main.parse_flags(argv, fv)
  main.switch_optimizers(fv)
  return fv.config


def file_block(path, config="configs/quickstart.py"):
  """The block as the config file makes it (no overrides)."""
  with pytest.MonkeyPatch.context() as mp:
    block = parse(mp, config=config)
  for part in path.split("."):
    block = block[part]
  return block


def as_dict(block):
  return {k: block[k] for k in block}


@pytest.mark.parametrize("name", NAMES)
def test_optimizer_name_from_the_command_line(monkeypatch, name):
  before = file_block("optimizer")
  config = parse(monkeypatch, f"--config.optimizer.name={name}",
                 "--config.optimizer.weight_decay", "0.003")
  if name == before.name:  # the file's own optimizer: its block is kept
    expected = {**as_dict(before), "weight_decay": 0.003}
  else:
    expected = as_dict(registry.config_block(name, learning_rate=before.learning_rate,
                                             weight_decay=0.003))
    assert registry.set_values(config.optimizer) == {"learning_rate": before.learning_rate,
                                                     "weight_decay": 0.003}
  assert as_dict(config.optimizer) == expected
  assert config.optimizer.name == name
  assert as_dict(config.swap.optimizer) == as_dict(file_block("swap.optimizer"))
  assert config.is_locked and config.optimizer.is_locked
  runners.validate(config, device_count=4)


@pytest.mark.parametrize("name", NAMES)
def test_swap_optimizer_name_from_the_command_line(monkeypatch, name):
  config_file = "configs/swap_digits.py"
  before = file_block("swap.optimizer", config=config_file)
  # The explicit key before the name, the name in the `--flag value` spelling.
  config = parse(monkeypatch, "--config.swap.optimizer.learning_rate=0.007",
                 "--config.swap.optimizer.weight_decay=0.002",
                 "--config.swap.optimizer.name", name, config=config_file)
  if name == before.name:
    expected = {**as_dict(before), "learning_rate": 0.007, "weight_decay": 0.002}
  else:
    expected = as_dict(registry.config_block(name, learning_rate=0.007, weight_decay=0.002))
    assert registry.set_values(config.swap.optimizer) == {"learning_rate": 0.007,
                                                          "weight_decay": 0.002}
  assert as_dict(config.swap.optimizer) == expected
  assert as_dict(config.optimizer) == as_dict(file_block("optimizer", config=config_file))
  runners.validate(config, device_count=4)


def test_a_key_the_new_optimizer_does_not_take_is_refused(monkeypatch):
  for args, key in [
      (["--config.optimizer.name=hybrid", "--config.optimizer.momentum=0.5"],
       "config.optimizer.momentum"),
      (["--config.swap.enabled=True", "--config.swap.optimizer.nesterov=True",
        "--config.swap.optimizer.name=adam"], "config.swap.optimizer.nesterov"),
  ]:
    config = parse(monkeypatch, *args)
    with pytest.raises(ConfigError) as e:
      runners.validate(config, device_count=4)
    assert e.value.key == key
  with pytest.raises(ConfigError) as e:
    parse(monkeypatch, "--config.swap.optimizer.name=sgdd")
  assert e.value.key == "config.swap.optimizer.name"


def test_naming_the_files_own_optimizer_keeps_its_block(monkeypatch):
  config = parse(monkeypatch, "--config.optimizer.name=lars", config="configs/quickstart.py:lars")
  assert registry.set_values(config.optimizer) == {"learning_rate": 0.1, "momentum": 0.9,
                                                   "weight_decay": 5e-4, "trust_coefficient": 0.1}


def test_switch_block_keeps_the_rate_only_where_the_optimizer_takes_one():
  block = registry.config_block("sgd", learning_rate=0.05, momentum=0.9, nesterov=True)
  switched = registry.switch_block(block, "lamb", {"b1": 0.8, "name": "lamb"})
  assert registry.set_values(switched) == {"learning_rate": 0.05, "b1": 0.8}
  with pytest.raises(ConfigError) as e:
    registry.switch_block(block, "adam", {"no_such_key": 1.0}, key="config.swap.optimizer")
  assert e.value.key == "config.swap.optimizer.no_such_key"


def test_sweep_overrides_switch_a_block_as_the_command_line_does(monkeypatch):
  base = parse(monkeypatch, config="configs/swap_digits.py")
  c = sweeps.apply_overrides(base, {"swap.optimizer.name": "hybrid", "swap.optimizer.b2": 0.99})
  assert registry.set_values(c.swap.optimizer) == {"learning_rate": 0.02, "b2": 0.99}
  assert registry.set_values(c.optimizer) == registry.set_values(base.optimizer)
  runners.validate(c, device_count=4)
  c = sweeps.apply_overrides(base, {"optimizer.name": "adam", "optimizer.momentum": 0.5})
  with pytest.raises(ConfigError) as e:
    runners.validate(c, device_count=4)
  assert e.value.key == "config.optimizer.momentum"
  # A dict value is a whole block, as before.
  c = sweeps.apply_overrides(base, {"optimizer": {"name": "adam", "learning_rate": 1e-3}})
  assert registry.set_values(c.optimizer) == {"learning_rate": 1e-3}


def _subprocess(args, devices=4):
  env = xla.process_env(devices)
  return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=HANG_SECONDS, check=False)


_HPO_SCRIPT = """
import json, sys
from lbjax.hpo import __main__ as cli, space
from lbjax.optim import registry
cli.FLAGS(sys.argv)
cli.switch_optimizers()
config = cli.FLAGS.config
trial = space.trial_config(config, space.corner(config))
registry.validate_config(trial)
print(json.dumps(registry.set_values(config.optimizer)))
"""


def test_hpo_cli_switches_the_block():
  # seed002_sgd's block sets lr_in_buffer (SGD only); NAG takes every key of its search space.
  run = _subprocess(["-c", _HPO_SCRIPT, "--config=configs/seed002_sgd.py:bs=512",
                     "--config.optimizer.name=nag"])
  assert run.returncode == 0, run.stderr[-2000:]
  values = json.loads(run.stdout.strip().splitlines()[-1])
  assert values == {"learning_rate": 1.22424e-2}


def test_launcher_trains_hybrid_swap_replicas_and_refuses_in_one_line(tmp_path):
  common = ["-m", "lbjax.main", "--config=configs/quickstart.py", "--config.progress_bar=False",
            "--config.swap.enabled=True", "--config.num_epochs=1",
            "--config.schedule.warmup_epochs=0", "--config.swap.num_replicas=2",
            "--config.swap.num_epochs=1", "--config.swap.optimizer.name=hybrid",
            "--config.eval_every_epochs=1", "--config.checkpoint_every_steps=1000"]
  refused = _subprocess([*common, f"--workdir={tmp_path / 'refused'}",
                         "--config.swap.optimizer.momentum=0.5"])
  assert refused.returncode == 1
  assert refused.stderr.strip().splitlines()[-1].startswith(
      "lbjax: error: config.swap.optimizer.momentum: not a hyperparameter of optimizer 'hybrid'")
  assert "Traceback" not in refused.stderr
  assert not os.path.exists(tmp_path / "refused" / "config.json")
  run = _subprocess([*common, f"--workdir={tmp_path / 'run'}",
                     "--config.swap.optimizer.learning_rate=0.01"], devices=1)
  assert run.returncode == 0, run.stderr[-3000:]
  with open(tmp_path / "run" / "config.json") as f:
    saved = json.load(f)
  assert saved["swap"]["optimizer"]["name"] == "hybrid"
  assert saved["swap"]["optimizer"]["momentum"] is None
  assert saved["swap"]["optimizer"]["learning_rate"] == 0.01
  lines = run.stdout.strip().splitlines()
  assert lines[-1].startswith("final test accuracy: ")
  phase1 = next(float(line.split(": ")[1]) for line in lines
                if line.startswith("large-batch (phase 1) test accuracy: "))
  # One epoch of hybrid replicas improves on one epoch of phase 1 (10 classes: chance is 0.1).
  assert float(lines[-1].split(": ")[1].split()[0]) > phase1 + 0.05
