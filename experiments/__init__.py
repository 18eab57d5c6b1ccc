"""Sweeps (`experiments.run`), result tables and plots (`experiments.report`), the digits study."""
