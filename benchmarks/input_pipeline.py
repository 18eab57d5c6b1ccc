r"""Input pipeline vs train step: can the seed-003 augmentation keep ResNet-18 fed?

Both sides run the real code, timed in one process in interleaved rounds (timing noise between
processes is ±20–40 % on the shared CPUs), medians reported:

* pipeline: what training does per step besides the model, in the same order — host batch
  assembly (`lbjax.data.pipeline.train_batch`: index stream, uint8 gather, per-device reshape),
  the copy to the devices (`pipeline.prefetch_to_device`, 2 batches ahead, as
  `lbjax.train.train_and_evaluate` runs it), and the on-device augmentation (`augment.apply` with
  ``--augment``, default seed 003's ``standard+trivialaugment+cutmix``, pmapped with the train
  step's per-example keys);
* train step: `lbjax.train.build`'s pmapped ResNet-18 step (which itself contains the same
  augmentation) on a batch already on the devices, state donated.

The last line is ``ratio: X`` = pipeline images/s / train-step images/s; the goal is X >= 5, so
the input side never starves the model.

Data: CIFAR-10 from ``--data_dir`` (TFDS) when given, else a CIFAR-shaped stand-in (50,000
random uint8 32x32x3 images, 10 labels): the pipeline's cost depends only on the shapes.

    python benchmarks/input_pipeline.py [--batch_size=128] [--augment=...] [--model=resnet18]
        [--rounds=3] [--pipeline_steps=20] [--train_steps=3] [--data_dir=DIR]
"""

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import flax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from configs import default  # pylint: disable=wrong-import-position
from lbjax import train  # pylint: disable=wrong-import-position
from lbjax.data import augment  # pylint: disable=wrong-import-position
from lbjax.data import datasets  # pylint: disable=wrong-import-position
from lbjax.data import pipeline  # pylint: disable=wrong-import-position


def cifar_shaped(num_train: int = 50_000, seed: int = 0) -> datasets.Dataset:
  """Random uint8 images with CIFAR-10's shapes; mean/std as `datasets.load` computes them."""
  rng = np.random.default_rng(seed)
  split = {"image": rng.integers(0, 256, (num_train, 32, 32, 3), dtype=np.uint8),
           "label": rng.integers(0, 10, num_train).astype(np.int32)}
  x = split["image"][:1000].astype(np.float32) / 255.
  return datasets.Dataset(train=split, test=split, validation=None, num_classes=10,
                          mean=x.mean((0, 1, 2)), std=x.std((0, 1, 2)))


def make_pipeline(exp, mode: str):
  """``run(first_step, steps) -> seconds``: assemble, prefetch and augment ``steps`` batches."""
  data, seed = exp.data, exp.config.seed

  def augment_fn(batch, step):
    keys = train.step_keys(seed, step, batch["position"])
    return augment.apply(batch, keys, mode=mode, num_classes=data.num_classes, mean=data.mean,
                         std=data.std, train=True)

  p_augment = jax.pmap(augment_fn, axis_name=train.AXIS, in_axes=(0, None))

  def run(first_step: int, steps: int) -> float:
    start = time.perf_counter()
    batches = (exp.train_batch(first_step + k) for k in range(steps))
    out = None
    for k, batch in enumerate(pipeline.prefetch_to_device(batches, 2)):
      out = p_augment(batch, first_step + k)
    jax.block_until_ready(out)
    return time.perf_counter() - start

  return run


def make_train(exp):
  """``run(steps) -> seconds``: ``steps`` donated train steps on one batch already on device."""
  p_step = jax.pmap(exp.train_step, axis_name=train.AXIS, donate_argnums=(0,))
  holder = {"state": flax.jax_utils.replicate(exp.init_state())}
  batch = next(pipeline.prefetch_to_device([exp.train_batch(0)], 1))

  def run(steps: int) -> float:
    state = holder["state"]
    jax.block_until_ready(state)
    start = time.perf_counter()
    for _ in range(steps):
      state, _ = p_step(state, batch)
    jax.block_until_ready(state)
    holder["state"] = state
    return time.perf_counter() - start

  return run


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch_size", type=int, default=128, help="global, all devices")
  parser.add_argument("--augment", default="standard+trivialaugment+cutmix")
  parser.add_argument("--model", default="resnet18")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--pipeline_steps", type=int, default=20, help="batches per round")
  parser.add_argument("--train_steps", type=int, default=3, help="train steps per round")
  parser.add_argument("--data_dir", default=None, help="TFDS cifar10; default: CIFAR-shaped")
  args = parser.parse_args(argv)

  config = default.get_config()
  config.dataset = "cifar10"
  config.data_dir = args.data_dir
  config.model.name = args.model
  config.batch_size = args.batch_size
  config.augment = args.augment
  data = None if args.data_dir else cifar_shaped()
  exp = train.build(config, data)
  pipeline_run = make_pipeline(exp, args.augment)
  train_run = make_train(exp)

  pipeline_run(0, 3)  # compile and warm up
  train_run(2)
  p_rates, t_rates = [], []
  step = 3
  for _ in range(args.rounds):
    p_rates.append(args.pipeline_steps * args.batch_size / pipeline_run(step, args.pipeline_steps))
    step += args.pipeline_steps
    t_rates.append(args.train_steps * args.batch_size / train_run(args.train_steps))
  p, t = statistics.median(p_rates), statistics.median(t_rates)
  print(f"device: {jax.local_device_count()} x {jax.devices()[0].device_kind} "
        f"({jax.default_backend()}); {'CIFAR-10' if args.data_dir else 'CIFAR-shaped data'}, "
        f"batch {args.batch_size}, augment {args.augment!r}, {args.rounds} rounds")
  print(f"pipeline (assemble + prefetch + augment): {p:,.0f} images/s  (rounds: "
        f"{', '.join(f'{r:,.0f}' for r in p_rates)})")
  print(f"train step ({args.model}, augmentation included): {t:,.0f} images/s  (rounds: "
        f"{', '.join(f'{r:,.0f}' for r in t_rates)})")
  print(f"ratio: {p / t:.2f}")


if __name__ == "__main__":
  main()
