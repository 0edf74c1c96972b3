"""The skorch side: one DIM training step, the batch iterator and the callbacks wiring."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Mapping

import numpy as np
import torch
from skorch import NeuralNet
from skorch.callbacks import LRScheduler, PassthroughScoring, ProgressBar
from torch import nn

from .callbacks import (
    BestEpochEarlyStopping,
    StopAtBatchEnd,
    StopRequest,
    TimeBudget,
    deferred_sigint,
    finish_history,
)
from .inputs import ArrayBatches, Layout, random_crop_flip
from .networks import ConvEncoder, DeepInfomaxModule, MLPEncoder, split_pairs
from .objectives import infonce_mi_loss
from .state import named_optimizer_state, set_named_optimizer_state

TERM_NAMES = ("global", "local", "prior", "local_local")


class DeepInfomaxLoss(nn.Module):
    """``alpha * global + beta * local + gamma * prior + delta * local_local``; terms with
    weight 0 are skipped."""

    def __init__(self, alpha: float, beta: float, gamma: float, delta: float = 0.0):
        super().__init__()
        self.weights = dict(zip(TERM_NAMES, (alpha, beta, gamma, delta), strict=True))

    @property
    def active_terms(self) -> tuple[str, ...]:
        return tuple(name for name, weight in self.weights.items() if weight > 0)

    def forward(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(self.weights[name] * value for name, value in terms.items())


def split_batches(n: int, batch_size: int) -> list[int]:
    """Sizes of the batches an epoch of n samples is cut into.

    ``ceil(n / batch_size)`` batches whose sizes differ by at most one, so that no sample is
    dropped and no batch is ever of one sample (which has no negatives), for any ``n >= 2``.

    Examples
    --------
    >>> split_batches(10, 4)
    [4, 3, 3]
    >>> split_batches(3, 2)
    [3]
    """
    if n < 2:
        raise ValueError(f"need at least 2 samples to form a batch with negatives; got {n}")
    n_batches = -(-n // batch_size)
    n_batches = min(n_batches, n // 2)
    base, extra = divmod(n, n_batches)
    return [base + 1] * extra + [base] * (n_batches - extra)


class ShuffledBatches:
    """Iterable over one epoch: shuffled, nearly equal batches of ``(X_batch, None)``.

    Used as skorch's ``iterator_train``. It draws the shuffle from torch's global RNG, which
    the estimator seeds, and it converts each batch in one vectorised step, which is faster
    than a ``DataLoader`` that fetches and collates sample by sample.
    """

    def __init__(self, dataset: ArrayBatches, batch_size: int, augment: bool = False):
        self.dataset = dataset
        self.sizes = split_batches(len(dataset), batch_size)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.sizes)

    def __iter__(self):
        order = torch.randperm(len(self.dataset)).numpy()
        bounds = np.cumsum([0, *self.sizes])
        for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
            # sorted rows read memory in order; the batch's content is what was drawn
            batch = self.dataset.take(np.sort(order[start:stop]))
            yield (random_crop_flip(batch) if self.augment else batch), None


class OrderedBatches:
    """Iterable over a dataset in order, in nearly equal batches: skorch's ``iterator_valid``."""

    def __init__(self, dataset: ArrayBatches, batch_size: int):
        self.dataset = dataset
        self.sizes = split_batches(len(dataset), batch_size)

    def __len__(self) -> int:
        return len(self.sizes)

    def __iter__(self):
        bounds = np.cumsum([0, *self.sizes])
        for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
            yield self.dataset.take(slice(int(start), int(stop))), None


class FixedSplit:
    """skorch ``train_split`` that keeps the training data whole and validates on a held-out
    dataset chosen beforehand (the estimator draws the split, reproducibly)."""

    def __init__(self, valid_dataset: ArrayBatches):
        self.valid_dataset = valid_dataset

    def __call__(self, dataset, y=None, **fit_params):
        return dataset, self.valid_dataset


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss and was stopped.

    Raised by ``fit`` and ``partial_fit`` at the first batch whose loss is not finite,
    before the optimiser step that would spread it into the weights. A first fit leaves the
    estimator unfitted; a continued fit leaves it exactly as it was before the call.
    """


class DeepInfomaxNet(NeuralNet):
    """skorch ``NeuralNet`` that trains a :class:`~dimlearn.networks.DeepInfomaxModule`.

    The module returns the loss terms of a batch, the criterion weighs them, and the terms are
    recorded per batch so that :class:`~skorch.callbacks.PassthroughScoring` reports their
    epoch means in the history next to ``train_loss``. A loss that is not finite stops
    training at once with :class:`NonFiniteLossError`. ``epochs_before`` (epochs that
    earlier calls ran) only numbers epochs in that error's message.
    """

    epochs_before = 0

    def train_step_single(self, batch, **fit_params):
        self._set_training(True)
        Xi, _ = batch
        Xi = Xi.to(self.device, non_blocking=True)
        terms = self.module_.terms(Xi, self.criterion_.active_terms)
        loss = self.criterion_(terms)
        values = {name: value.item() for name, value in terms.items()}
        self._check_finite(loss, values, "training")
        loss.backward()
        for name, value in values.items():
            self.history.record_batch(f"train_{name}", value)
        return {"loss": loss, "y_pred": None}

    def validation_step(self, batch, **fit_params):
        """The same weighted objective on a held-out batch, without gradients (eval mode)."""
        self._set_training(False)
        Xi, _ = batch
        with torch.no_grad():
            terms = self.module_.terms(Xi.to(self.device), self.criterion_.active_terms)
            loss = self.criterion_(terms)
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


def build_module(params: Mapping, layout: Layout) -> DeepInfomaxModule:
    """The encoder and critics for samples of ``layout``, from the estimator's parameters.

    ``params`` is ``DeepInfomaxTransformer.get_params()`` (or any mapping with its
    ``latent_dim``, ``width``, ``critic``, ``negatives``, ``mi_estimator``, ``prior`` and
    ``delta``). Weights are drawn from torch's global RNG.

    Examples
    --------
    >>> from dimlearn.inputs import resolve_layout
    >>> params = dict(latent_dim=8, width=4, critic="dot", negatives="all",
    ...               mi_estimator="infonce", prior="kl_mean", delta=0.0)
    >>> build_module(params, resolve_layout((16, 16, 3), None, "auto")).encoder.feature_dims
    {'conv': 64, 'fc': 64, 'code': 8}
    """
    latent_dim, width = params["latent_dim"], params["width"]
    if layout.kind == "tabular":
        encoder = MLPEncoder(layout.channels, latent_dim, width)
    else:
        height, width_px = layout.height_width
        encoder = ConvEncoder(layout.channels, height, width_px, latent_dim, width)
    return DeepInfomaxModule(
        encoder,
        latent_dim,
        critic_hidden=8 * width,
        critic=params["critic"],
        negatives=params["negatives"],
        mi_estimator=params["mi_estimator"],
        prior=params["prior"],
        local_local=params["delta"] > 0,
    )


def build_net(
    module,
    *,
    alpha,
    beta,
    gamma,
    max_epochs,
    max_time,
    batch_size,
    lr,
    device,
    verbose,
    augment=False,
    delta=0.0,
    lr_schedule="constant",
    valid_dataset=None,
    n_iter_no_change=10,
    tol=1e-4,
):
    """A :class:`DeepInfomaxNet` around an already built module, ready for ``fit(dataset)``.

    With ``valid_dataset``, the weighted objective is also computed on it after every epoch
    (``valid_loss``) and training stops once it has not improved by ``tol`` for
    ``n_iter_no_change`` epochs, restoring the weights and optimiser state of the best epoch
    (:class:`~dimlearn.callbacks.BestEpochEarlyStopping`). ``lr_schedule="cosine"`` anneals
    the learning rate to 0 over ``max_epochs`` (skorch's ``LRScheduler`` with
    ``CosineAnnealingLR``). ``net.stop_request``, set by a Ctrl-C during :func:`fit_net`,
    stops training at the end of a batch.
    """
    stop_request = StopRequest()
    criterion = DeepInfomaxLoss(alpha, beta, gamma, delta)
    callbacks = [
        (f"train_{name}", PassthroughScoring(name=f"train_{name}", on_train=True))
        for name in criterion.active_terms
    ]
    if lr_schedule == "cosine":
        callbacks.append(("lr_schedule", LRScheduler(policy="CosineAnnealingLR", T_max=max_epochs)))
    if valid_dataset is not None:
        callbacks.append(
            (
                "early_stopping",
                BestEpochEarlyStopping(
                    monitor="valid_loss",
                    patience=n_iter_no_change,
                    threshold=tol,
                    threshold_mode="abs",
                    load_best=True,
                ),
            )
        )
    if max_time is not None:
        callbacks.append(("time_budget", TimeBudget(max_time)))
    callbacks.append(("stop_request", StopAtBatchEnd(stop_request)))
    if verbose:
        callbacks.append(("progress_bar", ProgressBar()))
    net = DeepInfomaxNet(
        module,
        criterion=criterion,
        optimizer=torch.optim.Adam,
        lr=lr,
        max_epochs=max_epochs,
        batch_size=batch_size,
        iterator_train=ShuffledBatches,
        iterator_train__augment=augment,
        iterator_valid=OrderedBatches,
        train_split=None if valid_dataset is None else FixedSplit(valid_dataset),
        callbacks=callbacks,
        device=device,
        verbose=int(verbose),
    )
    net.stop_request = stop_request
    return net


def restore_training_state(net: DeepInfomaxNet, module_state: dict, optimizer_state) -> list[str]:
    """Load fitted weights and name-keyed Adam state into a freshly initialised net.

    Every fitted weight must have a place of the same shape in the new module (else a
    ``ValueError`` names the differing weights). Parts of the new module that the fitted
    one lacks keep their fresh weights; their names (``"global_critic"``...) are returned.
    """
    fresh = net.module_.state_dict()
    mismatched = sorted(
        key
        for key in module_state
        if key not in fresh or fresh[key].shape != module_state[key].shape
    )
    if mismatched:
        raise ValueError(
            "warm_start / partial_fit continues the fitted networks, but the current "
            "parameters build different ones (latent_dim, width, critic or image size "
            f"changed; differing weights: {', '.join(mismatched[:4])}"
            f"{', ...' if len(mismatched) > 4 else ''}). Restore those parameters, or set "
            "warm_start=False to train afresh."
        )
    net.module_.load_state_dict(module_state, strict=False)
    if optimizer_state is not None:
        set_named_optimizer_state(net.optimizer_, net.module_, optimizer_state)
    return sorted({key.split(".")[0] for key in fresh if key not in module_state})


def fit_net(net: DeepInfomaxNet, dataset: ArrayBatches) -> dict | None:
    """Train ``net`` on ``dataset`` (one call of skorch's ``partial_fit``), Ctrl-C-safe.

    A first Ctrl-C stops training at the end of the running batch (see
    :func:`~dimlearn.callbacks.deferred_sigint`); an epoch cut short by it or by the time
    budget is completed in the history (:func:`~dimlearn.callbacks.finish_history`), and a
    warning says where a Ctrl-C stopped. Returns the description of an epoch cut short, or
    None.
    """
    with deferred_sigint(net.stop_request):
        net.partial_fit(dataset, None)
    timer = dict(net.callbacks_).get("epoch_timer")
    if len(net.history) and "dur" not in net.history[-1] and timer is not None:
        net.history.record("dur", time.time() - timer.epoch_start_time_)
    cut = finish_history(net.history, len(split_batches(len(dataset), net.batch_size)))
    by_time = len(net.history) and net.history[-1].get("stopped_by_time", False)
    if net.stop_request.requested or (cut is not None and not by_time):
        _warn_interrupted(net, cut)
    return cut


def _warn_interrupted(net: DeepInfomaxNet, cut: dict | None) -> None:
    if cut is None:
        where = f"at the end of epoch {net.epochs_before + len(net.history)}"
    elif cut["batches"] == 0:
        where = f"before the first batch of epoch {net.epochs_before + cut['epoch']} ended"
    else:
        where = (
            f"in epoch {net.epochs_before + cut['epoch']}, after batch {cut['batches']} "
            f"of {cut['planned']}"
        )
    warnings.warn(
        f"Training was interrupted (Ctrl-C) {where}. The model keeps the weights trained "
        "so far; history_, n_iter_ and loss_curve_ count the partial epoch. Call fit with "
        "warm_start=True, or partial_fit, to go on training.",
        UserWarning,
        stacklevel=5,
    )


def trained_state(net: DeepInfomaxNet) -> tuple[nn.Module, dict]:
    """The trained module (on the CPU, eval mode) and its name-keyed Adam state."""
    return net.module_.to("cpu").eval(), named_optimizer_state(net.optimizer_, net.module_)


@torch.no_grad()
def encode(
    module: nn.Module, dataset: ArrayBatches, batch_size: int, device, level: str = "code"
) -> np.ndarray:
    """Features of every sample at ``level``, float32, batch by batch into one output array."""
    module.eval()
    encoder = module.encoder
    out = np.empty((len(dataset), encoder.feature_dims[level]), dtype=np.float32)
    for start in range(0, len(dataset), batch_size):
        features = encoder.features(
            dataset.take(slice(start, start + batch_size)).to(device), level
        )
        out[start : start + features.shape[0]] = features.cpu().numpy()
    return out


@torch.no_grad()
def local_mi_score(
    module: nn.Module, dataset: ArrayBatches, batch_size: int, device, code_chunk: int = 16
) -> float:
    """Held-out infoNCE lower bound on the local MI, in nats, averaged over samples.

    The dataset is cut in order into nearly equal batches (:func:`split_batches`); in a
    batch of B, every code mean is scored by the local critic against the local map of all B
    images at every position, and ``log B - infoNCE`` is that batch's bound. The batches'
    bounds are averaged, weighted by their sizes. Codes are scored ``code_chunk`` at a time,
    which bounds the memory of the concatenating critic's all-pairs scores.
    """
    module.eval()
    critic = module.local_critic
    total, count = 0.0, 0
    bounds = np.cumsum([0, *split_batches(len(dataset), batch_size)])
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        x = dataset.take(slice(int(start), int(stop))).to(device)
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
