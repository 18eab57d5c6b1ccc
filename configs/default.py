"""Base config every lbjax config starts from.

Durations are in epochs (fractions allowed); `lbjax.config_lib` converts them to optimizer steps
of the global batch once. Variants call `get_config()` and change a few fields.
"""

import ml_collections
from ml_collections import config_dict

from lbjax import dotted
from lbjax.optim import registry


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  # Data (lbjax/data).
  c.dataset = "digits"          # digits | cifar10
  c.data_dir = config_dict.placeholder(str)  # TFDS data_dir (cifar10)
  c.image_size = config_dict.placeholder(int)  # resize at load time
  c.validation_fraction = 0.0   # carve a validation split out of train (HPO objective)
  c.augment = "standard"        # '+'-joined tokens: none, normalize, crop, flip, standard, ...

  # Model (lbjax/models): every field but `name` is passed to the model.
  c.model = ml_collections.ConfigDict()
  c.model.name = "lenet5"
  c.model.ghost_batch_size = config_dict.placeholder(int)  # Ghost BN virtual batch (per device)
  # Computation dtype: float32 | bfloat16 (params, BN statistics, loss, optimizer state stay
  # float32). float16 is refused: it needs loss scaling, which lbjax does not have.
  c.model.dtype = "float32"

  # Batch and length.
  c.batch_size = 128            # global batch over all devices and hosts
  # Gradient accumulation (lbjax/accumulate.py): examples per forward/backward pass per device;
  # their mean gradient makes one update of the whole batch. None: the whole per-device batch.
  c.micro_batch_size = config_dict.placeholder(int)
  c.accumulation = "auto"       # auto | scan | host: how micro-batches run (auto: host on CPU)
  c.eval_batch_size = 512
  c.num_epochs = 10.0

  # Optimizer (lbjax/optim/registry.py): every field but `name` is a keyword of the factory.
  # Holds a placeholder for every registered optimizer's hyperparameters; None = its default.
  # `mask`: kernels (default: biases and BatchNorm get no weight decay / layer-wise rate) | all;
  # `fisher` (kfac): empirical | sampled, read by the statistics capture; `factor_update_period`
  # (kfac): statistics captured every τ steps only (1: every step), read by the capture and the
  # factory (lbjax/optim/kfac.py; `inverse_update_period` counts steps too, a multiple of τ).
  # The readings the seeds leave open (sgd.lr_in_buffer, nag.damped, ...) are in WORKSPACE.md.
  # `--config.optimizer.name=X` on the command line (as `--config.swap.optimizer.name=X`) makes the
  # block X's: every hyperparameter at X's default except the learning rate, kept from the file
  # (another optimizer usually wants another rate: set `--config.optimizer.learning_rate` too;
  # the launcher prints a note when it is kept), plus the keys set for the block on the same
  # command line, refused if X does not take them (registry.switch_block). Naming the file's own
  # optimizer keeps the block.
  c.optimizer = registry.config_block("sgd", learning_rate=0.1, momentum=0.9, nesterov=False,
                                      weight_decay=5e-4)

  # Learning-rate schedule (lbjax/schedules.py), multiplies optimizer.learning_rate.
  c.schedule = ml_collections.ConfigDict()
  c.schedule.name = "constant"  # constant | cosine | step | multistep
  c.schedule.warmup_epochs = 0.0
  # Linear scaling rule: lr = learning_rate * batch_size / base_batch_size (None: off).
  c.schedule.base_batch_size = config_dict.placeholder(int)
  c.schedule.lr_decay = 0.1          # step: multiply by this ...
  c.schedule.lr_decay_epoch = 30.0   # ... every this many epochs (seed 002)
  c.schedule.milestones = ()         # multistep: epochs at which lr is multiplied by lr_decay
  # Weight decay switched off after this fraction of training (seed 003: 0.75; None: never).
  c.schedule.weight_decay_off_fraction = config_dict.placeholder(float)

  # Uniform noise added to every update (lbjax/optim/noise.py, seed 001 eq. (1)).
  c.noise = ml_collections.ConfigDict()
  c.noise.scale = 0.0            # s of δ ~ U(-s, s); 0: off
  c.noise.annealing = "none"     # none | exponential | linear | cosine, over the whole run
  c.noise.final_ratio = 0.0      # s at the end / s at the start (exponential needs > 0)

  # SmoothOut (lbjax/optim/smoothout.py): gradient at θ + δ, δ ~ U(-s, s), update applied to θ.
  c.smoothout = ml_collections.ConfigDict()
  c.smoothout.scale = 0.0        # 0: off
  c.smoothout.adaptive = False   # δ of each tensor scaled by the tensor's RMS
  c.smoothout.annealing = "none"  # as noise.annealing
  c.smoothout.final_ratio = 0.0

  # Stochastic weight averaging (lbjax/swa.py, seed 000 eq. (1)): W_swa <- (W_swa·n + W)/(n + 1)
  # every `period` steps from `start_epoch`; the final W_swa is evaluated with BatchNorm
  # recomputed on the training data. Under SWAP it applies to phase 2 (each replica's own average).
  c.swa = ml_collections.ConfigDict()
  c.swa.enabled = False
  c.swa.start_epoch = 0.0        # epochs (of phase 2 under SWAP)
  c.swa.period = 1               # optimizer steps between averaged weights

  # SWAP (lbjax/swap.py, seed 000 §3.1): phase 1 is the run above (large batch); phase 2 trains
  # `num_replicas` small-batch replicas from its weights, each the normal run of
  # swap.phase2_config(config, k) (these keys, seed config.seed + 1 + k); phase 3 averages them,
  # recomputes BatchNorm and evaluates.
  c.swap = ml_collections.ConfigDict()
  c.swap.enabled = False
  c.swap.phase1_stop_accuracy = config_dict.placeholder(float)  # end phase 1 at this train acc.
  c.swap.num_replicas = 4        # a multiple or a divisor of the device count
  c.swap.execution = "auto"      # auto | vmap | loop: replicas as one vmapped step or one by one
  c.swap.batch_size = 128        # per replica
  c.swap.micro_batch_size = config_dict.placeholder(int)  # phase 2's (config.micro_batch_size)
  c.swap.num_epochs = 5.0        # phase 2, passes of each replica over the training data
  # Copies that keep the typed placeholders (`lbjax.dotted.copy`), so that e.g.
  # --config.swap.schedule.base_batch_size=32 can be set as --config.schedule.base_batch_size.
  c.swap.optimizer = dotted.copy(c.optimizer)  # phase 2 (seed 000: SGD)
  c.swap.schedule = dotted.copy(c.schedule)    # phase 2, its own epochs
  c.swap.noise = dotted.copy(c.noise)          # phase 2's update noise (off)
  c.swap.smoothout = dotted.copy(c.smoothout)  # phase 2's SmoothOut (off)

  # Logging, evaluation, checkpoints.
  c.log_every_steps = 20
  # Gradient noise scale B_simple (McCandlish et al. 2018 App. A.1, lbjax/noise_scale.py): the
  # step records train_grad_sq_small (per-device batch, or micro-batch) and train_grad_sq_big
  # (global batch), the loop their B_simple as train_noise_scale. Costs metrics only, except on
  # ONE device without micro-batches: there the batch is split into two halves, so with
  # BatchNorm each half is normalised with its own statistics (Ghost BN of batch/2). Not
  # resumable: a rerun must keep it as it was.
  c.log_noise_scale = False
  # Per-logging-window decay of the moving averages of |G|² and tr(Σ) behind train_noise_scale
  # (in [0, 1); 0: each window alone). Resumable: a rerun replays metrics.jsonl with it.
  c.noise_scale_decay = 0.9
  # Per-layer trust ratios (lbjax.optim.trust_ratios): the layer-wise factor each update applied
  # to each tensor, LARS's λ_l (seed 000 Alg. 1) or LAMB's ‖w‖/‖r‖, logged as
  # train_trust_ratio/<parameter path> (window means) to metrics.jsonl and TensorBoard, plotted by
  # experiments/report.py. Needs an optimizer with trust ratios (lars, lamb); under SWAP, phase 2
  # logs them only if config.swap.optimizer has them too. Costs metrics only; resumable.
  c.log_trust_ratios = False
  c.eval_every_epochs = 1.0
  c.checkpoint_every_steps = 200
  c.keep_checkpoints = 3
  # With several processes: seconds a checkpoint save may take to finish on every process
  # (orbax's barrier); past it every process ends with exit 4 as on a storage error (a process
  # whose storage failed never reaches the barrier). Orbax's default. Resumable.
  c.checkpoint_timeout_secs = 1200
  c.progress_bar = True
  # "A:B": a jax.profiler trace of steps A..B (1-based) under WORKDIR/profile, for TensorBoard's
  # profile plugin or Perfetto (ui.perfetto.dev). None: no trace. Resumable.
  c.profile_steps = config_dict.placeholder(str)
  return c
