"""The critics of Deep InfoMax and the other training-only heads, as ``nn.Module`` s.

The critics score pairs of an encoder's outputs (:mod:`dimlearn.networks`): a code with an
image's summary (global, T1), with each position of a local map (local, T2), a position with
another map (local-local, T3); the prior's discriminator scores codes, and the rows' decoder
rebuilds a table row from its code. How a batch's pairs are formed and split into matched and
mismatched ones (:func:`split_pairs`, :class:`WholeBatch`) is here too: the critics' scores
come in that layout.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from .networks import MAX_FLAT_WEIGHTS, flat_channels


def _map_summary(local_shape: tuple[int, int, int], hidden: int, head) -> nn.Sequential:
    """The global critics' image side: a 3x3 conv over C(x) to 64 channels, flattened, then
    ``head(n_in)`` (whose first layer has ``hidden`` units).

    On a one-column map (table rows' tokens, one position per feature) the conv keeps fewer
    channels where 64 per feature would give the head's first layer more than
    :data:`~dimlearn.networks.MAX_FLAT_WEIGHTS` weights
    (:func:`~dimlearn.networks.flat_channels`: over 1,024 features at ``width=64``).
    """
    channels, h, w = local_shape
    out = 64 if w > 1 else flat_channels(64, h, hidden)
    if out < 1:  # TokenEncoder refuses such tables first, naming the parameters to change
        raise ValueError(
            f"a local map of {h:,} positions is too long for a global critic of {hidden} "
            f"units: even one channel per position needs over {MAX_FLAT_WEIGHTS:,} weights"
        )
    return nn.Sequential(
        nn.Conv2d(channels, out, 3, padding=1), nn.ReLU(), nn.Flatten(), head(out * h * w)
    )


def _mlp(n_in: int, hidden: int, n_out: int, bias: bool = True) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, n_out, bias=bias))


NO_CANDIDATE_BIAS = """The embedding of the candidates (the images a code is told apart from, the
contexts a position is) ends without a bias: a bias b there adds b . g(z) to every candidate's
score for the same code alike, which infoNCE's softmax over the candidates ignores, so its
true gradient is 0 and Adam would turn float noise into lr-sized steps (see ConvEncoder)."""


class GlobalCritic(nn.Module):
    """T1(x, z), the Keras reference's concatenate-and-score form: an MLP on
    ``[summary of C(x), z]``.

    The first layer of the scoring MLP is split into a summary part and a code part (a sum,
    the same as acting on the concatenation), so each image and each code is embedded once
    and any pairing of them, shuffled or all pairs, costs only the rest of the MLP.
    """

    def __init__(self, local_shape: tuple[int, int, int], latent_dim: int, hidden: int):
        super().__init__()
        self.summary = _map_summary(local_shape, hidden, lambda n: nn.Linear(n, hidden))
        self.from_summary = nn.Linear(hidden, hidden)
        self.from_code = nn.Linear(latent_dim, hidden, bias=False)
        self.score = nn.Sequential(
            nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1)
        )

    def embed(self, local_map: torch.Tensor, z: torch.Tensor):
        """Image and code embeddings, each ``(B, hidden)``."""
        return self.from_summary(self.summary(local_map)), self.from_code(z)

    def pair_scores(self, image_part: torch.Tensor, code_part: torch.Tensor) -> torch.Tensor:
        """Scores of broadcast pairs: leading dims of the two parts broadcast together."""
        return self.score(image_part + code_part).squeeze(-1)

    def all_pair_scores(self, image_part: torch.Tensor, code_part: torch.Tensor) -> torch.Tensor:
        """``(B_code, B_image)`` scores of every code against every image."""
        return self.pair_scores(image_part.unsqueeze(0), code_part.unsqueeze(1))


class LocalCritic(nn.Module):
    """T2(C_ij, z), the Keras reference's form: 1x1 convolutions over ``[C(x), z tiled to h x w]``.

    The first 1x1 convolution is split into its map part and its code part, as in
    :class:`GlobalCritic`, so the code is never materialised h*w times.
    """

    def __init__(self, local_shape: tuple[int, int, int], latent_dim: int, hidden: int):
        super().__init__()
        channels = local_shape[0]
        self.from_map = nn.Conv2d(channels, hidden, 1)
        self.from_code = nn.Linear(latent_dim, hidden, bias=False)
        self.score = nn.Sequential(
            nn.ReLU(), nn.Conv2d(hidden, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, 1, 1)
        )

    def embed(self, local_map: torch.Tensor, z: torch.Tensor):
        """Map embedding ``(B, hidden, h, w)`` and code embedding ``(B, hidden, 1, 1)``."""
        return self.from_map(local_map), self.from_code(z)[:, :, None, None]

    def pair_scores(self, image_part: torch.Tensor, code_part: torch.Tensor) -> torch.Tensor:
        """Scores at every position of broadcast pairs, ``(*pairs, h, w)``."""
        summed = image_part + code_part
        lead, rest = summed.shape[:-3], summed.shape[-3:]
        scores = self.score(summed.reshape(-1, *rest))
        return scores.reshape(*lead, *rest[1:])

    def all_pair_scores(self, image_part: torch.Tensor, code_part: torch.Tensor) -> torch.Tensor:
        """``(B_code, B_image, h, w)``: the MLP runs on all B x B pairs at every position."""
        return self.pair_scores(image_part.unsqueeze(0), code_part.unsqueeze(1))


def _unit(embedding: torch.Tensor, dim: int, temperature: float | None) -> torch.Tensor:
    """The embedding scaled to unit length along ``dim`` and divided by the square root of
    ``temperature``, so that a dot product of two is a cosine over ``temperature``; as it is
    when ``temperature`` is None."""
    if temperature is None:
        return embedding
    return nn.functional.normalize(embedding, dim=dim) / temperature**0.5


class GlobalDotCritic(nn.Module):
    """T1(x, z) = f(summary of C(x)) . g(z), the official DIM code's encode-and-dot form.

    Scoring a pair is one dot product, so all B x B pairs of a batch cost one matrix product.
    With ``temperature``, f and g are normalised and the score is their cosine over it
    (bounded by ``1 / temperature``).
    """

    def __init__(
        self,
        local_shape: tuple[int, int, int],
        latent_dim: int,
        hidden: int,
        temperature: float | None = None,
    ):
        super().__init__()
        # NO_CANDIDATE_BIAS
        self.image_side = _map_summary(
            local_shape, hidden, lambda n: _mlp(n, hidden, hidden, False)
        )
        self.code_side = _mlp(latent_dim, hidden, hidden)
        self.temperature = temperature

    def embed(self, local_map: torch.Tensor, z: torch.Tensor):
        return (
            _unit(self.image_side(local_map), -1, self.temperature),
            _unit(self.code_side(z), -1, self.temperature),
        )

    def pair_scores(self, image_part: torch.Tensor, code_part: torch.Tensor) -> torch.Tensor:
        return (image_part * code_part).sum(-1)

    def all_pair_scores(self, image_part: torch.Tensor, code_part: torch.Tensor) -> torch.Tensor:
        """``(B_code, B_image)`` in one matrix product."""
        return code_part @ image_part.T


class LocalDotCritic(nn.Module):
    """T2(C_ij, z) = f(C_ij(x)) . g(z) with f a stack of 1x1 convolutions (with
    ``temperature``: their cosine over it, as :class:`GlobalDotCritic`)."""

    def __init__(
        self,
        local_shape: tuple[int, int, int],
        latent_dim: int,
        hidden: int,
        temperature: float | None = None,
    ):
        super().__init__()
        channels = local_shape[0]
        self.map_side = nn.Sequential(  # NO_CANDIDATE_BIAS
            nn.Conv2d(channels, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, hidden, 1, bias=False)
        )
        self.code_side = _mlp(latent_dim, hidden, hidden)
        self.temperature = temperature

    def embed(self, local_map: torch.Tensor, z: torch.Tensor):
        code = _unit(self.code_side(z), -1, self.temperature)
        return _unit(self.map_side(local_map), 1, self.temperature), code[:, :, None, None]

    def pair_scores(self, image_part: torch.Tensor, code_part: torch.Tensor) -> torch.Tensor:
        return (image_part * code_part).sum(-3)

    def all_pair_scores(self, image_part: torch.Tensor, code_part: torch.Tensor) -> torch.Tensor:
        """``(B_code, B_image, h, w)`` as one contraction over the embedding, never
        materialising the ``B x B x D x h x w`` products."""
        return torch.einsum("id,jdhw->ijhw", code_part[:, :, 0, 0], image_part)


class LocalLocalCritic(nn.Module):
    """T3(C_p(x), C(x')): does position p of one image come from the same image as a map?

    Dot-product form: ``f(C_p(x)) . mean_q g(C_q(x'))``, with f and g stacks of 1x1
    convolutions. The positive context of position p is the mean of g over the *other*
    positions of its own image (so a position never scores against itself); a negative
    context is the mean of g over all positions of another image. Every position against
    every image of the batch costs one contraction, as in :class:`LocalDotCritic`.
    """

    def __init__(self, local_shape: tuple[int, int, int], hidden: int):
        super().__init__()
        channels, h, w = local_shape
        if h * w < 2:
            raise ValueError(
                f"local-local MI needs a local map of at least 2 positions; this encoder's has "
                f"{h}x{w}. Set delta=0, or use larger images."
            )

        def side(bias=True):
            return nn.Sequential(
                nn.Conv2d(channels, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, hidden, 1, bias=bias)
            )

        self.position_side = side()
        self.context_side = side(bias=False)  # NO_CANDIDATE_BIAS

    def scores(self, local_map: torch.Tensor, negatives: str, perm=None, part=None):
        """Positive scores ``(B, h, w)`` and negative scores ``(B, K, h, w)`` of this
        process's rows (``part``, see :class:`WholeBatch`), negatives drawn from the whole
        batch."""
        part = part or WholeBatch(local_map.shape[0])
        positions = self.position_side(local_map)
        context = self.context_side(local_map)
        n_pos = context.shape[-2] * context.shape[-1]
        total = context.sum(dim=(2, 3))
        own = (total[:, :, None, None] - context) / (n_pos - 1)
        pos = (positions * own).sum(1)
        mean_context = part.gather(total / n_pos)
        if negatives == "shuffle":
            neg = (positions * mean_context[perm[part.rows]][:, :, None, None]).sum(1)
            return pos, neg.unsqueeze(1)
        full = torch.einsum("jd,idhw->ijhw", mean_context, positions)
        return pos, split_pairs(full, part.start)[1]


class PriorDiscriminator(nn.Module):
    """D(z) of the adversarial prior: an MLP scoring codes, high for samples of N(0, I)."""

    def __init__(self, latent_dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(latent_dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).squeeze(-1)

    def frozen(self, z: torch.Tensor) -> torch.Tensor:
        """D(z) with the weights detached: the gradient reaches z only."""
        weights = {name: value.detach() for name, value in self.named_parameters()}
        return torch.func.functional_call(self, weights, (z,))


class RowDecoder(nn.Module):
    """The masked-feature reconstruction head of table rows: an MLP from a code back to the
    row's ``n_features`` standardised values (training only; not used by ``transform``)."""

    def __init__(self, latent_dim: int, hidden: int, n_features: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, n_features)
        )

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        return self.net(code)


def split_pairs(full: torch.Tensor, offset: int = 0):
    """Split all-pairs scores ``full[i, j, ...]`` (code or position i against image j) into
    the matched pairs ``(b, ...)`` and the mismatched ones ``(b, B - 1, ...)``.

    Row i is sample ``offset + i`` of the batch of B images (``offset`` is where this
    process's rows start; 0 when all B are here, and the matched pairs are the diagonal).
    """
    n, n_images = full.shape[:2]
    matched = torch.zeros(n, n_images, dtype=torch.bool, device=full.device)
    matched[torch.arange(n), torch.arange(offset, offset + n)] = True
    return full[matched], full[~matched].reshape(n, n_images - 1, *full.shape[2:])


class WholeBatch:
    """Which rows of the training batch this process holds: here, all of them.

    Data-parallel training (:mod:`dimlearn.distributed`) gives each process a part of every
    batch with the same members: ``total`` (the batch's size), ``start`` and ``rows``
    (where this process's rows sit in it), ``gather`` (this process's rows of a tensor
    -> every process's, in batch order, with gradients flowing back to each process) and
    ``whole_batch_norm()`` (a context in which BatchNorm layers normalise with the whole
    batch's statistics; here there is nothing to do). The loss is computed on gathered
    scores, so it is the loss of the whole batch, and random draws are made for the whole
    batch and sliced, so they are the draws of one process.
    """

    start = 0

    def __init__(self, total: int):
        self.total = total
        self.rows = slice(0, total)

    @staticmethod
    def gather(tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    @staticmethod
    def whole_batch_norm():
        return contextlib.nullcontext()


CRITICS = {
    "concat": (GlobalCritic, LocalCritic),
    "dot": (GlobalDotCritic, LocalDotCritic),
}
