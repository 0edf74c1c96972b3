from types import MappingProxyType

import numpy as np
import pytest
from sklearn.datasets import load_digits


@pytest.fixture(scope="session")
def fast():
    """The fast settings of most tests: a tiny network (width 4, 8-d codes), 2 epochs,
    seeded, in float32 (``precision="auto"`` would pick bfloat16 on some CPUs only, and the
    tolerances below are float32's). ``DeepInfomaxTransformer(**fast, ...)``,
    ``dict(fast, max_epochs=3)``."""
    return MappingProxyType(
        dict(max_epochs=2, width=4, latent_dim=8, random_state=0, precision="float32")
    )


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's 8x8 digits: flat (n, 64) floats in 0..16 and labels."""
    X, y = load_digits(return_X_y=True)
    return X, y


@pytest.fixture(scope="session")
def digit_images(digits):
    """The digits as (n, 8, 8) grey images."""
    X, y = digits
    return X.reshape(-1, 8, 8), y


def small_images(n=24, shape=(8, 8), seed=0, dtype=np.uint8):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, *shape)).astype(dtype)


# -- tolerances for results that depend on the order of float32 sums --------------------
#
# Two runs of the same computation may add the same float32 numbers in another order: other
# thread counts split a reduction differently, another processor (AVX2 or AVX-512, Intel or
# AMD) uses another vector width, and data-parallel training sums gathered parts. Nothing
# else differs in the comparisons that use these bounds. One float32 sum of n terms is then
# off by at most n * 2**-24 relative to the size of its terms (the classic worst case,
# Higham, "Accuracy and Stability of Numerical Algorithms", 4.2); the tiny test networks
# never sum more than 2**14 terms in one reduction (batch x positions x channels).
UNIT_ROUNDOFF = 2.0**-24
LARGEST_SUM = 2**14
SUM_ROUNDING = LARGEST_SUM * UNIT_ROUNDOFF  # 2**-10, about 1e-3: one sum, worst case
ADAM_STEP = 0.1 / 0.001**0.5
"""Adam's largest step, in units of lr: (1 - beta1) / sqrt(1 - beta2) = 3.16 at the default
betas (Kingma and Ba 2015, section 2.1)."""


def weight_tolerance(steps: int, lr: float) -> float:
    """How far two trainings whose gradients differ by summation order alone can move apart
    in any weight after ``steps`` Adam steps. Adam's step is invariant to the gradient's
    scale, so a relative gradient difference d changes a step by at most 2 d times its
    largest size, ADAM_STEP * lr; the differences of the steps add up."""
    return steps * 2 * SUM_ROUNDING * ADAM_STEP * lr
