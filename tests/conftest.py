import numpy as np
import pytest
from sklearn.datasets import load_digits


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
