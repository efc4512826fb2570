"""Random-shift augmentation: each image is a translated copy of itself, drawn reproducibly."""
import numpy as np

from minibnn.data.augment import random_shift


def test_each_image_is_a_translation_filled_with_the_minimum():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 2, 7, 5))
    out = random_shift(x, 2, np.random.default_rng(1))
    fill = x.min()
    for n in range(len(x)):
        padded = np.pad(x[n], ((0, 0), (2, 2), (2, 2)), constant_values=fill)
        matches = [(dy, dx) for dy in range(5) for dx in range(5)
                   if np.array_equal(out[n], padded[:, dy:dy + 7, dx:dx + 5])]
        assert matches, f"image {n} is not a shifted copy"


def test_zero_shift_is_identity_and_draws_are_reproducible():
    x = np.random.default_rng(0).normal(size=(4, 1, 6, 6)).astype(np.float32)
    assert random_shift(x, 0, np.random.default_rng(0)) is x
    a = random_shift(x, 1, np.random.default_rng(5))
    b = random_shift(x, 1, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and a.shape == x.shape
    assert not np.array_equal(random_shift(x, 3, np.random.default_rng(6)), x)
