"""Inference with a fitted module: features for ``transform``, the MI bound for ``score``."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .critics import split_pairs
from .inputs import ArrayBatches
from .objectives import infonce_mi_loss


@torch.no_grad()
def encode(
    module: nn.Module, dataset: ArrayBatches, batch_size: int, device, level: str = "code"
) -> np.ndarray:
    """Features of every sample at ``level``, float32, batch by batch into one output array.

    An encoder of your own without a ``features`` method gives the code mean of its
    ``forward`` (the contract of :mod:`dimlearn.networks`)."""
    module.eval()
    encoder = module.encoder
    out = np.empty((len(dataset), feature_width(encoder, level)), dtype=np.float32)
    for start in range(0, len(dataset), batch_size):
        x = dataset.take(slice(start, start + batch_size), device)
        if level == "code" and not hasattr(encoder, "features"):
            features = encoder(x)[1]
        else:
            features = encoder.features(x, level)
        out[start : start + features.shape[0]] = features.cpu().numpy()
    return out


def feature_width(encoder: nn.Module, level: str) -> int:
    """The width of the encoder's features at ``level`` (``feature_level``), or a
    ``ValueError`` naming the levels it gives."""
    dims = encoder.feature_dims
    if level not in dims or (level != "code" and not hasattr(encoder, "features")):
        raise ValueError(
            f"feature_level={level!r}, but this model's encoder ({type(encoder).__name__}) "
            f"gives features at {sorted(dims) if hasattr(encoder, 'features') else ['code']} "
            "only. Set feature_level to one of them."
        )
    return dims[level]


@torch.no_grad()
def local_mi_score(
    module: nn.Module, dataset: ArrayBatches, batch_size: int, device, code_chunk: int = 16
) -> float:
    """Held-out infoNCE lower bound on the local MI, in nats, averaged over samples.

    The dataset is cut in order into nearly equal batches (its ``batch_sizes``); in a
    batch of B, every code mean is scored by the local critic against the local map of all B
    images at every position, and ``log B - infoNCE`` is that batch's bound. The batches'
    bounds are averaged, weighted by their sizes. Codes are scored ``code_chunk`` at a time,
    which bounds the memory of the concatenating critic's all-pairs scores.
    """
    module.eval()
    critic = module.local_critic
    total, count = 0.0, 0
    bounds = np.cumsum([0, *dataset.batch_sizes(batch_size)])
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        x = dataset.take(slice(int(start), int(stop)), device)
        local_map, mu, _ = module.encoder(x)
        image_part, code_part = critic.embed(local_map, mu)
        rows = [
            critic.all_pair_scores(image_part, code_part[i : i + code_chunk])
            for i in range(0, len(x), code_chunk)
        ]
        pos, neg = split_pairs(torch.cat(rows))  # rows[i, j] = T(x_j, z_i)
        n = len(x)
        bound = np.log(n) - infonce_mi_loss(pos, neg).item()
        total += bound * n
        count += n
    return total / count
