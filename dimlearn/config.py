"""The settings of the networks and of training, read once from the estimator's parameters.

The estimator builds one :class:`TrainingConfig` per training call (and one when a model is
rebuilt from a file or a pickle); everything below it (the module builder, the skorch net,
the training call) reads typed, frozen attributes instead of a parameter dict by string key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

import torch

from .devices import native_bfloat16
from .networks import check_token_features

TERM_NAMES = ("global", "local", "prior", "local_local", "reconstruction")
"""The loss terms, in the order of their weights (:data:`WEIGHT_NAMES`)."""

WEIGHT_NAMES = ("alpha", "beta", "gamma", "delta", "reconstruction")
"""The estimator's parameters that weigh the terms of :data:`TERM_NAMES`, in their order."""


ADDED_SINCE_0_3 = {"flip": "auto", "reconstruction": 0.0, "local_scales": 1, "critic_width": None}
"""Parameters that dimlearn 0.3.0 did not have, with what its model files and pickles are
read with. It mirrored every augmented image and no table row: ``flip="auto"`` with the
``flip_`` such a model is read with (True for images, False for rows) does the same in a
continued fit; it had no reconstruction term (``reconstruction=0.0``), one local map
(``local_scales=1``) and critics of ``8 * width`` units (``critic_width=None``)."""

ADDED_SINCE_0_2 = {"views": 1, "temperature": None, "tabular_encoder": "mlp", **ADDED_SINCE_0_3}
"""Parameters that dimlearn 0.2 did not have, with the values that behave as 0.2 did: what a
model file or a pickle of 0.2 is read with (not today's defaults)."""


def auto_flip(layout) -> bool:
    """What ``flip="auto"`` resolves to for samples of ``layout``: mirror colour images,
    not one-channel images (digits, letters, where a mirror can change the class), never
    table rows. Measured on one-channel images: without flips kNN-10 rose from 91.7 to 96.1
    on the 8x8 digits and from 95.7 to 98.0 on MNIST, and stayed level on Fashion-MNIST
    (86.2 and 85.9)."""
    return layout.kind == "image" and layout.channels > 1


@dataclass(frozen=True)
class TrainingConfig:
    """What the estimator's parameters say about the networks and about training.

    The fields are the estimator's parameters of the same names (see
    :class:`~dimlearn.DeepInfomaxTransformer` for each); the parameters that only the
    estimator reads (input layout, device, early-stopping split, random state, ...) are not
    here. Build it with :meth:`from_params`.

    Examples
    --------
    >>> from dimlearn import DeepInfomaxTransformer
    >>> config = TrainingConfig.from_params(DeepInfomaxTransformer(alpha=0.5).get_params())
    >>> config.weights
    {'global': 0.5, 'local': 1.0, 'prior': 0.1, 'local_local': 0.0, 'reconstruction': 0.0}
    """

    alpha: float
    beta: float
    gamma: float
    delta: float
    reconstruction: float
    prior: str
    negatives: str
    critic: str
    temperature: float | None
    mi_estimator: str
    latent_dim: int
    width: int
    critic_width: int | None
    local_scales: int
    tabular_encoder: str
    augment: bool
    views: int | str
    flip: bool | str
    max_time: float | None
    batch_size: int
    lr: float
    lr_schedule: str
    n_iter_no_change: int
    tol: float
    precision: str
    data_on_device: object
    compile: bool
    verbose: int

    @classmethod
    def from_params(cls, params: Mapping) -> TrainingConfig:
        """The config of ``DeepInfomaxTransformer.get_params()`` (other keys are ignored)."""
        return cls(**{field.name: params[field.name] for field in fields(cls)})

    def resolved(self, layout, device: torch.device) -> TrainingConfig:
        """This config for samples of ``layout`` trained on ``device``: its ``"auto"``
        choices made, and a ``ValueError`` that names the fix for a combination that cannot
        train (raised before any training starts)."""
        if self.alpha == 0 and self.beta == 0 and self.reconstruction == 0:
            raise ValueError(
                "alpha, beta and reconstruction are all 0, so nothing rewards information in "
                "the code. Set alpha > 0 (global MI) or beta > 0 (local MI), or, for table "
                "rows, reconstruction > 0."
            )
        if self.reconstruction > 0 and layout.kind == "image":
            raise ValueError(
                f"reconstruction={self.reconstruction} rebuilds masked features of table "
                "rows, but X was read as images. Set reconstruction=0 for images, or pass "
                "the rows as a 2-D array without image_shape."
            )
        if self.local_scales == 2 and layout.kind != "image":
            raise ValueError(
                "local_scales=2 contrasts the code with the conv encoder's last conv layer "
                "too, but X was read as table rows (one local map). Set local_scales=1, or "
                "pass image_shape for flat images."
            )
        if self.local_scales == 2 and self.beta == 0:
            raise ValueError(
                "local_scales=2 adds a second map to the local term, but beta=0 turns that "
                "term off. Set beta > 0, or local_scales=1."
            )
        if self.temperature is not None and self.critic != "dot":
            raise ValueError(
                f"temperature={self.temperature} scales the cosines of dot-product critics, "
                f"but critic={self.critic!r}. Set critic='dot', or temperature=None."
            )
        if self.precision == "float16" and device.type != "cuda":
            raise ValueError(
                f"precision='float16' needs a CUDA device; training runs on {device}. Use "
                "precision='bfloat16' (CPUs and recent GPUs) or 'float32'."
            )
        if self.augment and layout.kind != "image":
            raise ValueError(
                "augment=True crops and flips images, but X was read as tabular rows. "
                "Pass image_shape for flat images, or set augment=False."
            )
        if self.delta > 0 and layout.kind != "image" and self.tabular_encoder == "mlp":
            raise ValueError(
                "delta > 0 asks for local-local MI between positions of the local map, but "
                "X was read as tabular rows and tabular_encoder='mlp' has one position. Use "
                "tabular_encoder='tokens' (a position per feature), pass image_shape for "
                "flat images, or set delta=0."
            )
        images = layout.kind == "image"
        if not images and self.tabular_encoder == "tokens":  # its size is bounded
            check_token_features(layout.channels, self.width)
        views = self.views
        if views == "auto":  # measured: two views win on images, lose on table rows
            views = 2 if images else 1
        if self.reconstruction > 0 and views == 2:
            raise ValueError(
                f"reconstruction={self.reconstruction} rebuilds each row from the code of a "
                "corrupted copy of it, which needs the rows themselves, but views=2 trains "
                "on two corrupted copies only. Set views=1 (or 'auto', one view for rows), "
                "or reconstruction=0."
            )
        if self.augment and views == 2:
            raise ValueError(
                "augment=True crops and flips the one view of views=1, but training would "
                f"use two views (views={self.views!r}), each already augmented (crop, flip, "
                "colour jitter, greyscale), so augment would change nothing. Set views=1 "
                "to train one augmented view, or augment=False."
            )
        flip = self.flip
        if flip == "auto":
            flip = auto_flip(layout)
        if flip and not images:
            raise ValueError(
                "flip=True mirrors images, but X was read as tabular rows. Pass image_shape "
                "for flat images, or leave flip='auto' (rows are never mirrored)."
            )
        precision = self.precision
        if precision == "auto":  # measured on images; tables keep float32 (tiny networks)
            precision = "bfloat16" if images and native_bfloat16(device) else "float32"
        return replace(self, views=views, flip=bool(flip), precision=precision)

    @property
    def weights(self) -> dict[str, float]:
        """Each loss term's weight, by :data:`TERM_NAMES`."""
        values = (getattr(self, name) for name in WEIGHT_NAMES)
        return dict(zip(TERM_NAMES, values, strict=True))

    @property
    def critic_hidden(self) -> int:
        """Width of the critics' hidden layers and embeddings: ``critic_width``, or
        ``8 * width`` where it is None."""
        return 8 * self.width if self.critic_width is None else self.critic_width
