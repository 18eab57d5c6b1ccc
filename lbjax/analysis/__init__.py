"""Analysis of trained runs: restoring a workdir's model (`runs`) and the loss landscape along lines
in weight space (`interpolation`: seed 001 Fig. 3 and filter-normalised random directions).

    python -m lbjax.analysis.interpolate --a=WORKDIR_A --b=WORKDIR_B --out=plot.png
"""
