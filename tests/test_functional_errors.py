"""Bad input to minibnn.nn.functional raises the right error class with one clear line.

Each case names the exact class expected (a ShapeError is not accepted where a plain
MinibnnError is meant, and vice versa) and a pattern that must appear in the message: the
function's name and the offending argument.
"""
from __future__ import annotations

import numpy as np
import pytest

import minibnn.nn.functional as F
from minibnn.errors import DTypeError, MinibnnError, ShapeError

f32 = np.float32
X4 = np.zeros((2, 3, 5, 5))
W4 = np.zeros((4, 3, 3, 3))
X2 = np.zeros((4, 3))
C3 = np.ones(3)


def _dense_cache():
    return F.dense_forward(np.zeros((2, 3)), np.zeros((4, 3)))[1]


CASES = [
    # dense
    ("dense x 3-D", lambda: F.dense_forward(np.zeros((2, 3, 4)), np.zeros((4, 3))),
     ShapeError, r"^dense_forward: x must be 2-D \(N, I\), got shape \(2, 3, 4\)$"),
    ("dense w features", lambda: F.dense_forward(np.zeros((2, 3)), np.zeros((4, 5))),
     ShapeError, r"dense_forward: w\.shape\[1\].*x\.shape\[1\] = 3.*\(4, 5\)"),
    ("dense bias size", lambda: F.dense_forward(np.zeros((2, 3)), np.zeros((4, 3)), np.zeros(3)),
     ShapeError, r"dense_forward: b must have shape \(4,\).*got shape \(3,\)"),
    ("dense int x", lambda: F.dense_forward(np.zeros((2, 3), dtype=int), np.zeros((4, 3))),
     DTypeError, r"dense_forward: x must have dtype float32 or float64, got int64"),
    ("dense mixed dtype", lambda: F.dense_forward(np.zeros((2, 3), f32), np.zeros((4, 3))),
     DTypeError, r"dense_forward: w must have the same dtype as x \(float32\), got float64"),
    ("dense list x", lambda: F.dense_forward([[1.0, 2.0]], np.zeros((4, 2))),
     DTypeError, r"dense_forward: x must be a NumPy or CuPy array, got list"),
    ("dense bias dtype", lambda: F.dense_forward(np.zeros((2, 3)), np.zeros((4, 3)),
                                                 np.zeros(4, f32)),
     DTypeError, r"dense_forward: b must have the same dtype as x"),
    ("dense_backward dy shape", lambda: F.dense_backward(np.zeros((2, 5)), _dense_cache()),
     ShapeError, r"dense_backward: dy must have the forward output's shape \(2, 4\)"),
    ("dense_backward dy dtype", lambda: F.dense_backward(np.zeros((2, 4), f32), _dense_cache()),
     DTypeError, r"dense_backward: dy must have the forward output's dtype float64"),
    # conv2d
    ("conv w 2-D", lambda: F.conv2d_forward(X4, np.zeros((3, 3))),
     ShapeError, r"^conv2d_forward: w must be 4-D \(O, I, kH, kW\), got shape \(3, 3\)$"),
    ("conv x 3-D", lambda: F.conv2d_forward(np.zeros((3, 5, 5)), W4),
     ShapeError, r"conv2d_forward: x must be 4-D \(N, C, H, W\)"),
    ("conv channels", lambda: F.conv2d_forward(X4, np.zeros((4, 2, 3, 3))),
     ShapeError, r"conv2d_forward: w\.shape\[1\] \(input channels\) must equal x\.shape\[1\] = 3"),
    ("conv kernel too big", lambda: F.conv2d_forward(np.zeros((1, 3, 2, 2)), W4),
     ShapeError, r"conv2d_forward: kernel \(3, 3\) is larger than the padded input \(2, 2\)"),
    ("conv stride 0", lambda: F.conv2d_forward(X4, W4, stride=0),
     MinibnnError, r"conv2d_forward: stride must be an int >= 1, got 0"),
    ("conv stride float", lambda: F.conv2d_forward(X4, W4, stride=1.5),
     MinibnnError, r"conv2d_forward: stride must be an int >= 1, got 1\.5"),
    ("conv stride bool", lambda: F.conv2d_forward(X4, W4, stride=True),
     MinibnnError, r"conv2d_forward: stride must be an int >= 1, got True"),
    ("conv padding negative", lambda: F.conv2d_forward(X4, W4, padding=-1),
     MinibnnError, r"conv2d_forward: padding must be an int >= 0, got -1"),
    ("conv bias size", lambda: F.conv2d_forward(X4, W4, np.zeros(3)),
     ShapeError, r"conv2d_forward: b must have shape \(4,\)"),
    ("conv mixed dtype", lambda: F.conv2d_forward(X4.astype(f32), W4),
     DTypeError, r"conv2d_forward: w must have the same dtype as x"),
    ("conv float16", lambda: F.conv2d_forward(X4.astype(np.float16), W4),
     DTypeError, r"conv2d_forward: x must have dtype float32 or float64, got float16"),
    # batchnorm
    ("bn x 1-D", lambda: F.batchnorm_forward(np.zeros(3), None, None, None, None),
     ShapeError, r"batchnorm_forward: x must be at least 2-D"),
    ("bn gamma size", lambda: F.batchnorm_forward(X2, np.ones(4), None, None, None),
     ShapeError, r"batchnorm_forward: gamma must have shape \(3,\) to match x\.shape\[1\]"),
    ("bn running_var dtype", lambda: F.batchnorm_forward(X2, None, None, C3, C3.astype(f32)),
     DTypeError, r"batchnorm_forward: running_var must have the same dtype as x"),
    ("bn eval without stats",
     lambda: F.batchnorm_forward(X2, None, None, None, None, train=False),
     ShapeError, r"batchnorm_forward: eval mode .*running_mean"),
    ("bn half stats", lambda: F.batchnorm_forward(X2, None, None, C3, None),
     ShapeError, r"batchnorm_forward: running_mean and running_var must both"),
    ("bn one value", lambda: F.batchnorm_forward(np.zeros((1, 3)), None, None, None, None),
     ShapeError, r"batchnorm_forward: train mode needs more than 1 value per channel"),
    ("bn+sign without affine",
     lambda: F.batchnorm_sign_forward(X2, None, C3, C3, C3),
     MinibnnError, r"batchnorm_sign_forward: needs gamma and beta"),
    ("bn+sign gamma size",
     lambda: F.batchnorm_sign_forward(X2, np.ones(4), C3, C3, C3),
     ShapeError, r"batchnorm_sign_forward: gamma must have shape \(3,\)"),
    ("bn+sign eval without stats",
     lambda: F.batchnorm_sign_forward(X2, C3, C3, None, None, train=False),
     ShapeError, r"batchnorm_sign_forward: eval mode .*running_mean"),
    ("bn+sign ste", lambda: F.batchnorm_sign_forward(X2, C3, C3, C3, C3, ste="tanh"),
     MinibnnError, r"batchnorm_sign_forward: ste must be one of"),
    ("bn momentum", lambda: F.batchnorm_forward(X2, None, None, C3, C3, momentum=1.5),
     MinibnnError, r"batchnorm_forward: momentum must be a number in \[0\.0, 1\.0\], got 1\.5"),
    ("bn eps", lambda: F.batchnorm_forward(X2, None, None, C3, C3, eps=0.0),
     MinibnnError, r"batchnorm_forward: eps must be a number in \(0\.0, inf\), got 0\.0"),
    # sign
    ("sign ste", lambda: F.sign_forward(X2, ste="tanh"),
     MinibnnError, r"sign_forward: ste must be one of \('identity', .*got 'tanh'"),
    ("ste_grad ste", lambda: F.ste_grad(X2, "Identity"),
     MinibnnError, r"ste_grad: ste must be one of"),
    ("sign beta", lambda: F.sign_forward(X2, ste="swish", beta=0.0),
     MinibnnError, r"sign_forward: beta must be a number in \(0\.0, inf\)"),
    ("sign int x", lambda: F.sign_forward(np.zeros(3, dtype=np.int32)),
     DTypeError, r"sign_forward: x must have dtype float32 or float64, got int32"),
    # pooling
    ("maxpool kernel 0", lambda: F.maxpool2d_forward(X4, kernel=0),
     MinibnnError, r"maxpool2d_forward: kernel must be an int >= 1, got 0"),
    ("maxpool too big", lambda: F.maxpool2d_forward(X4, kernel=7),
     ShapeError, r"maxpool2d_forward: kernel \(7, 7\) is larger than the padded input \(5, 5\)"),
    ("maxpool padding", lambda: F.maxpool2d_forward(X4, kernel=2, padding=2),
     MinibnnError, r"maxpool2d_forward: padding must be at most kernel // 2 = 1, got 2"),
    ("maxpool x 3-D", lambda: F.maxpool2d_forward(np.zeros((3, 5, 5))),
     ShapeError, r"maxpool2d_forward: x must be 4-D \(N, C, H, W\)"),
    ("avgpool stride", lambda: F.avgpool2d_forward(X4, stride=0),
     MinibnnError, r"avgpool2d_forward: stride must be an int >= 1, got 0"),
    ("avgpool int", lambda: F.avgpool2d_forward(X4.astype(int)),
     DTypeError, r"avgpool2d_forward: x must have dtype float32 or float64"),
    ("global pool 2-D", lambda: F.global_avgpool_forward(X2),
     ShapeError, r"global_avgpool_forward: x must be 4-D \(N, C, H, W\), got shape \(4, 3\)"),
    # activations and shape plumbing
    ("prelu a shape", lambda: F.prelu_forward(X4, np.ones(4)),
     ShapeError, r"prelu_forward: a must have shape \(3,\) to match x\.shape\[1\]"),
    ("prelu x 1-D", lambda: F.prelu_forward(np.zeros(3), C3),
     ShapeError, r"prelu_forward: x must be at least 2-D"),
    ("bias b 2-D", lambda: F.bias_forward(X4, np.ones((3, 1))),
     ShapeError, r"bias_forward: b must have shape \(3,\)"),
    ("relu int", lambda: F.relu_forward(np.zeros(3, dtype=int)),
     DTypeError, r"relu_forward: x must have dtype float32 or float64"),
    ("hardtanh list", lambda: F.hardtanh_forward([0.5]),
     DTypeError, r"hardtanh_forward: x must be a NumPy or CuPy array, got list"),
    ("flatten int", lambda: F.flatten_forward(np.zeros((2, 3), dtype=bool)),
     DTypeError, r"flatten_forward: x must have dtype float32 or float64, got bool"),
    ("add shapes", lambda: F.add_forward(np.zeros((2, 3)), np.zeros((3, 2))),
     ShapeError, r"add_forward: b must have the shape of a \(2, 3\), got shape \(3, 2\)"),
    ("add dtypes", lambda: F.add_forward(np.zeros(3), np.zeros(3, f32)),
     DTypeError, r"add_forward: b must have the same dtype as a \(float64\), got float32"),
    ("distill shapes", lambda: F.distillation_kl(np.zeros((2, 3)), np.zeros((2, 4))),
     ShapeError, r"distillation_kl: teacher_logits must have the logits' shape \(2, 3\), got "
     r"\(2, 4\)"),
    ("distill temperature", lambda: F.distillation_kl(np.zeros((2, 3)), np.zeros((2, 3)), 0.0),
     MinibnnError, r"distillation_kl: temperature must be a number in \(0.0, inf\], got 0.0"),
    ("concat nothing", lambda: F.concat_forward([]), ShapeError,
     r"concat_forward: needs at least one array"),
    ("concat sizes", lambda: F.concat_forward([np.zeros((2, 3, 4)), np.zeros((2, 1, 5))]),
     ShapeError, r"concat_forward: xs\[1\] of shape \(2, 1, 5\) differs from xs\[0\] "
     r"\(2, 3, 4\) outside the channel axis"),
    ("concat dtypes", lambda: F.concat_forward([np.zeros((2, 3)), np.zeros((2, 3), f32)]),
     DTypeError, r"concat_forward: xs\[1\] must have the same dtype as xs\[0\] \(float64\), "
     r"got float32"),
    # loss
    ("loss logits 1-D", lambda: F.softmax_cross_entropy(np.zeros(3), np.zeros(3, int)),
     ShapeError, r"softmax_cross_entropy: logits must be 2-D \(N, C\)"),
    ("loss float labels", lambda: F.softmax_cross_entropy(X2, np.zeros(4)),
     DTypeError, r"softmax_cross_entropy: labels must be integer class indices, got dtype float64"),
    ("loss labels shape", lambda: F.softmax_cross_entropy(X2, np.zeros(3, int)),
     ShapeError, r"softmax_cross_entropy: labels must have shape \(4,\)"),
    ("loss label too big", lambda: F.softmax_cross_entropy(X2, np.array([0, 1, 3, 2])),
     MinibnnError, r"softmax_cross_entropy: labels must lie in \[0, 3\) for 3 classes, got 3"),
    ("loss label negative", lambda: F.softmax_cross_entropy(X2, np.array([0, -1, 2, 2])),
     MinibnnError, r"softmax_cross_entropy: labels must lie in \[0, 3\).*got -1"),
    ("loss smoothing 1", lambda: F.softmax_cross_entropy(X2, np.zeros(4, int), 1.0),
     MinibnnError, r"softmax_cross_entropy: label_smoothing must be a number in \[0\.0, 1\.0\)"),
    ("loss smoothing negative", lambda: F.softmax_cross_entropy(X2, np.zeros(4, int), -0.1),
     MinibnnError, r"softmax_cross_entropy: label_smoothing must be a number"),
    ("loss empty", lambda: F.softmax_cross_entropy(np.zeros((0, 3)), np.zeros(0, int)),
     ShapeError, r"softmax_cross_entropy: logits must have at least one row"),
]


@pytest.mark.parametrize("call,cls,pattern", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_one_line(call, cls, pattern):
    with pytest.raises(cls, match=pattern) as info:
        call()
    assert type(info.value) is cls
    message = str(info.value)
    assert "\n" not in message and message.strip() == message


def test_errors_are_value_errors():
    """All of them are MinibnnError (hence ValueError), so callers can catch one class."""
    with pytest.raises(ValueError):
        F.dense_forward(np.zeros((2, 3)), np.zeros((4, 5)))


def test_backward_checks_dy_for_every_layer():
    x = np.zeros((2, 3, 4, 4))
    pairs = [
        (F.conv2d_forward(x, np.zeros((2, 3, 3, 3)))[1], F.conv2d_backward),
        (F.batchnorm_forward(x, None, None, None, None)[1], F.batchnorm_backward),
        (F.batchnorm_sign_forward(x, np.ones(3), np.zeros(3), None, None)[1],
         F.batchnorm_sign_backward),
        (F.sign_forward(x)[1], F.sign_backward),
        (F.maxpool2d_forward(x)[1], F.maxpool2d_backward),
        (F.avgpool2d_forward(x)[1], F.avgpool2d_backward),
        (F.global_avgpool_forward(x)[1], F.global_avgpool_backward),
        (F.prelu_forward(x, np.ones(3))[1], F.prelu_backward),
        (F.bias_forward(x, np.ones(3))[1], F.bias_backward),
        (F.relu_forward(x)[1], F.relu_backward),
        (F.hardtanh_forward(x)[1], F.hardtanh_backward),
        (F.flatten_forward(x)[1], F.flatten_backward),
        (F.add_forward(x, x)[1], F.add_backward),
        (F.concat_forward([x, x])[1], F.concat_backward),
    ]
    for cache, backward in pairs:
        with pytest.raises(ShapeError, match=rf"^{backward.__name__}: dy must have"):
            backward(np.zeros((7, 7)), cache)
