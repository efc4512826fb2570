"""``minibnn export RUN.h5 --format torch --out model.pt``: a run to continue in PyTorch.

The file is one ``torch.save`` dict of plain tensors, lists, strings and numbers, so
``torch.load(path, weights_only=True)`` reads it (``minibnn.torch.model.read_export``):

    format, version              "minibnn-torch", 1 (``minibnn.torch.model.FORMAT, VERSION``)
    minibnn_version, source      the writer's version; the run file's absolute path
    epoch, step, steps_per_epoch the checkpoint's epochs and optimiser updates, step / epoch
    spec                         the run's spec (``RunSpec.to_dict``): model options (width or
                                 hidden, STEs, scale, ...), both optimisers with their
                                 hyperparameters and schedule names, data, loop (epochs)
    model, input_shape,          the model's name, its input shape (C, H, W), class count and
      num_classes, dtype         dtype ("float32"/"float64")
    mean, std, classes           the data's standardisation and class names
    binary, binary_storage       the binary weights' names; "binary" (stored +-1, the filter
                                 optimisers) or "latent" (latent reals, sgd/adam)
    state_dict                   parameters and BatchNorm running statistics under minibnn's
                                 names (``fc2.w``, ``bn1.running_mean``): what
                                 ``minibnn.torch.build`` loads; conv weights OIHW
    optimizer_state              the checkpoint's optimiser state as minibnn keeps it:
                                 {group: {stage: {"count": int, slot: {param: tensor}}}}
                                 (docs/run-file.md, Optimiser state: e.g. CEMA's
                                 ``binary/m/s/fc2.w`` and ``binary/v/s/fc2.w``, Adam's
                                 ``real/adam/m/<param>``), counts as Python ints

The schedules are not frozen into numbers: ``spec`` and ``steps_per_epoch`` rebuild them with
``minibnn.run.train.optimizer_rates``, the trainer's own, so step ``step + 1`` in PyTorch uses
the rates minibnn's would. The file is written atomically (``run.files.atomic_path``) and never
replaces an existing one without ``overwrite``.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from minibnn._version import __version__
from minibnn.errors import DataFileError


def _tensors(tree: dict[str, Any], torch: Any) -> dict[str, Any]:
    """A nested dict of NumPy arrays with arrays as tensors and 0-d integers (step counts)
    as Python ints: what ``torch.load(weights_only=True)`` reads back."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out[key] = _tensors(value, torch)
        elif np.ndim(value) == 0 and np.asarray(value).dtype.kind in "iu":
            out[key] = int(value)
        else:
            out[key] = torch.from_numpy(np.array(value, copy=True))
    return out


def export_dict(source: str) -> dict[str, Any]:
    """What ``export_torch`` saves for the run file ``source`` (module header)."""
    from minibnn.deploy.trained import load
    from minibnn.run.files import load_run
    from minibnn.run.train import check_checkpoint, optimizer_from_spec, run_model
    from minibnn.torch.model import FORMAT, VERSION, require_torch

    torch = require_torch()
    run = load_run(source)                  # the spec and optimiser state
    trained = load(source)                  # the model, its data description, checked
    ck = run.checkpoint
    if ck is None or ck.epoch != trained.epoch:     # load() refuses a run with no checkpoint
        raise DataFileError(f"{source} changed while it was read (a run still training?); "
                            "export it again")
    spec, _, model = run_model(run)
    if ck.step % ck.epoch:
        raise DataFileError(f"{source}: {ck.step} steps in {ck.epoch} epochs is not a whole "
                            "number of steps per epoch; the file is corrupt")
    steps_per_epoch = ck.step // ck.epoch
    optimizer = optimizer_from_spec(spec, model, steps_per_epoch)
    params, buffers = model.init(np.random.default_rng(0), np.dtype(spec.loop.dtype))
    check_checkpoint(ck, params, source, buffers, optimizer.init(params),
                     spec.binary_optimizer.name)
    state = {**trained.stored_params, **trained.buffers}
    return {
        "format": FORMAT, "version": VERSION, "minibnn_version": __version__,
        "source": os.path.abspath(source), "epoch": ck.epoch, "step": ck.step,
        "steps_per_epoch": steps_per_epoch, "spec": spec.to_dict(), "model": model.name,
        "input_shape": list(model.input_shape), "num_classes": model.num_classes,
        "dtype": np.dtype(spec.loop.dtype).name,
        "mean": list(trained.mean) if trained.mean is not None else None,
        "std": list(trained.std) if trained.std is not None else None,
        "classes": list(trained.classes), "binary": list(model.binary_names),
        "binary_storage": spec.binary_storage,
        "state_dict": _tensors(state, torch), "optimizer_state": _tensors(ck.opt_state, torch),
    }


def export_torch(run_path: str, out: str, overwrite: bool = False) -> str:
    """Write the run file ``run_path`` as a PyTorch export to ``out`` atomically; returns
    the one-line summary the CLI prints."""
    from minibnn.run.files import atomic_path, check_output
    from minibnn.run.lock import one_writer
    from minibnn.torch.model import require_torch

    torch = require_torch()
    check_output(out, overwrite, (run_path,))
    data = export_dict(run_path)
    with one_writer(out, "output"), atomic_path(out) as tmp:
        torch.save(data, tmp)
    weights = ("+-1 parameters" if data["binary_storage"] == "binary"
               else "latent parameters, binarised in the forward pass")
    return (f"wrote {out}: PyTorch export of {data['model']} at epoch {data['epoch']} "
            f"(step {data['step']}), {len(data['state_dict'])} tensors, "
            f"{os.path.getsize(out)} B; binary weights as {weights}; "
            f"continue with minibnn.torch.build({out!r})")
