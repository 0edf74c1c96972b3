"""The Deep InfoMax module: an encoder and its critics, turning a batch into the loss terms.

The networks are in :mod:`dimlearn.networks` (encoders) and :mod:`dimlearn.critics`, the
estimators and the prior in :mod:`dimlearn.objectives`; this module pairs codes with images
(positives and in-batch negatives) and asks each critic and estimator for its term. It also
holds the builder of the module from a :class:`~dimlearn.settings.Settings` and a layout,
and the one table of which part of the module each loss term trains.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from .critics import (
    CRITICS,
    LocalLocalCritic,
    PriorDiscriminator,
    RowDecoder,
    WholeBatch,
    split_pairs,
)
from .inputs import Layout
from .networks import (
    ConvEncoder,
    MLPEncoder,
    TokenEncoder,
    check_encoder,
    check_encoder_output,
)
from .networks import fold_old_biases as fold_biases
from .objectives import (
    adversarial_prior_losses,
    derangement,
    mi_loss,
    prior_kl,
    reconstruction_errors,
    sample_code,
)
from .settings import Settings
from .views import corrupt_rows


def contrast(critic: nn.Module, local_map, z, negatives: str, perm=None, part=None):
    """Critic scores of matched pairs ``(b, ...)`` and mismatched pairs ``(b, K, ...)`` for
    the codes of this process's rows (``part``; all B rows by default).

    Every code z_i is contrasted with its own image (positive) and with other images of the
    batch: one, ``x_perm[i]`` (``negatives="shuffle"``, the Keras reference's, K = 1), or
    all B - 1 of them (``negatives="all"``, the DIM paper's). A sample is never its own negative.
    """
    part = part or WholeBatch(local_map.shape[0])
    image_part, code_part = critic.embed(local_map, z)
    images = part.gather(image_part)  # the negatives come from the whole batch
    if negatives == "shuffle":
        pos = critic.pair_scores(image_part, code_part)
        return pos, critic.pair_scores(images[perm[part.rows]], code_part).unsqueeze(1)
    # full[i, j] = T(x_j, z_i): row i holds every image scored against code i
    return split_pairs(critic.all_pair_scores(images, code_part), part.start)


class DeepInfomaxModule(nn.Module):
    """Encoder plus critics; ``forward`` (= ``terms``) returns the loss terms of a batch.

    Parameters
    ----------
    encoder : nn.Module
        An encoder of the contract of :mod:`dimlearn.networks`.
    latent_dim : int
    critic_hidden : int
        Width of both critics' hidden layers (and of the dot critics' embeddings).
    critic : {"concat", "dot"}
    negatives : {"shuffle", "all"}
    mi_estimator : {"jsd", "infonce", "dv"}
    prior : {"kl", "kl_mean", "adversarial"}
        How the "prior" term matches codes to N(0, I): KL summed or averaged over code
        dimensions, or a discriminator (built only for ``"adversarial"``).
    local_local : bool
        Build the local-local critic (the ``"local_local"`` term).
    views : {1, 2}
        Views per image that :meth:`terms` receives.
    temperature : float or None
        Dot critics only: scores are cosines of the embeddings over it.
    reconstruction : bool
        Build the decoder of the ``"reconstruction"`` term (each row rebuilt from the code of
        a SCARF-corrupted copy of it) for an encoder of table rows (one with ``n_features``).
    local_scales : {1, 2}
        2: build a second local critic on the conv encoder's last conv map (its
        ``conv_shape``; the local term is then the mean over the two maps).
    """

    def __init__(
        self,
        encoder: nn.Module,
        latent_dim: int,
        critic_hidden: int,
        critic: str = "concat",
        negatives: str = "shuffle",
        mi_estimator: str = "jsd",
        prior: str = "kl",
        local_local: bool = False,
        views: int = 1,
        temperature: float | None = None,
        reconstruction: bool = False,
        local_scales: int = 1,
    ):
        super().__init__()
        self.views = views
        self.encoder = encoder
        global_cls, local_cls = CRITICS[critic]
        scale = {} if temperature is None else {"temperature": temperature}
        self.global_critic = global_cls(encoder.local_shape, latent_dim, critic_hidden, **scale)
        self.local_critic = local_cls(encoder.local_shape, latent_dim, critic_hidden, **scale)
        # optional parts are created after the others, so that adding them leaves the
        # initial weights of the rest unchanged for a given seed
        if local_local:
            self.local_local_critic = LocalLocalCritic(encoder.local_shape, critic_hidden)
        if prior == "adversarial":
            self.prior_discriminator = PriorDiscriminator(latent_dim, critic_hidden)
        n_features = getattr(encoder, "n_features", None)  # table rows only
        if reconstruction and n_features is not None:
            self.decoder = RowDecoder(latent_dim, critic_hidden, n_features)
        conv_shape = getattr(encoder, "conv_shape", None)  # the conv encoder only
        if local_scales == 2 and conv_shape is not None:
            self.conv_local_critic = local_cls(conv_shape, latent_dim, critic_hidden, **scale)
        self.negatives = negatives
        self.mi_estimator = mi_estimator
        self.prior = prior

    views: int = 1
    """Views per image in a training batch: 1, or 2 for two-view training (set by the
    builder from ``config.views.views``)."""

    def forward(
        self,
        x: torch.Tensor,
        names: tuple[str, ...],
        *,
        part=None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """The training step's loss terms: :meth:`terms`. Training calls the module itself,
        so that ``torch.compile`` and data-parallel wrappers, which wrap ``forward``, wrap
        the whole step; the code means come from ``encoder.features``.

        In data-parallel training ``part`` (a :class:`~dimlearn.distributed.BatchPart`)
        also makes the BatchNorm layers normalise with the whole batch's statistics for
        the duration of the call (its ``whole_batch_norm()``; a no-op unless
        :func:`~dimlearn.distributed.synchronised_batch_norm` hooked the layers)."""
        with contextlib.nullcontext() if part is None else part.whole_batch_norm():
            return self.terms(x, names, part=part, generator=generator)

    def terms(
        self,
        x: torch.Tensor,
        names: tuple[str, ...],
        *,
        part=None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """The requested loss terms (``"global"``, ``"local"``, ``"local_local"``,
        ``"prior"``, ``"reconstruction"``) on one batch.

        Terms whose weight is zero are not requested, so their critics cost nothing. Code
        samples, negatives, prior samples and row corruptions are drawn from ``generator``
        (on the batch's device; torch's global RNG when None). In data-parallel training
        ``x`` is this process's part of the batch, ``part`` says which rows of it (None:
        ``x`` is the whole batch, :class:`~dimlearn.critics.WholeBatch`); every term is
        still the whole batch's, identical in every process. With
        :attr:`views` = 2, ``x`` stacks two views of the batch, ``(2, B, ...)``: the code of
        each view is contrasted with the other view's local map (AMDIM's form of DIM), and
        each term is the mean over the two directions (the prior and local-local terms:
        over the two views). The reconstruction term (table rows, one view) encodes a
        SCARF-corrupted copy of each row and asks the decoder to give back the row from
        its code mean. With a ``conv_local_critic`` (``local_scales=2``), the local term
        is the mean of the local map's and the last conv map's (each code against the same
        view's maps as above).
        """
        views = list(x) if self.views == 2 else [x]
        part = part or WholeBatch(views[0].shape[0])
        conv_critic = getattr(self, "conv_local_critic", None)  # local_scales=2 only
        two_scales = conv_critic is not None and "local" in names
        if two_scales:  # (local map, conv map, mu, logvar) each
            with_conv = [self.encoder.with_conv_map(view) for view in views]
            encoded = [(local_map, mu, logvar) for local_map, _, mu, logvar in with_conv]
            conv_maps = [conv_map for _, conv_map, _, _ in with_conv]
        else:
            encoded = [self.encoder(view) for view in views]  # (local map, mu, logvar) each
        out = {}
        needs_z = "global" in names or "local" in names
        needs_perm = needs_z or "local_local" in names

        def normal_draws(like):  # N(0, I) for the whole batch, this process's rows of it
            shape = (part.total, like.shape[1])
            noise = torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)
            return noise[part.rows]

        codes = [None] * len(views)
        if needs_z or self.prior == "adversarial":
            codes = [sample_code(mu, logvar, noise=normal_draws(mu)) for _, mu, logvar in encoded]
        perm = None
        if needs_perm and self.negatives == "shuffle":
            perm = derangement(part.total, device=views[0].device, generator=generator)
        # the code of view k against the local map of the next view (itself with one view)
        pairs = [(codes[k], encoded[(k + 1) % len(views)][0]) for k in range(len(views))]

        def mean(values):
            return sum(values) / len(values)

        def mi_term(critic, code_map_pairs):
            losses = []
            for z, local_map in code_map_pairs:
                pos, neg = contrast(critic, local_map, z, self.negatives, perm, part)
                losses.append(mi_loss(part.gather(pos), part.gather(neg), self.mi_estimator))
            return mean(losses)

        for name, critic in (("global", self.global_critic), ("local", self.local_critic)):
            if name in names:
                out[name] = mi_term(critic, pairs)
        if two_scales:
            conv_pairs = [(codes[k], conv_maps[(k + 1) % len(views)]) for k in range(len(views))]
            out["local"] = (out["local"] + mi_term(conv_critic, conv_pairs)) / 2
        if "local_local" in names:
            losses = []
            for local_map, _, _ in encoded:
                pos, neg = self.local_local_critic.scores(local_map, self.negatives, perm, part)
                losses.append(mi_loss(part.gather(pos), part.gather(neg), self.mi_estimator))
            out["local_local"] = mean(losses)
        if "prior" in names:
            out["prior"] = mean(
                [
                    self._prior(mu, logvar, z, part, normal_draws)
                    for (_, mu, logvar), z in zip(encoded, codes, strict=True)
                ]
            )
        if "reconstruction" in names:
            rows = views[0]
            _, mu, _ = self.encoder(corrupt_rows(rows, generator, part))
            errors = reconstruction_errors(self.decoder(mu), rows)
            out["reconstruction"] = part.gather(errors).mean()
        return out

    def _prior(self, mu, logvar, z, part, normal_draws):
        if self.prior == "adversarial":
            disc = self.prior_discriminator
            d_loss, g_loss = adversarial_prior_losses(
                part.gather(disc(normal_draws(mu))),
                part.gather(disc(z.detach())),
                part.gather(disc.frozen(z)),
            )
            return d_loss + g_loss
        reduction = "mean" if self.prior == "kl_mean" else "sum"
        return prior_kl(part.gather(mu), part.gather(logvar), reduction)


# -- the module from a config, and which parts of it each term trains ---------------------


ALWAYS_KEPT = ("encoder", "local_critic")
"""The parts every fitted model keeps: what ``transform`` (the encoder) and ``score`` (the
local critic) read."""

OPTIONAL_PARTS = (
    "global_critic",
    "local_local_critic",
    "prior_discriminator",
    "decoder",
    "conv_local_critic",
)
"""Parts kept only while a term trains them: a part no term trains keeps its random initial
weights, so keeping it would only make model files larger."""


def trained_parts(config: Settings) -> set[str]:
    """The parts of the module that the loss of ``config`` trains (the table of which part
    each term needs: global -> global critic, local -> local critic (and the conv map's,
    with ``local_scales=2``), local-local -> its critic, an adversarial prior -> the
    discriminator, reconstruction -> the decoder; every term trains the encoder)."""
    weights = config.objective.weights
    parts = {"encoder"}
    if weights["global"] > 0:
        parts.add("global_critic")
    if weights["local"] > 0:
        parts.add("local_critic")
        if config.architecture.local_scales == 2:
            parts.add("conv_local_critic")
    if weights["local_local"] > 0:
        parts.add("local_local_critic")
    if weights["prior"] > 0 and config.objective.prior == "adversarial":
        parts.add("prior_discriminator")
    if weights["reconstruction"] > 0:
        parts.add("decoder")
    return parts


def kept_parts(config: Settings) -> set[str]:
    """The parts a model fitted with ``config`` keeps: those always kept and those trained."""
    return set(ALWAYS_KEPT) | trained_parts(config)


def build_module(config: Settings, layout: Layout) -> DeepInfomaxModule:
    """The encoder and critics for samples of ``layout``. Weights are drawn from torch's
    global RNG.

    Examples
    --------
    >>> from dimlearn import DeepInfomaxTransformer
    >>> from dimlearn.inputs import resolve_layout
    >>> config = Settings.from_params(DeepInfomaxTransformer(width=4).get_params())
    >>> module = build_module(config, resolve_layout((16, 16, 3), None, "auto"))
    >>> module.encoder.feature_dims
    {'conv': 64, 'fc': 64, 'code': 64}
    """
    encoder = build_encoder(config, layout)
    return DeepInfomaxModule(
        encoder,
        config.architecture.latent_dim,
        critic_hidden=config.architecture.critic_hidden,
        critic=config.objective.critic,
        negatives=config.objective.negatives,
        mi_estimator=config.objective.mi_estimator,
        prior=config.objective.prior,
        local_local=config.objective.delta > 0,
        views=config.views.views
        if isinstance(config.views.views, int)
        else 1,  # "auto": not training
        temperature=config.objective.temperature,
        reconstruction=config.objective.reconstruction > 0,
        local_scales=config.architecture.local_scales,
    )


def build_encoder(config: Settings, layout: Layout) -> nn.Module:
    """The encoder for samples of ``layout``: dimlearn's (``encoder="auto"``), or the one
    the ``encoder`` parameter builds, called with the sizes of the samples, ``latent_dim``
    and ``width`` as keywords and checked against the contract of :mod:`dimlearn.networks`
    (its output on two samples of zeros too, unless it is built on the ``meta`` device).

    Examples
    --------
    >>> from dimlearn import DeepInfomaxTransformer
    >>> from dimlearn.inputs import resolve_layout
    >>> config = Settings.from_params(DeepInfomaxTransformer(width=4).get_params())
    >>> type(build_encoder(config, resolve_layout((5,), None, "auto"))).__name__
    'TokenEncoder'
    """
    architecture = config.architecture
    if layout.kind == "tabular":
        sizes = {"n_features": layout.channels}
    else:
        height, width_px = layout.height_width
        sizes = {"in_channels": layout.channels, "height": height, "width_px": width_px}
    build = architecture.encoder
    if build == "auto":
        if layout.kind == "image":
            build = ConvEncoder
        else:
            build = TokenEncoder if architecture.tabular_encoder == "tokens" else MLPEncoder
    encoder = build(**sizes, latent_dim=architecture.latent_dim, width=architecture.width)
    if architecture.encoder == "auto":
        return encoder
    # on the meta device: a fitted model rebuilt to take its weights, whose feature_level may
    # have been set to one its encoder lacks after the fit (transform says so)
    training = not any(t.is_meta for t in (*encoder.parameters(), *encoder.buffers()))
    check_encoder(
        encoder,
        latent_dim=architecture.latent_dim,
        local_scales=architecture.local_scales if layout.kind == "image" else 1,
        feature_level=config.data.feature_level if training else "code",
    )
    if training:
        check_encoder_output(encoder, torch.zeros(2, *sizes.values()), architecture.latent_dim)
    return encoder


def keep_parts(module: nn.Module, parts: set[str]) -> nn.Module:
    """Remove (in place) the optional parts not in ``parts``; returns the module."""
    for name in OPTIONAL_PARTS:
        if name not in parts and getattr(module, name, None) is not None:
            setattr(module, name, None)
    return module


def module_from_state(
    config: Settings, layout: Layout, state: dict, *, fold_old_biases: bool = False
) -> tuple:
    """The networks of ``config`` and ``layout`` holding the weights ``state`` (a
    ``state_dict`` of the parts it has). With ``fold_old_biases`` (networks of dimlearn 0.2,
    :func:`~dimlearn.upgrades.folds_old_biases`) the biases before a BatchNorm layer are
    folded into it (:func:`~dimlearn.networks.fold_old_biases`); otherwise such a bias is
    a weight the networks do not have, and refused. Returns the module (in eval mode) and
    the names of the folded biases.

    The networks are first built on the ``meta`` device, where they hold shapes and dtypes
    but no memory, and every weight's shape and dtype is compared with ``state`` before
    anything is allocated: the module then takes ``state``'s tensors themselves. So the
    memory a model from a file or a pickle takes is that of the tensors it holds, never
    what its parameters (``width``, an image shape) would ask for.

    Raises ``ValueError`` naming the weights that do not fit the networks.
    """
    with torch.device("meta"):
        module = build_module(config, layout)
    state = dict(state)
    present = {key.split(".")[0] for key in state}
    keep_parts(module, present)
    folded = fold_biases(state, module) if fold_old_biases else []
    expected = module.state_dict()
    wrong = sorted(
        f"{key} is {_described(state.get(key))}, {_described(value)} by the parameters"
        for key, value in expected.items()
        if not isinstance(state.get(key), torch.Tensor)
        or state[key].shape != value.shape
        or state[key].dtype != value.dtype
    )
    extra = sorted(set(state) - set(expected))
    if wrong or extra:
        shown = "; ".join(wrong[:3] + [f"{key} (not in the networks)" for key in extra[:3]])
        raise ValueError(
            f"the weights do not fit the networks the parameters describe: {shown}"
            f"{' ...' if len(wrong) + len(extra) > 3 else ''}"
        )
    module.load_state_dict(state, assign=True)  # the tensors themselves: no second copy
    left = [name for name, t in (*module.named_parameters(), *module.named_buffers()) if t.is_meta]
    if left:  # every tensor comes from state; this guards the builder, not the file
        raise ValueError(f"no weights for {left[:3]}")
    return module.eval(), folded


def _described(tensor) -> str:
    if not isinstance(tensor, torch.Tensor):
        return "missing" if tensor is None else f"a {type(tensor).__name__}"
    return f"{tuple(tensor.shape)} {str(tensor.dtype).removeprefix('torch.')}"
