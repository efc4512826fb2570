"""Hot loops behind the layers and optimisers: every op, declared once by its reference body.

    from minibnn import kernels
    cols = kernels.im2col(x, 3, 3, 1, 1)              # the body chosen from the type of x
    with kernels.use_backend("numpy"):                # force the readable reference
        ...

Each op below is declared in ``kernels/reference.py`` or ``kernels/channels_last.py`` by its
reference body (``@op``: readable array code against ``xp``, the oracle and the documentation);
go to its definition to read it. Its compiled bodies register for it by the op itself:

    "numba"  kernels/cpu.py, cpu_channels_last.py   Numba, for NumPy arrays
    "cuda"   kernels/gpu.py, gpu_channels_last.py   CUDA kernels (cuda_sources.py), CuPy arrays

``kernels/registry.py`` says how a call picks the body (``call(name, ...)`` is the same by
name); ``kernels/_common.py`` holds the argument checks every body of an op shares;
``kernels/threads.py`` the thread count and the GEMM whose bits do not depend on it. Not ops:
bit-packed inference layers (``kernels/bitpack.py``) and the folding of BatchNorm + sign into
integer thresholds (``kernels/threshold.py``). Nothing in this package imports ``minibnn.nn``.
"""
from __future__ import annotations

from minibnn.kernels.channels_last import (  # noqa: F401  (the ops, re-exported)
    batch_statistics_rows, batchnorm_normalise_add_rows, batchnorm_normalise_rows,
    batchnorm_sign_pack_backward,
    batchnorm_sign_pack_eval, batchnorm_sign_pack_train, bias_sign_pack, bias_sign_pack_backward,
    conv2d_nhwc_backward, conv2d_nhwc_forward, maxpool2d_nhwc_backward, maxpool2d_nhwc_forward,
    prelu_rows_backward, prelu_rows_forward)
from minibnn.kernels.reference import (  # noqa: F401
    adam_update, batchnorm_sign_backward_train, batchnorm_sign_eval, batchnorm_sign_train,
    binary_conv2d, binary_conv2d_lookup,
    binary_conv2d_threshold_pack, bop_update, cema_update, col2im, im2col, maxpool2d_backward,
    maxpool2d_forward, pack_conv_input, pack_conv_weights, pack_signs, sgd_update,
    threshold_pack, unpack_signs, xnor_gemm)
from minibnn.kernels.registry import (
    BACKENDS, BackendError, backend_for, call, get, has_compiled, register, registered,
    use_backend)

#: every op, by name
OPS = ("adam_update", "batch_statistics_rows", "batchnorm_normalise_add_rows",
       "batchnorm_normalise_rows",
       "batchnorm_sign_backward_train", "batchnorm_sign_eval", "batchnorm_sign_pack_backward",
       "batchnorm_sign_pack_eval",
       "batchnorm_sign_pack_train", "batchnorm_sign_train",
       "bias_sign_pack", "bias_sign_pack_backward", "binary_conv2d", "binary_conv2d_lookup",
       "binary_conv2d_threshold_pack",
       "bop_update", "cema_update", "col2im", "conv2d_nhwc_backward", "conv2d_nhwc_forward",
       "im2col", "maxpool2d_backward", "maxpool2d_forward", "maxpool2d_nhwc_backward",
       "maxpool2d_nhwc_forward", "pack_conv_input", "pack_conv_weights", "pack_signs",
       "prelu_rows_backward", "prelu_rows_forward",
       "sgd_update", "threshold_pack", "unpack_signs", "xnor_gemm")

__all__ = ["BACKENDS", "BackendError", "OPS", "backend_for", "call", "get", "has_compiled",
           "register", "registered", "use_backend", *OPS]
