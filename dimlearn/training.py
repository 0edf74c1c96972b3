"""The skorch side: one DIM training step, the batch iterator and the callbacks wiring."""

from __future__ import annotations

import time

import numpy as np
import torch
from skorch import NeuralNet
from skorch.callbacks import Callback, EarlyStopping, LRScheduler, PassthroughScoring, ProgressBar
from torch import nn

from .inputs import ArrayBatches, random_crop_flip
from .networks import split_pairs
from .objectives import infonce_mi_loss

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


class TimeBudget(Callback):
    """Stops training at the end of an epoch when the next one would overrun ``seconds``.

    The next epoch is predicted to take as long as the last; at least one epoch always runs.
    Stopping works as in skorch's ``EarlyStopping``: a ``KeyboardInterrupt`` that
    ``NeuralNet.fit`` catches, so the history and the module stay as after the last epoch.
    """

    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_train_begin(self, net, **kwargs):
        self.start_ = time.perf_counter()

    def on_epoch_end(self, net, **kwargs):
        elapsed = time.perf_counter() - self.start_
        if elapsed + net.history[-1, "dur"] > self.seconds:
            net.history.record("stopped_by_time", True)
            raise KeyboardInterrupt


class DeepInfomaxNet(NeuralNet):
    """skorch ``NeuralNet`` that trains a :class:`~dimlearn.networks.DeepInfomaxModule`.

    The module returns the loss terms of a batch, the criterion weighs them, and the terms are
    recorded per batch so that :class:`~skorch.callbacks.PassthroughScoring` reports their
    epoch means in the history next to ``train_loss``.
    """

    def train_step_single(self, batch, **fit_params):
        self._set_training(True)
        Xi, _ = batch
        Xi = Xi.to(self.device, non_blocking=True)
        terms = self.module_.terms(Xi, self.criterion_.active_terms)
        loss = self.criterion_(terms)
        loss.backward()
        for name, value in terms.items():
            self.history.record_batch(f"train_{name}", value.item())
        return {"loss": loss, "y_pred": None}

    def validation_step(self, batch, **fit_params):
        """The same weighted objective on a held-out batch, without gradients (eval mode)."""
        self._set_training(False)
        Xi, _ = batch
        with torch.no_grad():
            terms = self.module_.terms(Xi.to(self.device), self.criterion_.active_terms)
            loss = self.criterion_(terms)
        return {"loss": loss, "y_pred": None}


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
    ``n_iter_no_change`` epochs, restoring the weights of the best epoch (skorch's
    ``EarlyStopping``). ``lr_schedule="cosine"`` anneals the learning rate to 0 over
    ``max_epochs`` (skorch's ``LRScheduler`` with ``CosineAnnealingLR``).
    """
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
                EarlyStopping(
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
    if verbose:
        callbacks.append(("progress_bar", ProgressBar()))
    return DeepInfomaxNet(
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
