r"""lbjax's whole train step against a minimal hand-written data-parallel step (issue 22 item 6).

Both sides train the same flax model with the same loss and the same optax transformation on
the same global batch, already on the devices, state donated:

* lbjax: ``Experiment.train_program(mesh)`` of ``lbjax.step.build(config)``, what
  ``train_and_evaluate`` runs: ``jit(shard_map(train_step))`` over the ``("batch",)`` mesh, the
  `TrainState` replicated, the batch sharded over ``"batch"``, ``lax.pmean`` of gradients and
  loss, and the step's metrics (loss, accuracy, learning rate, gradient/parameter/update norms,
  update ratio, finiteness);
* hand-written: big_vision's ``update_fn`` (``big_vision/train.py``) cut to its core, ``jax.jit``
  of ``value_and_grad`` + ``tx.update`` + ``optax.apply_updates`` with ``donate_argnums=(0,)``,
  the parameters and optimizer state replicated (``NamedSharding(mesh, P())``, also as
  ``out_shardings``), the batch ``NamedSharding(mesh, P("batch"))``; XLA partitions it and
  inserts the gradient all-reduce itself. It returns the loss only.

Config: ``configs/quickstart.py`` (LeNet-5 on digits at 32x32, batch 128, SGD with momentum 0.9
and weight decay, cosine schedule with warmup) with ``config.augment = "normalize"``: lbjax's
step then does no random augmentation, only ``uint8 / 255``, ``(x - mean) / std`` and the
one-hot targets, which the hand-written step does too. Its per-example keys
(``lbjax.step.step_keys``) feed no random op then, and XLA removes them (the ``--profile`` run
prints whether the compiled step still has random-bit ops).

Both are timed on a mesh of the first device and on a mesh of 4 simulated CPU devices
(``--xla_force_host_platform_device_count=4``, set below before JAX starts), each device count
in its own interleaved rounds (``benchmarks/common.py``); ratio = lbjax / hand-written step
time, median over rounds of the per-round ratio (wall time; the CPU-time ratio beside it is less
sensitive to the other jobs on a shared machine). The table also counts the compiled step's
``all-reduce`` ops. After timing, both sides take two steps from the same fresh state and the
largest difference of their parameters is printed (the two compute the same update, up to
float32 rounding, or one of them is wrong).

``--profile`` adds hand-written variants that each add one thing lbjax's step does, so the
table says what costs what:

* ``+ metrics``: lbjax's metrics (accuracy, learning rate, three norms, update ratio, finite);
* ``+ train state``: lbjax's state fields (``step + 1``, ``seed`` carried, the model applied with
  ``mutable=["batch_stats"]``);
* ``shard_map``: the step written per device, launched as lbjax launches it
  (`lbjax.mesh.data_parallel`), the replicated parameters cast to device-varying
  (``lax.pcast(..., to="varying")``) before ``value_and_grad`` so that the one ``lax.pmean``
  averages the per-device gradients;
* ``shard_map, grad of replicated params``: the same without the cast, as lbjax's step is
  written: under ``shard_map``'s ``check_vma`` the gradient of a replicated input is already
  summed over the devices in the backward pass (one all-reduce per parameter tensor), and the
  ``pmean`` after it leaves that sum;
* ``all three``: metrics, train state and ``shard_map`` (with the cast).

Last line: ``ratio: X`` = the larger of the two ratios (1 and 4 devices); the issue's goal is
X <= 1.05.

    python benchmarks/step_overhead.py [--batch_size=128] [--rounds=10] [--steps=5] [--profile]
"""

import os

DEVICES = 4
# XLA reads its flags when the backend starts (the first device query): before JAX is imported.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + f" --xla_force_host_platform_device_count={DEVICES}").strip()

import re  # pylint: disable=g-bad-import-order,wrong-import-position

import common  # pylint: disable=g-bad-import-order,wrong-import-position
import jax  # pylint: disable=wrong-import-position
from jax import lax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
from jax.sharding import NamedSharding  # pylint: disable=wrong-import-position
from jax.sharding import PartitionSpec as P  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
import optax  # pylint: disable=wrong-import-position

from configs import quickstart  # pylint: disable=wrong-import-position
from lbjax import mesh as mesh_lib  # pylint: disable=wrong-import-position
from lbjax import step as step_lib  # pylint: disable=wrong-import-position

REFERENCE = "hand-written"
LBJAX = "lbjax train_program"
# --profile: name -> the hand-written step's options (`hand_written_step`).
VARIANTS = {
    "+ metrics": {"metrics": True},
    "+ train state": {"train_state": True},
    "shard_map": {"per_device": True},
    "shard_map, grad of replicated params": {"per_device": True, "vary_params": False},
    "all three": {"metrics": True, "train_state": True, "per_device": True},
}
HEADER = ("case", "step ms (median)", "min–max ms", "CPU ms / step", "images/s", "XLA MiB",
          "all-reduce ops", "compile s", "ratio (paired median)", "CPU-time ratio")


def make_config(batch_size: int):
  """The quickstart (LeNet-5, digits 32x32, SGD) with normalisation as the only augmentation."""
  c = quickstart.get_config()
  c.augment = "normalize"
  c.batch_size = batch_size
  c.progress_bar = False
  return c


def hand_written_step(exp: step_lib.Experiment, mesh: jax.sharding.Mesh, *,
                      metrics: bool = False, train_state: bool = False,
                      per_device: bool = False, vary_params: bool = True):
  """big_vision's ``update_fn`` for ``exp``'s model, loss and ``tx`` on ``mesh``.

  ``state`` is ``{"params", "opt"}`` (``train_state``: also ``"step"`` and ``"seed"``) replicated
  over ``mesh``; ``batch`` is ``{"image" uint8, "label"}`` sharded over ``"batch"``. The options
  add one piece of lbjax's step each (module doc); with none it is the minimal step.
  ``vary_params`` (with ``per_device``): cast the parameters to device-varying before taking
  the gradient (module doc).
  """
  model, tx, num_classes = exp.model, exp.tx, exp.data.num_classes
  mean = jnp.asarray(exp.data.mean, jnp.float32)
  std = jnp.asarray(exp.data.std, jnp.float32)

  def update_fn(state, batch):
    images = (batch["image"].astype(jnp.float32) / 255.0 - mean) / std
    targets = jax.nn.one_hot(batch["label"], num_classes, dtype=jnp.float32)

    def loss_fn(params):
      if train_state:  # lbjax applies the model with its (here empty) BatchNorm statistics
        logits, _ = model.apply({"params": params, "batch_stats": {}}, images, train=True,
                                mutable=["batch_stats"])
      else:
        logits = model.apply({"params": params}, images, train=True)
      return optax.softmax_cross_entropy(logits, targets).mean(), logits

    params = state["params"]
    grad_at = (lax.pcast(params, (step_lib.AXIS,), to="varying") if per_device and vary_params
               else params)
    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(grad_at)
    accuracy = step_lib.soft_accuracy(logits, targets) if metrics else None
    if per_device:
      loss, grads, accuracy = lax.pmean((loss, grads, accuracy), step_lib.AXIS)
    updates, opt = tx.update(grads, state["opt"], params)
    params = optax.apply_updates(params, updates)
    measurements = {"training_loss": loss}
    if metrics:  # lbjax.step.make_step_parts's metrics
      param_norm, update_norm = optax.tree.norm(params), optax.tree.norm(updates)
      # The step the schedule reads: lbjax's state.step, else optax's own count (the same value).
      step = state["step"] if train_state else optax.tree_utils.tree_get(state["opt"], "count")
      measurements.update(
          accuracy=accuracy, learning_rate=exp.learning_rate(step),
          grad_norm=optax.tree.norm(grads), param_norm=param_norm, update_norm=update_norm,
          update_ratio=update_norm / (param_norm + 1e-12),
          finite=jnp.isfinite(loss) & jnp.isfinite(param_norm))
    new_state = {"params": params, "opt": opt}
    if train_state:
      new_state.update(step=state["step"] + 1, seed=state["seed"])
    return new_state, measurements

  if per_device:
    return mesh_lib.data_parallel(update_fn, mesh, in_specs=(P(), P(step_lib.AXIS)),
                                  out_specs=P(), donate_argnums=(0,))
  replicated = NamedSharding(mesh, P())
  return jax.jit(update_fn, donate_argnums=(0,), out_shardings=(replicated, replicated))


def hand_written_state(state: step_lib.TrainState, mesh: jax.sharding.Mesh,
                       train_state: bool = False):
  """The hand-written step's state from lbjax's host ``state``, put on the devices as
  big_vision does (``jax.device_put`` with the replicated sharding)."""
  host = {"params": state.params, "opt": state.opt_state}
  if train_state:
    host.update(step=state.step, seed=state.seed)
  replicated = NamedSharding(mesh, P())
  return jax.tree.map(lambda x: jax.device_put(np.asarray(x), replicated), host)


def hand_written_case(name: str, exp: step_lib.Experiment, mesh: jax.sharding.Mesh, state,
                      batch, **options) -> common.Case:
  """The hand-written step as a `common.Case`, on the lbjax case's batch arrays."""
  return common.Case(name, hand_written_step(exp, mesh, **options),
                     hand_written_state(state, mesh, options.get("train_state", False)),
                     ({"image": batch["image"], "label": batch["label"]},),
                     examples=exp.config.batch_size,
                     state_mib=common.tree_mib((state.params, state.opt_state)))


def compiled_text(case: common.Case) -> str:
  """The optimised HLO of ``case``'s step (read from the cache: no second compile)."""
  return case.fn.lower(case.state, *case.args).compile().as_text()


def count_ops(text: str, opcode: str) -> int:
  return len(re.findall(rf"\s{re.escape(opcode)}\(", text))


def has_random_bits(text: str) -> bool:
  """Whether a compiled step still generates random bits (threefry / rng ops)."""
  text = text.lower()
  return "threefry" in text or "rng-bit-generator" in text


def label(n: int) -> str:
  return f"{n} device{'s' * (n > 1)}"


def cases_on(exp: step_lib.Experiment, devices, state, profile: bool) -> list[common.Case]:
  """[hand-written, lbjax, (variants)] on the mesh of ``devices``, from host ``state``, on the
  same batch arrays."""
  mesh = mesh_lib.data_mesh(devices)
  prefix = label(len(devices))
  lbjax_case = common.train_case(f"{prefix}: {LBJAX}", exp, devices, state)
  batch = lbjax_case.args[0]
  cases = [hand_written_case(f"{prefix}: {REFERENCE}", exp, mesh, state, batch), lbjax_case]
  if profile:
    cases += [hand_written_case(f"{prefix}: {REFERENCE} {name}", exp, mesh, state, batch,
                                **options) for name, options in VARIANTS.items()]
  return cases


def parameter_difference(exp: step_lib.Experiment, cases: list[common.Case], state,
                         steps: int = 2) -> float:
  """Largest |lbjax − hand-written| parameter after ``steps`` steps of both from host
  ``state`` on batch 0 (the first steps of the warmup schedule have learning rate 0: two steps
  move the weights). The compiled programs are reused."""
  hand, lbjax_case = cases[0], cases[1]
  mesh = mesh_lib.data_mesh(list(lbjax_case.args[0]["label"].sharding.mesh.devices.flat))
  ours, theirs = mesh_lib.put_replicated(state, mesh), hand_written_state(state, mesh)
  for _ in range(steps):
    ours = lbjax_case.fn(ours, *lbjax_case.args)[0]
    theirs = hand.fn(theirs, *hand.args)[0]
  ours, theirs = mesh_lib.to_host(ours.params), mesh_lib.to_host(theirs["params"])
  return max(float(np.max(np.abs(a - b)))
             for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)))


def rows(cases: list[common.Case], texts: list[str]) -> list[list]:
  reference = cases[0]
  return [[c.name, 1e3 * c.median, f"{1e3 * min(c.times):,.1f}–{1e3 * max(c.times):,.1f}",
           1e3 * float(np.median(c.cpu_times)), c.images_per_sec, c.xla_mib,
           count_ops(text, "all-reduce"), c.compile_s, common.paired_ratio(c, reference),
           common.paired_ratio(c, reference, cpu=True)]
          for c, text in zip(cases, texts)]


def main(argv=None):
  parser = common.model_parser(__doc__.split("\n")[0], model="lenet5", image_size=32,
                               batch_size=128, rounds=10, steps=5)
  parser.add_argument("--profile", action="store_true",
                      help="also time hand-written variants with one of lbjax's extras each")
  args = parser.parse_args(argv)
  config = make_config(args.batch_size)
  config.model.name, config.image_size = args.model, args.image_size
  exp = step_lib.build(config)
  state = jax.device_get(exp.init_state())
  devices = jax.devices()
  groups = {n: cases_on(exp, devices[:n], state, args.profile)
            for n in sorted({1, min(DEVICES, len(devices))})}
  for cases in groups.values():  # each device count in its own interleaved rounds
    common.interleave(cases, args.rounds, args.steps)
  texts = {n: [compiled_text(c) for c in cases] for n, cases in groups.items()}

  print(common.machine_line())
  print(f"{args.model} on digits {args.image_size}x{args.image_size}, global batch "
        f"{args.batch_size}, augment 'normalize', {config.optimizer.name} with the quickstart's "
        f"schedule; {args.rounds} interleaved rounds x {args.steps} steps per device count; "
        f"ratio = step time / {REFERENCE}'s (paired median)")
  common.print_table(HEADER, [row for n in groups for row in rows(groups[n], texts[n])])
  print(common.memory_line())
  print(f"lbjax's compiled step {'has' if has_random_bits(texts[1][1]) else 'has no'} "
        f"random-bit ops (augment {config.augment!r})")
  print("same update? largest |lbjax - hand-written| parameter after 2 steps from the same "
        "state: " + ", ".join(f"{label(n)} {parameter_difference(exp, cases, state):.2e}"
                              for n, cases in groups.items()))
  ratios = {n: common.paired_ratio(cases[1], cases[0]) for n, cases in groups.items()}
  cpu = {n: common.paired_ratio(cases[1], cases[0], cpu=True) for n, cases in groups.items()}
  print("lbjax / hand-written: " + ", ".join(
      f"{label(n)} {r:.3f} (CPU time {cpu[n]:.3f})" for n, r in ratios.items()))
  common.print_ratio(max(ratios.values()))


if __name__ == "__main__":
  main()
