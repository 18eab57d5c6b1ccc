"""How long a test waits for a subprocess, or for a condition it polls, before calling it hung.

A hang guard, not a budget: a test asserts what a run does, never how fast (speeds are the
benchmarks' figures, `benchmarks/`, `BENCHMARKS.md`). One hour, so that a machine shared with
other jobs, where a 15 s launcher run can take ten minutes, never trips it; only a real hang does.
"""

HANG_SECONDS = 3600
