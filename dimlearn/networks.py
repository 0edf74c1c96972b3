"""Encoders (image, tabular) and the two critics of Deep InfoMax, as ``nn.Module`` s.

Every encoder maps a batch to ``(local_map, mu, logvar)``: the local feature map C(x) of shape
``(B, c, h, w)`` that the local critic reads, and the Gaussian code's mean and log-variance.
"""

from __future__ import annotations

import torch
from torch import nn

from .objectives import derangement, global_mi_loss, local_mi_loss, prior_kl, sample_code

MIN_IMAGE_SIDE = 8
"""Three stride-2 convolutions need at least 8 pixels per side to leave one position."""


INITIAL_LOGVAR = -4.0
"""Codes start nearly deterministic (std 0.14): with log-variance 0 at init, the sampling noise
drowns the code's signal and the critics see chance for several epochs."""


def code_head(in_features: int, latent_dim: int) -> nn.Linear:
    """Linear layer to ``(mu, logvar)``, log-variance biased to :data:`INITIAL_LOGVAR`."""
    head = nn.Linear(in_features, 2 * latent_dim)
    with torch.no_grad():
        head.bias[latent_dim:] = INITIAL_LOGVAR
    return head


def _conv_out(side: int) -> int:
    """Output side of a 4x4 convolution with stride 2 and padding 1."""
    return (side + 2 - 4) // 2 + 1


class ConvEncoder(nn.Module):
    """DCGAN-like image encoder of the official DIM code, scaled by ``width``.

    conv 4x4/2 (w) -> conv 4x4/2 (2w) + BN = local map -> conv 4x4/2 (4w) + BN -> fc (16w) + BN
    -> (mu, logvar). At ``width=64`` on 32x32 images this is the reference network:
    conv 64-128-256, fc 1024, local MI on the 8x8x128 map.

    Examples
    --------
    >>> import torch
    >>> enc = ConvEncoder(in_channels=3, height=32, width_px=32, latent_dim=16, width=8)
    >>> [t.shape for t in enc(torch.zeros(2, 3, 32, 32))]
    [torch.Size([2, 16, 8, 8]), torch.Size([2, 16]), torch.Size([2, 16])]
    """

    def __init__(self, in_channels: int, height: int, width_px: int, latent_dim: int, width: int):
        super().__init__()
        sides = [(height, width_px)]
        for _ in range(3):
            sides.append((_conv_out(sides[-1][0]), _conv_out(sides[-1][1])))
        self.local_shape = (2 * width, *sides[2])
        self.to_local = nn.Sequential(
            nn.Conv2d(in_channels, width, 4, 2, 1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 4, 2, 1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
        )
        self.to_fc = nn.Sequential(
            nn.Conv2d(2 * width, 4 * width, 4, 2, 1),
            nn.BatchNorm2d(4 * width),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(4 * width * sides[3][0] * sides[3][1], 16 * width),
            nn.BatchNorm1d(16 * width),
            nn.ReLU(),
        )
        self.to_code = code_head(16 * width, latent_dim)

    def forward(self, x: torch.Tensor):
        local_map = self.to_local(x)
        mu, logvar = self.to_code(self.to_fc(local_map)).chunk(2, dim=1)
        return local_map, mu, logvar


class MLPEncoder(nn.Module):
    """Encoder for tabular rows: two hidden layers of ``4 * width`` units.

    The first hidden layer plays the part of the local map, as a ``1 x 1`` map with
    ``4 * width`` channels: on tabular data the local term is the MI between that
    intermediate representation and the code, and the global term the MI between a learned
    summary of it and the code. There are no positions to average over.
    """

    def __init__(self, n_features: int, latent_dim: int, width: int):
        super().__init__()
        hidden = 4 * width
        self.local_shape = (hidden, 1, 1)
        self.to_local = nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU())
        self.to_fc = nn.Sequential(nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU())
        self.to_code = code_head(hidden, latent_dim)

    def forward(self, x: torch.Tensor):
        hidden = self.to_local(x)
        mu, logvar = self.to_code(self.to_fc(hidden)).chunk(2, dim=1)
        return hidden[:, :, None, None], mu, logvar


class GlobalCritic(nn.Module):
    """T1(x, z): a summary of the local map, concatenated with z, scored by an MLP.

    The first layer of the scoring MLP acts on ``[summary, z]``; it is split into a summary
    part and a code part so that the negatives, which pair shuffled summaries with the same
    codes, reuse both halves instead of recomputing the layer.
    """

    def __init__(self, local_shape: tuple[int, int, int], latent_dim: int, hidden: int):
        super().__init__()
        channels, h, w = local_shape
        self.summary = nn.Sequential(
            nn.Conv2d(channels, 64, 3, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(64 * h * w, hidden),
        )
        self.from_summary = nn.Linear(hidden, hidden)
        self.from_code = nn.Linear(latent_dim, hidden, bias=False)
        self.score = nn.Sequential(
            nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1)
        )

    def forward(self, local_map: torch.Tensor, z: torch.Tensor, perm: torch.Tensor):
        """Scores ``(T1(x_i, z_i), T1(x_perm[i], z_i))``, each of shape (B,)."""
        s = self.from_summary(self.summary(local_map))
        c = self.from_code(z)
        pos = self.score(s + c).squeeze(1)
        neg = self.score(s[perm] + c).squeeze(1)
        return pos, neg


class LocalCritic(nn.Module):
    """T2(C_ij, z): 1x1 convolutions over ``[C(x), z tiled to h x w]``.

    The first 1x1 convolution is split into its map part and its code part (a sum, which is
    the same as convolving the concatenation), so the code is never materialised h*w times.
    """

    def __init__(self, local_shape: tuple[int, int, int], latent_dim: int, hidden: int):
        super().__init__()
        channels = local_shape[0]
        self.from_map = nn.Conv2d(channels, hidden, 1)
        self.from_code = nn.Linear(latent_dim, hidden, bias=False)
        self.score = nn.Sequential(
            nn.ReLU(), nn.Conv2d(hidden, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, 1, 1)
        )

    def forward(self, local_map: torch.Tensor, z: torch.Tensor, perm: torch.Tensor):
        """Scores at every position, ``(pos, neg)``, each of shape (B, h, w)."""
        m = self.from_map(local_map)
        c = self.from_code(z)[:, :, None, None]
        pos = self.score(m + c).squeeze(1)
        neg = self.score(m[perm] + c).squeeze(1)
        return pos, neg


class DeepInfomaxModule(nn.Module):
    """Encoder plus both critics; ``forward`` returns the code mean, ``terms`` the loss terms.

    Parameters
    ----------
    encoder : ConvEncoder or MLPEncoder
    latent_dim : int
    critic_hidden : int
        Width of both critics' hidden layers.
    """

    def __init__(self, encoder: nn.Module, latent_dim: int, critic_hidden: int):
        super().__init__()
        self.encoder = encoder
        self.global_critic = GlobalCritic(encoder.local_shape, latent_dim, critic_hidden)
        self.local_critic = LocalCritic(encoder.local_shape, latent_dim, critic_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)[1]

    def terms(self, x: torch.Tensor, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """The requested loss terms (``"global"``, ``"local"``, ``"prior"``) on one batch.

        Terms whose weight is zero are not requested, so their critics cost nothing.
        """
        local_map, mu, logvar = self.encoder(x)
        out = {}
        if "global" in names or "local" in names:
            z = sample_code(mu, logvar)
            perm = derangement(x.shape[0], device=x.device)
            if "global" in names:
                out["global"] = global_mi_loss(*self.global_critic(local_map, z, perm))
            if "local" in names:
                out["local"] = local_mi_loss(*self.local_critic(local_map, z, perm))
        if "prior" in names:
            out["prior"] = prior_kl(mu, logvar)
        return out
