"""Coates & Ng (2011) single-layer k-means features, built from scikit-learn parts.

A. Coates, H. Lee and A. Y. Ng, "An Analysis of Single-Layer Networks in Unsupervised
Feature Learning", AISTATS 2011: random 6x6 patches, each normalised for brightness and
contrast, ZCA-whitened, clustered by k-means; an image's features are the triangle
activation ``max(0, mean_k(z) - z_k)`` (``z_k`` the distance of a patch to centroid k) of
every 6x6 patch at stride 1, sum-pooled over the image's four quadrants: 4 x k features.
They report 77.9% (linear SVM) on CIFAR-10 with 1,600 centroids and 50,000 training images.

Here: ``PCA`` gives the eigenvectors the ZCA matrix is made of (epsilon 0.1, as theirs),
``MiniBatchKMeans`` the centroids and ``MiniBatchKMeans.transform`` the distances; numpy only
indexes and adds. Every stage is timed, so a row's seconds are end to end.
"""

from __future__ import annotations

import time

import numpy as np
from sklearn.cluster import MiniBatchKMeans
from sklearn.decomposition import PCA

PATCH = 6
NORM_EPS = 10.0  # brightness/contrast normalisation, pixel values 0..255 (Coates & Ng)
ZCA_EPS = 0.1


def patch_windows(X: np.ndarray) -> np.ndarray:
    """A view ``(n, H-5, W-5, C, 6, 6)`` of every 6x6 patch of channels-last images."""
    X = X if X.ndim == 4 else X[..., None]
    return np.lib.stride_tricks.sliding_window_view(X, (PATCH, PATCH), axis=(1, 2))


def random_patches(X: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` random 6x6 patches (with replacement over images and positions), flat float32."""
    windows = patch_windows(X)
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, windows.shape[0], n)
    top = rng.integers(0, windows.shape[1], n)
    left = rng.integers(0, windows.shape[2], n)
    return windows[rows, top, left].reshape(n, -1).astype(np.float32)


def normalise(patches: np.ndarray) -> np.ndarray:
    """Each patch less its mean, over ``sqrt(variance + 10)``, in place."""
    patches -= patches.mean(axis=1, keepdims=True)
    patches /= np.sqrt(patches.var(axis=1, ddof=1, keepdims=True) + NORM_EPS)
    return patches


class Whitening:
    """ZCA whitening ``(x - mean) V diag(1 / sqrt(lambda + 0.1)) V^T``, from a fitted PCA."""

    def fit(self, patches: np.ndarray, seed: int) -> Whitening:
        pca = PCA(svd_solver="full", random_state=seed).fit(patches)
        V = pca.components_.astype(np.float64)
        scale = 1.0 / np.sqrt(pca.explained_variance_ + ZCA_EPS)
        self.mean_ = pca.mean_.astype(np.float32)
        self.matrix_ = ((V.T * scale) @ V).astype(np.float32)
        return self

    def transform(self, patches: np.ndarray) -> np.ndarray:
        return (patches - self.mean_) @ self.matrix_


def triangle_pooled(kmeans, whitening, X: np.ndarray, batch: int = 32) -> np.ndarray:
    """``(n, 4k)`` features: triangle activations of every patch, sum-pooled per quadrant."""
    windows = patch_windows(X)
    n, rows, cols = windows.shape[:3]
    k = kmeans.n_clusters
    half_r, half_c = (rows + 1) // 2, (cols + 1) // 2
    out = np.empty((n, 4 * k), dtype=np.float32)
    for start in range(0, n, batch):
        block = windows[start : start + batch]
        m = len(block)
        patches = normalise(block.reshape(m * rows * cols, -1).astype(np.float32))
        distances = kmeans.transform(whitening.transform(patches)).astype(np.float32)
        active = np.maximum(distances.mean(axis=1, keepdims=True) - distances, 0.0)
        active = active.reshape(m, rows, cols, k)
        quadrants = [
            active[:, :half_r, :half_c],
            active[:, :half_r, half_c:],
            active[:, half_r:, :half_c],
            active[:, half_r:, half_c:],
        ]
        out[start : start + m] = np.concatenate([q.sum(axis=(1, 2)) for q in quadrants], axis=1)
    return out


def fit_patches(X_fit: np.ndarray, n_patches: int, seed: int) -> dict:
    """The shared first stages (patch sampling, normalisation, whitening), timed."""
    started = time.perf_counter()
    patches = normalise(random_patches(X_fit, n_patches, seed))
    sampled = time.perf_counter()
    whitening = Whitening().fit(patches, seed)
    whitened = whitening.transform(patches)
    done = time.perf_counter()
    return {
        "whitening": whitening,
        "patches": whitened,
        "seconds": {"patches": sampled - started, "whitening": done - sampled},
    }


def kmeans_features(prepared: dict, n_centroids: int, sets, seed: int, *, batch_size=4096):
    """Fit ``n_centroids`` centroids on the prepared patches and encode each array of
    ``sets``; returns ``(features per set, seconds per stage, facts)``, the shared stages
    included in the seconds."""
    started = time.perf_counter()
    kmeans = MiniBatchKMeans(
        n_clusters=n_centroids,
        batch_size=max(batch_size, n_centroids),
        # at most 50 passes over the patches (Coates & Ng's code runs 50 iterations of
        # k-means); MiniBatchKMeans stops sooner by its own test (max_no_improvement)
        max_iter=50,
        n_init=1,
        random_state=seed,
    ).fit(prepared["patches"])
    fitted = time.perf_counter()
    features = [triangle_pooled(kmeans, prepared["whitening"], X) for X in sets]
    encoded = time.perf_counter()
    seconds = dict(prepared["seconds"], kmeans=fitted - started, encoding=encoded - fitted)
    seconds["total"] = sum(seconds.values())
    return features, seconds, {"kmeans_passes": int(kmeans.n_iter_)}
