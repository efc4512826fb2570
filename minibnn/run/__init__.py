"""What a run *is* and how it is kept.

    spec.py        the typed run spec (model, optimisers, data, loop) and machine-local settings
    train.py       the training loop: one step written out, epochs, metrics, checkpoints, resume
    step_log.py    the step rows (every --log-every steps: loss, accuracy, flip ratios, rates)
    tensorboard.py --tensorboard DIR: the same rows and per-epoch histograms as event files
    provenance.py  what shaped a run's bits: the data copy read, threads, BLAS, CPU, versions
    files.py       HDF5 run files: write (atomically, after every epoch) and read back, checked
    integrity.py   SHA-256 seals of every dataset and of the attributes, verified on load
    lock.py        one writer per file (fcntl), stale temporaries of a killed write
    resources.py   memory, disk space and byte sizes checked before a run starts
"""
