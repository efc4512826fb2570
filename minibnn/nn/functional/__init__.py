"""Functional layers: explicit ``y, cache = *_forward(...)`` / ``*_backward(dy, cache)`` pairs.

Every forward validates its inputs and returns ``(y, cache)`` with ``cache`` a small named tuple;
every backward takes ``(dy, cache)``. Arrays are NCHW, conv weights OIHW, dense weights (out, in)
as in PyTorch. The code is written once against ``xp`` (NumPy or CuPy); the hot spots
(im2col/col2im, max pooling, fused BatchNorm + sign) are kernel ops (``kernels.im2col`` ...: go
to an op's definition to read its reference body).
"""
from minibnn.nn.functional.activations import (
    BiasCache, HardtanhCache, PReluCache, ReluCache, bias_backward, bias_forward,
    hardtanh_backward, hardtanh_forward, prelu_backward, prelu_forward, relu_backward,
    relu_forward)
from minibnn.nn.functional.batchnorm import BatchNormCache, batchnorm_backward, batchnorm_forward
from minibnn.nn.functional.batchnorm_sign import (
    BatchNormSignCache, batchnorm_sign_backward, batchnorm_sign_forward)
from minibnn.nn.functional.conv import Conv2dCache, conv2d_backward, conv2d_forward
from minibnn.nn.functional.dense import (DenseCache, SignsDenseCache, check_dense_args,
                                         dense_backward, dense_forward, signs_dense_backward,
                                         signs_dense_forward)
from minibnn.nn.functional.loss import distillation_kl, softmax_cross_entropy
from minibnn.nn.functional.pooling import (
    AvgPool2dCache, GlobalAvgPoolCache, MaxPool2dCache, avgpool2d_backward, avgpool2d_forward,
    global_avgpool_backward, global_avgpool_forward, maxpool2d_backward, maxpool2d_forward)
from minibnn.nn.functional.shape import (
    AddCache, ConcatCache, FlattenCache, add_backward, add_forward, concat_backward,
    concat_forward, flatten_backward, flatten_forward)
from minibnn.nn.functional.sign import STE_NAMES, SignCache, sign_backward, sign_forward, ste_grad

__all__ = [
    "STE_NAMES",
    "AddCache", "AvgPool2dCache", "BatchNormCache", "BatchNormSignCache", "BiasCache",
    "ConcatCache", "Conv2dCache", "DenseCache", "FlattenCache", "GlobalAvgPoolCache", "HardtanhCache",
    "MaxPool2dCache", "PReluCache", "ReluCache", "SignCache", "SignsDenseCache",
    "add_backward", "add_forward",
    "avgpool2d_backward", "avgpool2d_forward",
    "batchnorm_backward", "batchnorm_forward",
    "batchnorm_sign_backward", "batchnorm_sign_forward",
    "bias_backward", "bias_forward",
    "concat_backward", "concat_forward",
    "conv2d_backward", "conv2d_forward",
    "check_dense_args", "dense_backward", "dense_forward",
    "distillation_kl",
    "flatten_backward", "flatten_forward",
    "global_avgpool_backward", "global_avgpool_forward",
    "hardtanh_backward", "hardtanh_forward",
    "maxpool2d_backward", "maxpool2d_forward",
    "prelu_backward", "prelu_forward",
    "relu_backward", "relu_forward",
    "sign_backward", "sign_forward", "ste_grad",
    "signs_dense_backward", "signs_dense_forward",
    "softmax_cross_entropy",
]
