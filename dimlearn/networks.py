"""The encoders of Deep InfoMax (images, table rows), as ``nn.Module`` s.

Every encoder maps a batch to ``(local_map, mu, logvar)``: the local feature map C(x) of shape
``(B, c, h, w)`` that the local critic reads, and the Gaussian code's mean and log-variance.
What reads them during training (the critics, the prior's discriminator, the rows' decoder)
is in :mod:`dimlearn.critics`.

The contract of an encoder, which one of your own (the estimator's ``encoder`` parameter)
keeps too, and which :func:`check_encoder` checks right after building it:

- ``forward(x)``, ``x`` a standardised batch (``(B, C, H, W)`` images, ``(B, F)`` rows),
  returns ``(local_map, mu, logvar)``: ``(B, c, h, w)``, ``(B, latent_dim)``,
  ``(B, latent_dim)``;
- ``local_shape``: ``(c, h, w)``, the local map of one sample;
- ``feature_dims``: ``{"code": latent_dim}``, and the widths of the other levels it gives
  (``"fc"``, ``"conv"``) through ``features(x, level)`` (``feature_level``);
- for ``local_scales=2``: ``with_conv_map(x)``, returning ``(local_map, conv_map, mu,
  logvar)``, and ``conv_shape``, the ``(c, h, w)`` of ``conv_map``.
"""

from __future__ import annotations

from collections.abc import Mapping

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

    :meth:`to_conv` maps the local map to the "conv" feature level (flattened);
    ``feature_dims`` gives each level's width.
    """

    def to_conv(self, local_map: torch.Tensor) -> torch.Tensor:
        """The map of the "conv" feature level: the local map itself (table rows)."""
        return local_map

    def features(self, x: torch.Tensor, level: str) -> torch.Tensor:
        """Features at ``level``: ``"conv"`` (last conv layer, flattened), ``"fc"`` or
        ``"code"`` (the code mean)."""
        hidden = self.to_local(x)
        if level == "conv":
            return self.to_conv(hidden).flatten(1)
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

    Its stages: ``to_local`` (the image to the local map), ``to_fc`` (the local map to the
    fc layer) and ``to_code``. ``to_fc`` holds the last conv layer and the fc layer in one
    ``Sequential``, as the weights' names in model files (``to_fc.0.weight``) have it;
    :meth:`to_conv` and :meth:`conv_to_fc` are its two parts, cut at its ``Flatten``
    (found in the layers, so a subclass may change them).

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
        self.conv_shape = (4 * width, *third["side"])
        conv_dims = 4 * width * last_positions
        self.feature_dims = {"conv": conv_dims, "fc": 16 * width, "code": latent_dim}

    def forward(self, x: torch.Tensor):
        local_map = self.to_local(x)
        mu, logvar = self.to_code(self.to_fc(local_map)).chunk(2, dim=1)
        return local_map, mu, logvar

    def _flatten_at(self) -> int:
        return next(i for i, layer in enumerate(self.to_fc) if isinstance(layer, nn.Flatten))

    def to_conv(self, local_map: torch.Tensor) -> torch.Tensor:
        """The last conv layer's map (after its BatchNorm and ReLU, :attr:`conv_shape`):
        the layers of ``to_fc`` before its ``Flatten``."""
        return self.to_fc[: self._flatten_at()](local_map)

    def conv_to_fc(self, conv_map: torch.Tensor) -> torch.Tensor:
        """The fc layer from the last conv layer's map: the rest of ``to_fc``."""
        return self.to_fc[self._flatten_at() :](conv_map)

    def with_conv_map(self, x: torch.Tensor):
        """``(local_map, conv_map, mu, logvar)``: :meth:`forward` with the last conv layer's
        map (:meth:`to_conv`, :attr:`conv_shape`), which ``local_scales=2`` contrasts with
        the code too."""
        local_map = self.to_local(x)
        conv_map = self.to_conv(local_map)
        mu, logvar = self.to_code(self.conv_to_fc(conv_map)).chunk(2, dim=1)
        return local_map, conv_map, mu, logvar


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
    :data:`~dimlearn.critics.NO_CANDIDATE_BIAS`) are dropped: they never change what
    infoNCE, ``score`` or ``transform`` compute.

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
    :attr:`~dimlearn.settings.Architecture.critic_hidden`) reads at least one channel per
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
        self.n_features = n_features
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
        self.n_features = n_features
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


def _is_shape(value) -> bool:
    return (
        isinstance(value, tuple | list)
        and len(value) == 3
        and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in value)
    )


def check_encoder(
    encoder, *, latent_dim: int, local_scales: int = 1, feature_level: str = "code"
) -> None:
    """Raise ``ValueError`` naming what is missing if ``encoder`` (built by the
    estimator's ``encoder`` parameter) lacks a part of the contract (this module's
    docstring) that training with these settings needs: ``local_shape``, ``feature_dims``
    with ``"code": latent_dim`` (and ``feature_level`` with a ``features`` method), and
    ``with_conv_map`` and ``conv_shape`` for ``local_scales=2``.

    Examples
    --------
    >>> check_encoder(ConvEncoder(3, 32, 32, latent_dim=8, width=4), latent_dim=8)
    >>> try:
    ...     check_encoder(nn.Linear(4, 8), latent_dim=8)
    ... except ValueError as error:
    ...     print(str(error)[:56])
    the encoder (Linear) lacks what training needs of it: lo
    """
    if not isinstance(encoder, nn.Module):
        raise ValueError(
            f"the encoder parameter built a {type(encoder).__name__}, not a torch.nn.Module: "
            "pass an nn.Module subclass, or a function that returns an instance of one."
        )
    missing = []
    if not _is_shape(getattr(encoder, "local_shape", None)):
        missing.append("local_shape, the (channels, h, w) of the local map")
    dims = getattr(encoder, "feature_dims", None)
    if not isinstance(dims, Mapping) or dims.get("code") != latent_dim:
        missing.append(f'feature_dims, a dict with "code": {latent_dim} (latent_dim)')
    elif feature_level != "code" and not (
        feature_level in dims and callable(getattr(encoder, "features", None))
    ):
        missing.append(
            f'feature_dims["{feature_level}"] and features(x, level) for '
            f'feature_level="{feature_level}"'
        )
    if local_scales == 2 and not (
        callable(getattr(encoder, "with_conv_map", None))
        and _is_shape(getattr(encoder, "conv_shape", None))
    ):
        missing.append("with_conv_map(x) and conv_shape, for local_scales=2")
    if missing:
        raise ValueError(
            f"the encoder ({type(encoder).__name__}) lacks what training needs of it: "
            f"{'; '.join(missing)}. See the encoder contract in dimlearn.networks (subclassing "
            "ConvEncoder gives all of it)."
        )


def check_encoder_output(encoder: nn.Module, sample: torch.Tensor, latent_dim: int) -> None:
    """Raise ``ValueError`` unless ``encoder(sample)`` (two samples, in eval mode, without
    gradients, so that no BatchNorm statistic moves) returns ``(local_map, mu, logvar)`` of
    the shapes its ``local_shape`` and ``latent_dim`` say."""
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            out = encoder(sample)
    finally:
        encoder.train(was_training)
    n = len(sample)
    expected = [(n, *encoder.local_shape), (n, latent_dim), (n, latent_dim)]
    shapes = (
        [tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__ for t in out]
        if isinstance(out, tuple | list)
        else type(out).__name__
    )
    if shapes != expected:
        raise ValueError(
            f"the encoder ({type(encoder).__name__}) returned {shapes} for a batch of shape "
            f"{tuple(sample.shape)}; it must return (local_map, mu, logvar) of shapes "
            f"{expected} (local_shape {tuple(encoder.local_shape)}, latent_dim {latent_dim})."
        )


# Pickles of dimlearn 0.2 hold the networks themselves and name the critics' classes in this
# module, where they lived until dimlearn.critics had them: dimlearn.upgrades puts those names
# back here (LEGACY_NETWORK_NAMES), so such a pickle still finds them.
