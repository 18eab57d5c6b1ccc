r"""Distributed TPE hyperparameter search with Optuna (seed 002 §4, Table 1).

Seed 002 tunes momentum SGD, Adam and K-FAC for each batch size with the Tree-structured Parzen
Estimator (Bergstra et al. 2011): of the trials ``H`` so far, the best fraction ``γ`` gives a
density ``l(x)`` and the rest ``g(x)``, and the next point minimises ``g(x) / l(x)``. Workers on two
supercomputers pulled trials from one MongoDB (HyperOpt). Here Optuna plays both roles: its
``TPESampler`` proposes, an RDB storage (SQLite or PostgreSQL) holds the study, and every worker
process runs

    python -m lbjax.hpo --config=configs/seed002_sgd.py:bs=512 --study=sgd_512 \
        --storage=postgresql://user@dbhost/hpo --trials=100 [--workdir=runs/hpo]

while ``python -m lbjax.hpo report --study=sgd_512,adam_512 --storage=URL [--out=DIR]`` writes the
best trial per optimizer and batch size as a table shaped like Table 1 (`lbjax.hpo.report`).

One module per job:

* `lbjax.hpo.space`: the search space (``config.search_space``) and settings (``config.hpo``,
  ``HPO_DEFAULTS``), checks and ``trial_config``; plain data, no Optuna (configs use it);
* `lbjax.hpo.storage`: the database URL (passwords masked), the budget lock, connection checks
  and the storage that reconnects after a database restart;
* `lbjax.hpo.worker`: the objective (a trial is `lbjax.runners.run` of the suggested config) and
  the worker loop (``run_worker``);
* `lbjax.hpo.report`: seed 002's Table 1 and Optuna's plots from the studies in a storage;
* `lbjax.hpo.__main__`: the launcher's flags and output.

This package imports none of them, so ``from lbjax.hpo import space`` stays free of Optuna.
"""
