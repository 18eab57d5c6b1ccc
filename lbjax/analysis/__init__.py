"""Analysis of trained runs: restoring the model a workdir reports (`runs`: the trained weights,
the SWA average with BatchNorm recomputed, SWAP's average) and the loss landscape along lines in
weight space (`interpolation`: seed 001 Fig. 3 and filter-normalised random directions); Hessian
sharpness (`sharpness`: top eigenvalues, Hutchinson trace, Keskar et al. 2017's ε-sharpness, the
spectral density by stochastic Lanczos quadrature, per-module diagonal blocks; `lanczos`) and the
gradient noise scale B_simple (`noise_scale`: McCandlish et al. 2018 App. A.1).

    python -m lbjax.analysis.interpolate --a=WORKDIR_A --b=WORKDIR_B --out=plot.png
    python -m lbjax.analysis.sharpness --workdir=RUN [--k=3] [--batches=N] [--density] [--layers]
"""
