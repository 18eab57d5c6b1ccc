"""Sweeps (`experiments.run`), result tables and plots (`experiments.report`), the digits study.

Seed 002's Table 1 from TPE studies is `lbjax.hpo.report` (``python -m lbjax.hpo report``)."""
