"""Sweeps (`experiments.run`), result tables and plots (`experiments.report`), the digits study,
and seed 002's Table 1 from TPE studies (`experiments.hpo_report`)."""
