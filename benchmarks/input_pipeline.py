r"""Input pipeline vs train step: can seed 003's augmentation keep ResNet-18 fed?

Both sides run the real code, interleaved in rounds in one process (`common.interleave`; timing
noise between processes is ±20–40 % on the shared CPUs), medians:

* pipeline: what training does per step besides the model, in the same order — host batch
  assembly (`lbjax.data.pipeline.train_batch`: index stream, uint8 gather, per-device reshape),
  the copy to the devices as one global array sharded over ``"batch"`` (`lbjax.mesh.put_batches`,
  2 batches ahead) and the on-device augmentation (`augment.apply` with ``--augment``, default
  seed 003's ``standard+trivialaugment+cutmix``, ``jit(shard_map)`` over the devices' mesh, with
  the train step's per-example keys);
* train step: `common.train_case`, the data-parallel ResNet-18 step as training runs it
  (``Experiment.train_program``, state donated; the step itself contains the same augmentation)
  on a batch already on the devices.

The last line is ``ratio: X`` = pipeline images/s / train-step images/s; the goal is X >= 5, so
the input side never starves the model.

Data: CIFAR-10 from ``--data_dir`` (TFDS) when given, else a CIFAR-shaped stand-in (50,000
random uint8 32x32x3 images, 10 labels): the pipeline's cost depends only on the shapes.

    python benchmarks/input_pipeline.py [--batch_size=128] [--augment=...] [--model=resnet18]
        [--image_size=32] [--rounds=3] [--steps=1] [--data_dir=DIR]

Measured (XLA:CPU, the 2 shared vCPUs at load average ~15, defaults): pipeline 105 images/s
(1.2 s per batch of 128), ResNet-18 step 1.14 images/s (112 s per step), ratio 92 (83 in another
run). No accelerator was available to measure the GPU ratio.
"""

import itertools

import common  # pylint: disable=g-bad-import-order  (puts the repository on sys.path)
import jax  # pylint: disable=wrong-import-order
import numpy as np  # pylint: disable=wrong-import-order

from configs import default  # pylint: disable=wrong-import-order
from lbjax import mesh as mesh_lib  # pylint: disable=wrong-import-order
from lbjax import step as step_lib  # pylint: disable=wrong-import-order
from lbjax.data import augment  # pylint: disable=wrong-import-order
from lbjax.data import datasets  # pylint: disable=wrong-import-order


def cifar_shaped(image_size: int = 32, num_train: int = 50_000, seed: int = 0
                 ) -> datasets.Dataset:
  """Random uint8 images with CIFAR-10's shapes; mean/std as `datasets.load` computes them."""
  rng = np.random.default_rng(seed)
  shape = (num_train, image_size, image_size, 3)
  split = {"image": rng.integers(0, 256, shape, dtype=np.uint8),
           "label": rng.integers(0, 10, num_train).astype(np.int32)}
  x = split["image"][:1000].astype(np.float32) / 255.
  return datasets.Dataset(train=split, test=split, validation=None, num_classes=10,
                          mean=x.mean((0, 1, 2)), std=x.std((0, 1, 2)))


def pipeline_case(exp: step_lib.Experiment) -> common.Case:
  """One call = the next global batch assembled, prefetched and augmented (``exp``'s mode), on
  all local devices (the mesh `common.train_case` uses)."""
  data, config = exp.data, exp.config
  mesh = mesh_lib.data_mesh(jax.local_devices())

  def augment_fn(batch, step):
    keys = step_lib.step_keys(config.seed, step, batch["position"])
    return augment.apply(batch, keys, mode=config.augment, num_classes=data.num_classes,
                         mean=data.mean, std=data.std, train=True)

  # The batch sharded over "batch", the step number replicated; images and targets stay sharded.
  augment_program = mesh_lib.data_parallel(augment_fn, mesh,
                                           in_specs=(mesh_lib.P(step_lib.AXIS), mesh_lib.P()),
                                           out_specs=mesh_lib.P(step_lib.AXIS))
  steps = itertools.count()
  batches = mesh_lib.put_batches(
      (exp.train_batch(k, mesh_lib.local_device_count(mesh)) for k in itertools.count()), mesh, 2)

  def one_batch(state):
    del state  # the "state" is the last output, which Case.run waits for
    return (augment_program(next(batches), np.int32(next(steps))),)

  return common.Case("pipeline (assemble + prefetch + augment)", one_batch, None, (),
                     examples=config.batch_size)


def main(argv=None):
  parser = common.model_parser(__doc__.split("\n")[0], model="resnet18", image_size=32,
                               batch_size=128, rounds=3, steps=1)
  parser.add_argument("--augment", default="standard+trivialaugment+cutmix")
  parser.add_argument("--data_dir", default=None, help="TFDS cifar10; default: CIFAR-shaped")
  args = parser.parse_args(argv)

  config = default.get_config()
  config.dataset = "cifar10"
  config.data_dir = args.data_dir
  config.image_size = args.image_size
  config.model.name = args.model
  config.batch_size = args.batch_size
  config.augment = args.augment
  exp = step_lib.build(config, None if args.data_dir else cifar_shaped(args.image_size))
  cases = [pipeline_case(exp), common.train_case(f"{args.model} train step", exp)]
  common.interleave(cases, args.rounds, args.steps)

  print(common.machine_line())
  print(f"{'CIFAR-10' if args.data_dir else 'CIFAR-shaped data'} {args.image_size}x"
        f"{args.image_size}, batch {args.batch_size}, "
        f"augment {args.augment!r}, {args.rounds} interleaved rounds x {args.steps} steps; "
        f"ratio = step time / pipeline time per batch")
  common.print_table(common.CASE_HEADER, common.case_rows(cases, cases[0]))
  print(common.memory_line())
  pipeline_rate, train_rate = (case.images_per_sec for case in cases)
  print(f"pipeline {pipeline_rate:,.1f} images/s, train step {train_rate:,.2f} images/s")
  common.print_ratio(pipeline_rate / train_rate)


if __name__ == "__main__":
  main()
