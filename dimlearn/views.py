"""Views of a training batch, drawn on its device in one vectorised step per batch.

Images: a random crop after reflection padding and a random horizontal flip where the
estimator's ``flip`` resolved to True (:func:`random_crop_flip`, ``augment=True``), and,
for two-view training (``views=2``, AMDIM's form of Deep InfoMax), colour jitter and random
greyscale on top (:func:`image_view`). Table rows: SCARF's random feature corruption
(:func:`corrupt_rows`). Every function draws from a generator on the batch's device and,
in data-parallel training, draws for the whole batch and keeps this process's rows
(``part``, see :class:`~dimlearn.critics.WholeBatch`), so the draws are those of one
process.

The estimator's ``augmentation`` parameter replaces them: a function of the same form as
:func:`random_crop_flip`, ``augmentation(batch, generator, part, flip)``, returning one view
of the batch, of its shape. :func:`default_view` is the one used where it is None.
"""

from __future__ import annotations

import torch

CORRUPTION = 0.3
"""Share of a table row's features that a view replaces by other rows' values."""


def _draws(part, n: int):
    """The whole batch's size and this process's rows of it."""
    return (n, slice(0, n)) if part is None else (part.total, part.rows)


def random_crop_flip(
    images: torch.Tensor,
    generator: torch.Generator | None = None,
    part=None,
    flip: bool = True,
) -> torch.Tensor:
    """Random crop after reflection padding, and a random horizontal flip, per image.

    Pads by an eighth of the side (4 px on 32x32, the usual CIFAR setting), crops back to
    the original size at a random offset, and, with ``flip``, mirrors half of the images
    (without it nothing is mirrored and no flip is drawn). Draws from
    ``generator`` (on the images' device; torch's global RNG when None). ``images`` is
    ``(B, C, H, W)``; with ``part`` (data-parallel training: which rows of a larger batch
    they are, see :class:`~dimlearn.critics.WholeBatch`) the draws are made for the whole
    batch and these rows take theirs.

    Examples
    --------
    >>> import torch
    >>> random_crop_flip(torch.zeros(5, 3, 32, 32)).shape
    torch.Size([5, 3, 32, 32])
    """
    n, _, h, w = images.shape
    device = images.device
    total, mine = _draws(part, n)
    pad_h, pad_w = max(1, h // 8), max(1, w // 8)
    padded = torch.nn.functional.pad(images, (pad_w, pad_w, pad_h, pad_h), mode="reflect")
    top = torch.randint(0, 2 * pad_h + 1, (total, 1, 1), device=device, generator=generator)
    left = torch.randint(0, 2 * pad_w + 1, (total, 1, 1), device=device, generator=generator)
    rows = top[mine] + torch.arange(h, device=device)[None, :, None]
    cols = left[mine] + torch.arange(w, device=device)[None, None, :]
    if flip:
        mirrored = torch.rand(total, device=device, generator=generator)[mine] < 0.5
        cols = torch.where(mirrored[:, None, None], cols.flip(-1), cols)
    cropped = padded[torch.arange(n, device=device)[:, None, None], :, rows, cols]  # (B,H,W,C)
    return cropped.permute(0, 3, 1, 2).contiguous()


def colour_jitter(
    images: torch.Tensor,
    generator: torch.Generator | None = None,
    part=None,
    strength: float = 0.4,
    grey: float = 0.2,
) -> torch.Tensor:
    """Random brightness, contrast and saturation per image, and greyscale for a share
    ``grey`` of them, on standardised ``(B, C, H, W)`` images (linear in the pixels:
    brightness adds a per-image offset, contrast scales around the image's mean, saturation
    blends with the mean over channels; one-channel images get the first two only).

    Examples
    --------
    >>> import torch
    >>> colour_jitter(torch.zeros(4, 3, 8, 8)).shape
    torch.Size([4, 3, 8, 8])
    """
    n, channels = images.shape[:2]
    total, mine = _draws(part, n)

    def uniform(low, high):
        u = torch.rand(total, device=images.device, generator=generator)[mine]
        return (low + (high - low) * u)[:, None, None, None]

    brightness = uniform(-strength, strength)
    contrast = uniform(1 - strength, 1 + strength)
    saturation = uniform(1 - strength, 1 + strength)
    greyed = torch.rand(total, device=images.device, generator=generator)[mine] < grey
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    out = (images - mean) * contrast + mean + brightness
    if channels > 1:
        luma = out.mean(dim=1, keepdim=True)
        out = luma + (out - luma) * torch.where(greyed[:, None, None, None], 0.0, saturation)
    return out


def image_view(images: torch.Tensor, generator=None, part=None, flip: bool = True) -> torch.Tensor:
    """One augmented view for two-view training: crop (and flip, with ``flip``), then
    colour jitter and random greyscale."""
    return colour_jitter(random_crop_flip(images, generator, part, flip), generator, part)


def corrupt_rows(
    rows: torch.Tensor, generator=None, part=None, share: float = CORRUPTION
) -> torch.Tensor:
    """SCARF's view of table rows (Bahri et al., ICLR 2022): each feature of each row is,
    with probability ``share``, replaced by the same feature of another row of the batch (a
    draw from its empirical marginal). In data-parallel training the other rows come from
    the whole batch.

    Examples
    --------
    >>> import torch
    >>> x = torch.arange(12.0).reshape(4, 3)
    >>> view = corrupt_rows(x, torch.Generator().manual_seed(0))
    >>> bool(((view == x) | (view % 3 == x % 3)).all())  # each value stays in its column
    True
    """
    n, features = rows.shape
    total, mine = _draws(part, n)
    whole = rows if part is None else part.gather(rows.detach())
    device = rows.device
    replace = torch.rand(total, features, device=device, generator=generator)[mine] < share
    donors = torch.randint(0, total, (total, features), device=device, generator=generator)[mine]
    columns = torch.arange(features, device=device).expand(len(donors), -1)
    return torch.where(replace, whole[donors, columns], rows)


def row_view(rows: torch.Tensor, generator=None, part=None, flip: bool = False) -> torch.Tensor:
    """One view of table rows in the augmentation's form: :func:`corrupt_rows` (``flip``
    is ignored; rows are never mirrored)."""
    return corrupt_rows(rows, generator, part)


def default_view(kind: str, views: int):
    """dimlearn's augmentation, where the ``augmentation`` parameter is None: one view of a
    batch of ``kind`` (``"image"`` or ``"tabular"``) for training with ``views`` views.

    Examples
    --------
    >>> default_view("image", 2).__name__, default_view("image", 1).__name__
    ('image_view', 'random_crop_flip')
    """
    if kind != "image":
        return row_view
    return image_view if views == 2 else random_crop_flip


def two_views(
    batch: torch.Tensor, kind: str, generator=None, part=None, flip: bool = True, view=None
) -> torch.Tensor:
    """Two independently augmented views of a batch, stacked: ``(2, B, ...)``, each drawn
    by ``view`` (an augmentation, :func:`default_view` when None). ``flip`` (images only):
    whether the views may be mirrored."""
    view = view or default_view(kind, 2)
    return torch.stack([view(batch, generator, part, flip) for _ in range(2)])
