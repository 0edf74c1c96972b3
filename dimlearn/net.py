"""The skorch net that trains a Deep InfoMax module: one training step, one held-out step.

Its extra settings are constructor arguments (skorch's way of adding parameters to a net);
which callbacks it runs and on what data is decided by :func:`dimlearn.training.build_net`.
"""

from __future__ import annotations

import math

import torch
from skorch import NeuralNet
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .views import default_view, two_views


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss and was stopped.

    Raised by ``fit`` and ``partial_fit`` at the first batch whose loss is not finite,
    before the optimiser step that would spread it into the weights. A first fit leaves the
    estimator unfitted; a continued fit leaves it exactly as it was before the call. The
    message names the epoch, the batch, each term's value and what to try (a lower ``lr``,
    the input scale).

    Examples
    --------
    >>> import numpy as np
    >>> from dimlearn import DeepInfomaxTransformer, NonFiniteLossError
    >>> X = np.random.default_rng(0).random((64, 8, 8))
    >>> dim = DeepInfomaxTransformer(lr=1e6, max_epochs=2, width=4, latent_dim=8, random_state=0)
    >>> try:
    ...     dim.fit(X)
    ... except NonFiniteLossError:
    ...     print("stopped; fitted:", hasattr(dim, "module_"))
    stopped; fitted: False
    """


class FixedSplit:
    """skorch ``train_split`` that keeps the training data whole and validates on a held-out
    dataset chosen beforehand (the estimator draws the split, reproducibly)."""

    def __init__(self, valid_dataset):
        self.valid_dataset = valid_dataset

    def __call__(self, dataset, y=None, **fit_params):
        return dataset, self.valid_dataset


class DeepInfomaxNet(NeuralNet):
    """skorch ``NeuralNet`` that trains a :class:`~dimlearn.infomax.DeepInfomaxModule`.

    Batches arrive standardised on the net's device (the iterators of
    :mod:`dimlearn.inputs`); the module returns the loss terms of a batch, the criterion
    weighs them, and the terms are recorded per batch so that
    :class:`~skorch.callbacks.PassthroughScoring` reports their epoch means in the history
    next to ``train_loss``. A loss that is not finite stops training at once with
    :class:`NonFiniteLossError`.

    Parameters (beyond skorch's)
    ----------------------------
    augment : bool
        One augmented view of every training batch (views=1).
    views : {1, 2}
        2: the module gets two augmented views of every training batch, stacked
        (:func:`~dimlearn.views.two_views`); held-out batches are given as two identical views.
    augmentation : callable or None
        What draws a view: ``augmentation(batch, generator, part, flip)`` (the estimator's
        parameter); None: :func:`~dimlearn.views.default_view` of ``kind`` and ``views``.
    flip : bool
        Whether augmented images are mirrored at random (half of them).
    kind : {"image", "tabular"}
        What the samples are (which views suit them).
    channels_last : bool
        Image batches in NHWC memory order (faster convolutions on CUDA).
    generator : torch.Generator or None
        The training call's generator on the device: augmentation draws, and the module's
        (code samples, negatives, prior samples), passed to its ``forward`` in every step.
    precision : {"float32", "bfloat16", "float16"}
        Autocast of the forward pass; float16 adds a gradient scaler.
    ranks : dimlearn.distributed.Ranks or None
        The processes training together (data-parallel), or None.
    stop_request : dimlearn.callbacks.StopRequest or None
        Set by a Ctrl-C; read by the callback that stops at a batch's end.
    epochs_before : int
        Epochs that earlier calls ran (numbers epochs in error messages).
    """

    def __init__(
        self,
        module,
        *args,
        augment: bool = False,
        views: int = 1,
        augmentation=None,
        flip: bool = True,
        kind: str = "image",
        channels_last: bool = False,
        generator: torch.Generator | None = None,
        precision: str = "float32",
        ranks=None,
        stop_request=None,
        epochs_before: int = 0,
        **kwargs,
    ):
        super().__init__(module, *args, **kwargs)
        self.augment = augment
        self.views = views
        self.augmentation = augmentation
        self.flip = flip
        self.kind = kind
        self.channels_last = channels_last
        self.generator = generator
        self.precision = precision
        self.ranks = ranks
        self.stop_request = stop_request
        self.epochs_before = epochs_before

    def initialize(self):
        super().initialize()
        device_type = torch.device(self.device).type
        use_scaler = self.precision == "float16"
        self.scaler_ = torch.amp.GradScaler(device_type) if use_scaler else None
        return self

    def model_input(self, x: torch.Tensor, training: bool, part=None) -> torch.Tensor:
        """A standardised batch as the module's input: augmented in training, in the memory
        order the device prefers. ``part``: which rows of the whole batch these are
        (data-parallel training), so that augmentation draws for the whole batch."""
        if self.views == 2:
            if not training:
                return x.expand(2, *x.shape)
            return two_views(x, self.kind, self.generator, part, self.flip, self._view)
        if training and self.augment:
            x = self._view(x, self.generator, part, self.flip)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _view(self, batch: torch.Tensor, generator, part, flip: bool) -> torch.Tensor:
        """One view of a batch by the augmentation, checked to keep the batch's shape."""
        view = (self.augmentation or default_view(self.kind, self.views))(
            batch, generator, part, flip
        )
        if not isinstance(view, torch.Tensor) or view.shape != batch.shape:
            got = tuple(view.shape) if isinstance(view, torch.Tensor) else type(view).__name__
            raise ValueError(
                f"the augmentation returned {got} for a batch of shape {tuple(batch.shape)}; "
                "it must return one view of the batch, a tensor of the same shape."
            )
        return view

    def autocast(self):
        """Mixed precision for the forward pass and the loss, or nothing for float32."""
        dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(self.precision)
        device_type = torch.device(self.device).type
        return torch.autocast(device_type, dtype=dtype, enabled=dtype is not None)

    def train_step_single(self, batch, **fit_params):
        """One batch's forward and backward pass. In data-parallel training ``batch[1]`` is
        this process's part of the batch (passed to the module's ``forward``); the loss is
        the whole batch's."""
        self._set_training(True)
        part = batch[1]
        Xi = self.model_input(batch[0], training=True, part=part)
        with self.autocast():
            terms = self.module_(
                Xi, self.criterion_.active_terms, part=part, generator=self.generator
            )
            loss = self.criterion_(terms)
        values = {name: value.item() for name, value in terms.items()}
        self._check_finite(loss, values, "training")
        (loss if self.scaler_ is None else self.scaler_.scale(loss)).backward()
        for name, value in values.items():
            self.history.record_batch(f"train_{name}", value)
        return {"loss": loss, "y_pred": None}

    def train_step(self, batch, **fit_params):
        """skorch's step, or, in float16, the same with the gradient scaler's step."""
        if self.scaler_ is None:
            return super().train_step(batch, **fit_params)
        self._zero_grad_optimizer()
        step = self.train_step_single(batch, **fit_params)
        self.scaler_.step(self.optimizer_)
        self.scaler_.update()
        return step

    def validation_step(self, batch, **fit_params):
        """The same weighted objective on a held-out batch, without gradients (eval mode)."""
        self._set_training(False)
        with torch.no_grad(), self.autocast():
            Xi = self.model_input(batch[0], training=False)
            # every process scores whole held-out batches: no part
            terms = self.module_(Xi, self.criterion_.active_terms, generator=self.generator)
            loss = self.criterion_(terms)
        if self.ranks is not None:  # the same in every process: early stopping agrees
            loss = self.ranks.mean(loss)
        self._check_finite(loss, {n: v.item() for n, v in terms.items()}, "held-out")
        return {"loss": loss, "y_pred": None}

    def _check_finite(self, loss: torch.Tensor, terms: dict, where: str) -> None:
        value = loss.item()
        if math.isfinite(value):
            return
        epoch = self.epochs_before + len(self.history)
        batch = len(self.history[-1]["batches"])
        shown = ", ".join(f"{name}={term:.4g}" for name, term in terms.items())
        raise NonFiniteLossError(
            f"The {where} loss became {value} at epoch {epoch}, batch {batch} ({shown}); "
            "training stopped before the step that would spread it into the weights, and "
            "no weights of this call are kept. Try a lower lr (it is "
            f"{self.lr:g}; the default is 1e-3), and check the input scale: inputs are "
            "standardised per channel with the statistics of the first fit, so values far "
            "outside the range of that data, or a nearly constant channel, are the usual "
            "causes."
        )


def plain_module(net: DeepInfomaxNet) -> nn.Module:
    """The net's module without the ``torch.compile`` and ``DistributedDataParallel``
    wrappers (whose weights' names carry ``_orig_mod.`` and ``module.`` prefixes)."""
    module = getattr(net.module_, "_orig_mod", net.module_)
    return module.module if isinstance(module, DistributedDataParallel) else module
