r"""Plots the loss landscape between or around trained runs (seed 001 Fig. 3; Li et al. 2018).

Linear interpolation θ(α) = (1−α)θ_a + αθ_b between the latest checkpoints of two workdirs, α from
``--alpha_min`` to ``--alpha_max`` (default −1 … 2), BatchNorm recomputed at every α::

    python -m lbjax.analysis.interpolate --a=runs/sb --b=runs/lb --out=interpolation.png

A filter-normalised random direction around each given solution (one panel per workdir, the same
random draw, shared axes), to compare sharpness, e.g. with and without noise::

    python -m lbjax.analysis.interpolate --mode=random --a=runs/lb --b=runs/lb_noise \
        --out=sharpness.png

Besides the PNG it writes the numbers to ``OUT`` with suffix ``.json`` and prints one line per
point; in random mode also each solution's sharpness (the largest rise of the training loss within
``|t| <= --sharpness_radius``).
"""

import json
import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np

from lbjax.analysis import interpolation
from lbjax.analysis import runs
from lbjax.errors import ConfigError

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command-line flags (defined only when run as a program, so importing is free)."""
  flags.DEFINE_string("a", None, "Workdir of solution a (α = 0).")
  flags.DEFINE_string("b", None, "Workdir of solution b (α = 1); optional with --mode=random.")
  flags.DEFINE_string("out", "interpolation.png", "Output PNG; the numbers go to OUT.json.")
  flags.DEFINE_enum("mode", "linear", ["linear", "random"],
                    "linear: between a and b; random: a filter-normalised direction around each.")
  flags.DEFINE_float("alpha_min", -1.0, "First α (linear mode).")
  flags.DEFINE_float("alpha_max", 2.0, "Last α (linear mode).")
  flags.DEFINE_float("radius", 1.0, "t runs over [-radius, radius] (random mode).")
  flags.DEFINE_integer("num_points", 13, "Evenly spaced points (α = 0 and 1 are always included).")
  flags.DEFINE_integer("seed", 0, "Seed of the random direction.")
  flags.DEFINE_float("sharpness_radius", 0.5, "Radius of the sharpness measure (random mode).")
  flags.DEFINE_bool("recompute_batch_stats", True,
                    "Recompute BatchNorm statistics at every point (else interpolate them).")
  flags.DEFINE_integer("max_train_examples", None,
                       "Training loss on the first N training examples (default all).")
  flags.mark_flag_as_required("a")


def _data_key(config) -> tuple:
  """What `lbjax.data.datasets.load` depends on: runs with equal keys share the loaded data."""
  seed = config.seed if config.validation_fraction > 0 else None
  return (config.dataset, config.data_dir, config.image_size, config.validation_fraction, seed)


def _label(solution) -> str:
  c = solution.config
  status = solution.status or {}
  acc = status.get("test_accuracy")
  acc = f", test acc {acc:.3f}" if isinstance(acc, (int, float)) else ""
  return (f"{os.path.basename(os.path.normpath(solution.workdir))}: {c.model.name} "
          f"{c.optimizer.name} BS {c.batch_size}{acc}")


def run(a: str, b: str | None, out: str, *, mode: str = "linear", alpha_min: float = -1.0,
        alpha_max: float = 2.0, radius: float = 1.0, num_points: int = 13, seed: int = 0,
        sharpness_radius: float = 0.5, recompute_batch_stats: bool = True,
        max_train_examples: int | None = None) -> dict:
  """The CLI as a function; returns what it writes to ``OUT.json``."""
  sol_a = runs.restore(a)
  solutions = [sol_a]
  if b is not None:
    same_data = _data_key(runs.load_config(b)) == _data_key(sol_a.config)
    solutions.append(runs.restore(b, data=sol_a.exp.data if same_data else None))
  if mode == "linear" and len(solutions) != 2:
    raise ConfigError("--b", "linear interpolation needs two workdirs (--a and --b)")
  shapes = [jax.tree.map(np.shape, s.params) for s in solutions]
  if mode == "linear" and shapes[0] != shapes[1]:
    raise ConfigError("--b", f"{a} and {b} hold different models ({sol_a.config.model.name} vs "
                      f"{solutions[1].config.model.name}); interpolation needs the same shapes")
  evaluator = interpolation.Evaluator(sol_a.exp, recompute_batch_stats=recompute_batch_stats,
                                      max_train_examples=max_train_examples)
  log = lambda line: print(line, flush=True)
  result: dict = {"mode": mode, "workdirs": [s.workdir for s in solutions],
                  "steps": [s.step for s in solutions]}
  if mode == "linear":
    points = interpolation.alphas(alpha_min, alpha_max, num_points)
    curve = interpolation.linear_curve(evaluator, sol_a, solutions[1], points, log=log)
    curves, titles, key, xlabel = [curve], [f"a = {_label(sol_a)}\nb = {_label(solutions[1])}"], \
        "alpha", r"$\alpha$:  $(1-\alpha)\,\theta_a + \alpha\,\theta_b$"
    result["curves"] = [{k: v.tolist() for k, v in curve.items()}]
  else:
    points = np.union1d(np.linspace(-radius, radius, num_points), [0.0])
    curves, titles = [], []
    for s in solutions:
      evaluator_s = evaluator if s is sol_a else interpolation.Evaluator(
          s.exp, recompute_batch_stats=recompute_batch_stats,
          max_train_examples=max_train_examples)
      direction = interpolation.random_direction(s.params, seed)
      print(f"{s.workdir}: filter-normalised direction (seed {seed})", flush=True)
      curves.append(interpolation.direction_curve(evaluator_s, s, direction, points, log=log))
      sharp = interpolation.sharpness(curves[-1], sharpness_radius)
      print(f"{s.workdir}: sharpness (train-loss rise within |t| <= {sharpness_radius}): "
            f"{sharp:.4f}", flush=True)
      titles.append(f"{_label(s)}\nsharpness@{sharpness_radius} = {sharp:.3f}")
    key, xlabel = "t", "t:  θ + t·d  (d filter-normalised)"
    result["curves"] = [{k: v.tolist() for k, v in c.items()} for c in curves]
    result["sharpness"] = [interpolation.sharpness(c, sharpness_radius) for c in curves]
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  interpolation.plot(curves, titles, out, key=key, xlabel=xlabel)
  with open(os.path.splitext(out)[0] + ".json", "w") as f:
    json.dump(result, f, indent=1)
  print(f"wrote {out}", flush=True)
  return result


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)
  try:
    run(FLAGS.a, FLAGS.b, FLAGS.out, mode=FLAGS.mode, alpha_min=FLAGS.alpha_min,
        alpha_max=FLAGS.alpha_max, radius=FLAGS.radius, num_points=FLAGS.num_points,
        seed=FLAGS.seed, sharpness_radius=FLAGS.sharpness_radius,
        recompute_batch_stats=FLAGS.recompute_batch_stats,
        max_train_examples=FLAGS.max_train_examples)
  except ConfigError as e:
    sys.exit(f"lbjax: error: {e}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
