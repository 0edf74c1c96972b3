"""Encoders (image, tabular) and the critics of Deep InfoMax, as ``nn.Module`` s.

Every encoder maps a batch to ``(local_map, mu, logvar)``: the local feature map C(x) of shape
``(B, c, h, w)`` that the local critic reads, and the Gaussian code's mean and log-variance.
"""

from __future__ import annotations

import torch
from torch import nn

MIN_IMAGE_SIDE = 8
"""The smallest image side the conv encoder accepts."""


INITIAL_LOGVAR = -4.0
"""Codes start nearly deterministic (std 0.14): with log-variance 0 at init, the sampling noise
drowns the code's signal and the critics see chance for several epochs."""


def code_head(in_features: int, latent_dim: int) -> nn.Linear:
    """Linear layer to ``(mu, logvar)``, log-variance biased to :data:`INITIAL_LOGVAR`."""
    head = nn.Linear(in_features, 2 * latent_dim)
    with torch.no_grad():
        head.bias[latent_dim:] = INITIAL_LOGVAR
    return head


LOCAL_MAP_MIN_SIDE = 4
"""The two convolutions before the local map halve a side only while it stays at least this
long, so small images keep a local map with positions to contrast."""


def conv_plan(height: int, width_px: int) -> list[dict]:
    """Kernel, stride and padding of the encoder's three convolutions, and the side they leave.

    The rule, per axis: each of the first two convolutions (which end at the local map)
    halves the side (4x4 kernel, stride 2) if the result is at least
    :data:`LOCAL_MAP_MIN_SIDE`, else keeps it (3x3 kernel, stride 1); the third halves it if
    the result is at least 2. Images of 16 pixels a side and more get the DIM paper's three
    stride-2 layers unchanged; smaller ones keep a 4x4 local map.

    ============  =========  ==========
    image         local map  last conv
    ============  =========  ==========
    8x8           4x4        2x2
    28x28         7x7        3x3
    32x32         8x8        4x4
    64x64         16x16      8x8
    96x96         24x24      12x12
    ============  =========  ==========

    Examples
    --------
    >>> [layer["side"] for layer in conv_plan(8, 8)]
    [(4, 4), (4, 4), (2, 2)]
    >>> [layer["side"] for layer in conv_plan(32, 32)]
    [(16, 16), (8, 8), (4, 4)]
    """
    plan, sides = [], (height, width_px)
    for least in (LOCAL_MAP_MIN_SIDE, LOCAL_MAP_MIN_SIDE, 2):
        halve = [side // 2 >= least for side in sides]
        plan.append(
            {
                "kernel": tuple(4 if h else 3 for h in halve),
                "stride": tuple(2 if h else 1 for h in halve),
                "padding": 1,
                "side": tuple(
                    side // 2 if h else side for side, h in zip(sides, halve, strict=True)
                ),
            }
        )
        sides = plan[-1]["side"]
    return plan


def _conv(n_in: int, n_out: int, layer: dict, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, layer["kernel"], layer["stride"], layer["padding"], bias=bias)


class _Encoder(nn.Module):
    """Shared by the encoders: ``to_local`` -> ``to_fc`` -> ``to_code``.

    The first ``n_conv_layers`` layers of ``to_fc`` end at the last conv layer (flattened):
    the "conv" feature level. ``feature_dims`` gives each level's width.
    """

    n_conv_layers = 0

    def features(self, x: torch.Tensor, level: str) -> torch.Tensor:
        """Features at ``level``: ``"conv"`` (last conv layer, flattened), ``"fc"`` or
        ``"code"`` (the code mean)."""
        hidden = self.to_local(x)
        if level == "conv":
            return self.to_fc[: self.n_conv_layers](hidden).flatten(1)
        fc = self.to_fc(hidden)
        return fc if level == "fc" else self.to_code(fc).chunk(2, dim=1)[0]


class ConvEncoder(_Encoder):
    """DCGAN-like image encoder of the official DIM code, scaled by ``width``.

    conv 4x4/2 (w) -> conv 4x4/2 (2w) + BN = local map -> conv 4x4/2 (4w) + BN -> fc (16w) + BN
    -> (mu, logvar). At ``width=64`` on 32x32 images this is the reference network:
    conv 64-128-256, fc 1024, local MI on the 8x8x128 map. On images under 16 pixels a side,
    convolutions that would shrink the local map below 4x4 keep the side instead (3x3, stride
    1): see :func:`conv_plan`. The layers directly before a BatchNorm have no bias: the
    normalisation subtracts it again, so its true gradient is 0, and Adam would turn the
    float noise in that gradient into steps of about ``lr`` that differ from one summation
    order (thread count, processor, number of processes) to the next.

    Examples
    --------
    >>> import torch
    >>> enc = ConvEncoder(in_channels=3, height=32, width_px=32, latent_dim=16, width=8)
    >>> [t.shape for t in enc(torch.zeros(2, 3, 32, 32))]
    [torch.Size([2, 16, 8, 8]), torch.Size([2, 16]), torch.Size([2, 16])]
    """

    def __init__(self, in_channels: int, height: int, width_px: int, latent_dim: int, width: int):
        super().__init__()
        first, second, third = conv_plan(height, width_px)
        self.local_shape = (2 * width, *second["side"])
        last_positions = third["side"][0] * third["side"][1]
        self.to_local = nn.Sequential(
            _conv(in_channels, width, first),
            nn.ReLU(),
            _conv(width, 2 * width, second, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
        )
        self.to_fc = nn.Sequential(
            _conv(2 * width, 4 * width, third, bias=False),
            nn.BatchNorm2d(4 * width),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(4 * width * last_positions, 16 * width, bias=False),
            nn.BatchNorm1d(16 * width),
            nn.ReLU(),
        )
        self.to_code = code_head(16 * width, latent_dim)
        self.n_conv_layers = 4
        conv_dims = 4 * width * last_positions
        self.feature_dims = {"conv": conv_dims, "fc": 16 * width, "code": latent_dim}

    def forward(self, x: torch.Tensor):
        local_map = self.to_local(x)
        mu, logvar = self.to_code(self.to_fc(local_map)).chunk(2, dim=1)
        return local_map, mu, logvar


def batch_norm_pairs(module: nn.Module):
    """``(layer, batch_norm)`` names of every layer directly followed by a BatchNorm layer
    in a ``Sequential`` of ``module`` (state-dict prefixes, e.g. ``"encoder.to_fc.0"``)."""
    for prefix, sequence in module.named_modules():
        if isinstance(sequence, nn.Sequential):
            children = list(sequence.named_children())
            for (name, _), (bn_name, after) in zip(children, children[1:], strict=False):
                if isinstance(after, nn.modules.batchnorm._BatchNorm):
                    dot = f"{prefix}." if prefix else ""
                    yield f"{dot}{name}", f"{dot}{bn_name}"


def fold_old_biases(state: dict, module: nn.Module) -> list[str]:
    """Make a state dict of networks built before dimlearn 0.3 fit ``module``, in place;
    returns the names of the biases it removed.

    A bias of a layer directly before a BatchNorm layer (which ``module`` builds without
    one) is folded into that BatchNorm layer's running mean: in eval mode ``BN(W x + b)``
    with running mean ``m`` equals ``BN(W x)`` with running mean ``m - b`` (up to the
    rounding of one float subtraction), and in training mode BatchNorm subtracts the batch
    mean, which removes ``b`` anyway. The biases of the critics' candidate embeddings (see
    :data:`NO_CANDIDATE_BIAS`) are dropped: they never change what infoNCE, ``score`` or
    ``transform`` compute.

    Examples
    --------
    >>> import torch
    >>> enc = MLPEncoder(n_features=3, latent_dim=2, width=1)
    >>> old = {**enc.state_dict(), "to_fc.0.bias": torch.ones(4)}
    >>> fold_old_biases(old, enc), old["to_fc.1.running_mean"].tolist()
    (['to_fc.0.bias'], [-1.0, -1.0, -1.0, -1.0])
    """
    removed = []
    for layer, batch_norm in batch_norm_pairs(module):
        bias = state.get(f"{layer}.bias")
        mean = state.get(f"{batch_norm}.running_mean")
        if bias is None or mean is None or module.get_submodule(layer).bias is not None:
            continue
        state[f"{batch_norm}.running_mean"] = mean - bias
        del state[f"{layer}.bias"]
        removed.append(f"{layer}.bias")
    for name, layer in module.named_modules():
        key = f"{name}.bias"
        if key in state and getattr(layer, "bias", 0) is None:
            del state[key]
            removed.append(key)
    return removed


MAX_FLAT_WEIGHTS = 2**25
"""The most weights (33.5 M, 128 MiB in float32) that a layer reading a whole table row's
feature map, flattened, may have: the token encoder's fc layer and the global critic's
summary of a one-column (table) local map keep fewer channels per feature before the
flattening where more would exceed it (:func:`flat_channels`). Image maps are never cut."""


def flat_channels(channels: int, positions: int, n_out: int) -> int:
    """How many of ``channels`` channels per position to keep before a map of
    ``positions`` positions (a table's features) is flattened into a layer of ``n_out``
    units: all of them while that layer has at most :data:`MAX_FLAT_WEIGHTS` weights, else
    the most that stay within it (0: not even one). A function of the sizes alone, so a
    model rebuilt from its parameters and input layout gets the same networks.

    Examples
    --------
    >>> flat_channels(64, 1000, 256), flat_channels(64, 5000, 256), flat_channels(64, 20000, 256)
    (64, 26, 6)
    """
    return min(channels, MAX_FLAT_WEIGHTS // (positions * n_out))


def max_token_features(width: int) -> int:
    """The most features ``tabular_encoder="tokens"`` takes at ``width``: 65,536 at 64.

    The global critic's summary (its first layer has the critics' ``8 * width`` units,
    :attr:`~dimlearn.config.TrainingConfig.critic_hidden`) reads at least one channel per
    feature and has at most :data:`MAX_FLAT_WEIGHTS` weights; the encoder's fc layer
    (``4 * width`` units) would take twice as many features.
    """
    return MAX_FLAT_WEIGHTS // (8 * width)


def check_token_features(n_features: int, width: int) -> None:
    """Raise ``ValueError`` naming what to change if ``n_features`` are more than
    :func:`max_token_features` at ``width``."""
    most = max_token_features(width)
    if n_features <= most:
        return
    widest = MAX_FLAT_WEIGHTS // (8 * n_features)
    narrower = f"width={widest} or less, " if widest >= 1 else ""
    raise ValueError(
        f"X has {n_features:,} features, more than the {most:,} that "
        f"tabular_encoder='tokens' takes at width={width}: its layers that read every "
        f"feature's token are bounded to {MAX_FLAT_WEIGHTS:,} weights, too few for one "
        f"channel per feature. Set {narrower}tabular_encoder='mlp', or reduce the features "
        f"to {most:,} or fewer (PCA, feature selection)."
    )


class FeatureTokens(nn.Module):
    """Each feature of a row embedded on its own: ``relu(x_i * w_i + b_i)`` with weights of
    its own, ``(B, F) -> (B, width, F, 1)``: one position of the local map per feature."""

    def __init__(self, n_features: int, width: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_features, width))
        self.bias = nn.Parameter(0.1 * torch.randn(n_features, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = torch.relu(x[:, :, None] * self.weight + self.bias)  # (B, F, width)
        return tokens.transpose(1, 2)[..., None]


class TokenEncoder(_Encoder):
    """Encoder for tabular rows in which every feature is a position of the local map.

    Each feature's value is embedded on its own (:class:`FeatureTokens`, ``width``
    channels), the embeddings of all features go through one fc layer of ``4 * width``
    units to the code. The local term then asks the code to tell apart, feature by feature,
    its own row's value from the other rows' (local MI has F positions to contrast, as the
    SAINT / FT-Transformer style of tokens gives it); the "conv" feature level is the
    embeddings, flattened.

    That fc layer reads all ``width * F`` embedding values, ``4 * width**2 * F`` weights.
    Where that is more than :data:`MAX_FLAT_WEIGHTS` (over 2,048 features at ``width=64``),
    a 1x1 convolution shared by all features first projects each embedding to the
    ``channels`` of :func:`flat_channels` (26 at 5,000 features and ``width=64``), so the fc
    layer keeps at most :data:`MAX_FLAT_WEIGHTS` weights; the local map stays the
    ``width``-channel embeddings. Narrower tables are built as before, without it. Where
    the global critic could not read one channel per feature (over
    :func:`max_token_features`: 65,536 features at ``width=64``), ``ValueError`` names
    the fix.

    Examples
    --------
    >>> import torch
    >>> enc = TokenEncoder(n_features=5, latent_dim=2, width=4)
    >>> [tuple(t.shape) for t in enc(torch.zeros(3, 5))]
    [(3, 4, 5, 1), (3, 2), (3, 2)]
    """

    def __init__(self, n_features: int, latent_dim: int, width: int):
        super().__init__()
        check_token_features(n_features, width)  # before any weight is drawn
        hidden = 4 * width
        channels = flat_channels(width, n_features, hidden)
        self.local_shape = (width, n_features, 1)
        self.to_local = FeatureTokens(n_features, width)
        # a bias before the fc layer would be removed by its BatchNorm (see ConvEncoder)
        projection = [nn.Conv2d(width, channels, 1, bias=False)] if channels < width else []
        self.to_fc = nn.Sequential(
            *projection,
            nn.Flatten(),
            nn.Linear(channels * n_features, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
        )
        self.to_code = code_head(hidden, latent_dim)
        self.feature_dims = {"conv": width * n_features, "fc": hidden, "code": latent_dim}

    def forward(self, x: torch.Tensor):
        local_map = self.to_local(x)
        mu, logvar = self.to_code(self.to_fc(local_map)).chunk(2, dim=1)
        return local_map, mu, logvar


class MLPEncoder(_Encoder):
    """Encoder for tabular rows: two hidden layers of ``4 * width`` units.

    The first hidden layer plays the part of the local map, as a ``1 x 1`` map with
    ``4 * width`` channels: on tabular data the local term is the MI between that
    intermediate representation and the code, and the global term the MI between a learned
    summary of it and the code. There are no positions to average over. Its "conv" feature
    level is that first hidden layer.
    """

    def __init__(self, n_features: int, latent_dim: int, width: int):
        super().__init__()
        hidden = 4 * width
        self.local_shape = (hidden, 1, 1)
        self.to_local = nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU())
        self.to_fc = nn.Sequential(
            nn.Linear(hidden, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU()
        )
        self.to_code = code_head(hidden, latent_dim)
        self.feature_dims = {"conv": hidden, "fc": hidden, "code": latent_dim}

    def forward(self, x: torch.Tensor):
        hidden = self.to_local(x)
        mu, logvar = self.to_code(self.to_fc(hidden)).chunk(2, dim=1)
        return hidden[:, :, None, None], mu, logvar


def _map_summary(local_shape: tuple[int, int, int], hidden: int, head) -> nn.Sequential:
    """The global critics' image side: a 3x3 conv over C(x) to 64 channels, flattened, then
    ``head(n_in)`` (whose first layer has ``hidden`` units).

    On a one-column map (table rows' tokens, one position per feature) the conv keeps fewer
    channels where 64 per feature would give the head's first layer more than
    :data:`MAX_FLAT_WEIGHTS` weights (:func:`flat_channels`: over 1,024 features at
    ``width=64``).
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
    batch with the same four members: ``total`` (the batch's size), ``start`` and ``rows``
    (where this process's rows sit in it) and ``gather`` (this process's rows of a tensor
    -> every process's, in batch order, with gradients flowing back to each process). The
    loss is computed on gathered scores, so it is the loss of the whole batch, and random
    draws are made for the whole batch and sliced, so they are the draws of one process.
    """

    start = 0

    def __init__(self, total: int):
        self.total = total
        self.rows = slice(0, total)

    @staticmethod
    def gather(tensor: torch.Tensor) -> torch.Tensor:
        return tensor


CRITICS = {
    "concat": (GlobalCritic, LocalCritic),
    "dot": (GlobalDotCritic, LocalDotCritic),
}
