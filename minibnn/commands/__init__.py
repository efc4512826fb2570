"""The ``minibnn`` command and the reports it prints.

    cli.py           argument parsing and the subcommands (``minibnn train``, ``eval``, ...)
    sweep.py         ``minibnn sweep``: a grid of runs on local workers or a Dask cluster
    sweep_spec.py    the sweep's TOML spec; sweep_report.py its summary table and figure
    show.py          ``minibnn show``: per-epoch metrics of run files side by side, curves
    summary.py       ``minibnn summary``: per-layer shapes, bits, memory and MACs
    explain.py       ``minibnn explain``: the latent <-> filter map of ``minibnn.theory``
    figures.py       saving a matplotlib figure, for show and explain
"""
