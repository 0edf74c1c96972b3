"""The Deep InfoMax objective: MI estimators and the prior term, as pure tensor functions.

Notation follows the documentation's page "The objective" (docs/objective.md): ``T(pos)``
are critic scores of matched pairs (x_i, z_i), ``T(neg)`` of mismatched pairs (x_j, z_i) of
other images j of the batch (one, ``x_pi(i)`` with ``pi`` a derangement, or all of them).
Every function here returns a scalar to *minimise*.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

LOG_2 = math.log(2.0)


def jsd_mi_loss(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon (negative sampling) MI loss, the Keras reference's estimator.

    ``softplus(-T(pos)).mean() + softplus(T(neg)).mean()``: binary cross-entropy with logits
    where matched pairs are labelled 1 and mismatched pairs 0. Its minimum is 0 (a critic that
    separates perfectly); a critic that scores everything 0 gives ``2 log 2``. ``2 log 2`` minus
    the loss is, up to a factor, the Jensen-Shannon lower bound on mutual information.

    Parameters
    ----------
    pos_scores, neg_scores : Tensor of any shape
        Critic logits for matched and mismatched pairs. Every element is one pair; the mean
        runs over all of them, so a local score map ``(B, h, w)`` is averaged over positions.

    Examples
    --------
    >>> import torch
    >>> round(jsd_mi_loss(torch.zeros(4), torch.zeros(4)).item(), 4)  # 2 log 2
    1.3863
    """
    return F.softplus(-pos_scores).mean() + F.softplus(neg_scores).mean()


def infonce_mi_loss(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> torch.Tensor:
    """infoNCE loss (the DIM paper's): softmax cross-entropy of each positive against its
    own negatives.

    For code i, ``-log( exp T(pos_i) / (exp T(pos_i) + sum_k exp T(neg_ik)) )``, averaged.
    ``log(K + 1)`` minus the loss is a lower bound on MI. A constant critic gives
    ``log(K + 1)``; a perfectly separating one gives 0.

    Parameters
    ----------
    pos_scores : Tensor of shape (B, ...)
    neg_scores : Tensor of shape (B, K, ...)
        K negatives per positive, at the same trailing positions.

    Examples
    --------
    >>> import torch
    >>> round(infonce_mi_loss(torch.zeros(4), torch.zeros(4, 3)).item(), 4)  # log 4
    1.3863
    """
    logits = torch.cat([pos_scores.unsqueeze(1), neg_scores], dim=1)
    return (torch.logsumexp(logits, dim=1) - pos_scores).mean()


def dv_mi_loss(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> torch.Tensor:
    """Donsker-Varadhan loss: ``-(E_pos[T] - log E_neg[exp T])``; the negated bound is the
    DV lower bound on MI (the KL form). A constant critic gives 0; it is unbounded below.

    Examples
    --------
    >>> import torch
    >>> dv_mi_loss(torch.zeros(4), torch.zeros(4, 1)).item()
    0.0
    """
    neg = neg_scores.flatten()
    log_mean_exp = torch.logsumexp(neg, dim=0) - math.log(neg.numel())
    return log_mean_exp - pos_scores.mean()


MI_ESTIMATORS = {"jsd": jsd_mi_loss, "infonce": infonce_mi_loss, "dv": dv_mi_loss}


def mi_loss(pos_scores: torch.Tensor, neg_scores: torch.Tensor, estimator: str = "jsd"):
    """An MI term: the chosen estimator's loss on a critic's scores, in float32.

    The global term passes the global critic's scores, the local terms the local critics'
    scores at every position of the local map (averaged over positions by the estimator).

    Parameters
    ----------
    pos_scores : Tensor of shape (B,) (global) or (B, h, w) (local)
        Scores of the matched pairs: ``T1(x_i, z_i)`` or ``T2(C_ij(x_b), z_b)``.
    neg_scores : Tensor of shape (B, K, ...) or, for K = 1, the shape of ``pos_scores``
        Scores of each code against K other images of the batch, at the same positions
        (the Keras reference: K = 1, the image ``pi(i)``).
    estimator : {"jsd", "infonce", "dv"}

    Examples
    --------
    >>> import torch
    >>> round(mi_loss(torch.zeros(4, 2, 2), torch.zeros(4, 3, 2, 2), "infonce").item(), 4)
    1.3863
    """
    # float32 whatever the autocast precision: log-sum-exp and softplus need the range
    pos_scores, neg_scores = pos_scores.float(), neg_scores.float()
    if neg_scores.dim() == pos_scores.dim():
        neg_scores = neg_scores.unsqueeze(1)
    return MI_ESTIMATORS[estimator](pos_scores, neg_scores)


class DeepInfomaxLoss(nn.Module):
    """The training criterion: ``alpha * global + beta * local + gamma * prior + delta *
    local_local + reconstruction * reconstruction``, from the terms a batch's forward pass
    returns.

    Terms of weight 0 are not requested from the module at all (:attr:`active_terms`), so
    their critics cost nothing.

    Examples
    --------
    >>> import torch
    >>> loss = DeepInfomaxLoss({"global": 0.5, "local": 0.0, "prior": 2.0})
    >>> loss.active_terms
    ('global', 'prior')
    >>> loss({"global": torch.tensor(1.0), "prior": torch.tensor(3.0)}).item()
    6.5
    """

    def __init__(self, weights: Mapping[str, float]):
        super().__init__()
        self.weights = dict(weights)

    @property
    def active_terms(self) -> tuple[str, ...]:
        return tuple(name for name, weight in self.weights.items() if weight > 0)

    def forward(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(self.weights[name] * value for name, value in terms.items())


def reconstruction_errors(predicted: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Per-row mean squared error, in float32, of rows reconstructed from the codes of their
    corrupted copies: the masked-feature reconstruction term (VIME's and the self-prediction
    objectives' of Rubachev et al., 2022) before its mean over the batch.

    Parameters
    ----------
    predicted, rows : Tensor of shape (B, n_features)
        The decoder's output and the standardised rows before corruption.

    Examples
    --------
    >>> import torch
    >>> reconstruction_errors(torch.zeros(2, 4), torch.ones(2, 4)).tolist()
    [1.0, 1.0]
    """
    return (predicted.float() - rows.float()).pow(2).mean(dim=1)


def prior_kl(mu: torch.Tensor, logvar: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """KL( N(mu, diag exp(logvar)) || N(0, I) ), summed over code dimensions (the VAE's
    form, and the Keras reference's text) or averaged (the Keras reference's code); always
    averaged over the batch.

    The mean is the sum divided by ``latent_dim``, so with ``reduction="mean"`` the same
    ``gamma`` weighs the prior ``latent_dim`` times less.

    Parameters
    ----------
    mu, logvar : Tensor of shape (B, latent_dim)
    reduction : {"sum", "mean"}

    Examples
    --------
    >>> import torch
    >>> prior_kl(torch.zeros(3, 5), torch.zeros(3, 5)).item()  # a standard normal code
    0.0
    """
    mu, logvar = mu.float(), logvar.float()  # exp() of a half-precision logvar overflows
    kl_per_dim = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)
    per_sample = kl_per_dim.sum(dim=1) if reduction == "sum" else kl_per_dim.mean(dim=1)
    return per_sample.mean()


def adversarial_prior_losses(
    prior_scores: torch.Tensor, code_scores_for_critic: torch.Tensor, code_scores: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The DIM paper's adversarial prior matching, as two losses to minimise together.

    A discriminator D learns to tell samples of the prior (label 1) from codes (label 0):
    ``softplus(-D(prior)) + softplus(D(code))``, with the codes detached so that this part
    trains D only. The encoder gets the non-saturating generator loss
    ``softplus(-D(code))``, scored by D with frozen weights so that it trains the encoder
    only. Summing the two lets one optimiser step play both sides of the game.

    Parameters
    ----------
    prior_scores : Tensor of shape (B,)
        D on samples of N(0, I).
    code_scores_for_critic : Tensor of shape (B,)
        D on the detached codes.
    code_scores : Tensor of shape (B,)
        Frozen D on the codes, with the gradient to the encoder.

    Returns
    -------
    discriminator_loss, generator_loss : Tensor
        The first is ``2 log 2`` for a discriminator that cannot tell; the second is
        ``log 2`` when the codes fool it half the time.

    Examples
    --------
    >>> import torch
    >>> d, g = adversarial_prior_losses(torch.zeros(4), torch.zeros(4), torch.zeros(4))
    >>> round(d.item(), 4), round(g.item(), 4)
    (1.3863, 0.6931)
    """
    discriminator = F.softplus(-prior_scores).mean() + F.softplus(code_scores_for_critic).mean()
    return discriminator, F.softplus(-code_scores).mean()


def sample_code(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reparameterised sample ``z = mu + exp(logvar / 2) * eps`` with ``eps ~ N(0, I)``:
    ``noise`` when given, else drawn from ``generator`` (torch's global RNG when None)."""
    if noise is None:
        noise = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + torch.exp(0.5 * logvar) * noise


def derangement(
    n: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None
) -> torch.Tensor:
    """A random permutation of ``range(n)`` without fixed points: a random cyclic shift.

    Negatives pair sample ``i`` with sample ``perm[i]``; a fixed point would be a "negative"
    that is really the positive. Batches are shuffled, so a cyclic shift by a random
    ``k in [1, n)`` pairs each sample with a random other one. Draws from ``generator``
    (torch's global RNG when None).

    Raises
    ------
    ValueError
        If ``n < 2``: a batch of one has no negatives.

    Examples
    --------
    >>> import torch
    >>> perm = derangement(5)
    >>> bool((perm != torch.arange(5)).all())
    True
    """
    if n < 2:
        raise ValueError(f"a batch of {n} sample(s) has no in-batch negatives; need at least 2")
    where = generator.device if generator is not None else "cpu"
    shift = int(torch.randint(1, n, (1,), generator=generator, device=where).item())
    return torch.roll(torch.arange(n, device=device), shifts=shift)
