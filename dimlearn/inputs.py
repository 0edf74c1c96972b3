"""Array shapes, dtypes and scaling in; batches of float32 tensors out.

The estimator hands validated arrays to :func:`resolve_layout`, which decides once whether the
samples are images (and in which layout) or tabular rows. :class:`ArrayBatches` then serves
standardised batches without ever copying the whole array to float.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from .networks import MIN_IMAGE_SIDE

_MAX_CHANNELS = 4
"""Up to this many, an axis of a 4-D array is taken as a channel axis (grey, RGB, RGBA...)."""

_STATS_CHUNK_VALUES = 1 << 18
"""Values per chunk of :func:`channel_stats` (2 MB as float64): its working memory stays
small and fixed whatever the image size, so statistics of a memory-mapped array never hold
a large share of it."""


@dataclass(frozen=True)
class Layout:
    """How one sample is laid out.

    Attributes
    ----------
    kind : {"image", "tabular"}
    sample_shape : tuple
        Per-sample shape as the user passes it (for flat images, ``(H*W*C,)``).
    image_shape : tuple or None
        ``(H, W, C)`` when the samples are channels-last images (including flat ones and
        grey ``(H, W)``), ``(C, H, W)`` when channels-first; None for tabular rows.
    channels_last : bool
    """

    kind: str
    sample_shape: tuple
    image_shape: tuple | None = None
    channels_last: bool = True

    def to_plain(self) -> dict:
        """Plain values (JSON-able) that :meth:`from_plain` reads back."""
        return {
            "kind": self.kind,
            "sample_shape": list(self.sample_shape),
            "image_shape": None if self.image_shape is None else list(self.image_shape),
            "channels_last": bool(self.channels_last),
        }

    @classmethod
    def from_plain(cls, raw: dict) -> Layout:
        """The layout :meth:`to_plain` described; ``ValueError`` for one that makes no sense.

        Examples
        --------
        >>> layout = resolve_layout((32, 32, 3), None, "auto")
        >>> Layout.from_plain(layout.to_plain()) == layout
        True
        """
        unknown = sorted(set(raw) - {"kind", "sample_shape", "image_shape", "channels_last"})
        if unknown:
            raise ValueError(f"unknown layout fields {unknown}")
        kind = raw["kind"]
        if kind not in ("image", "tabular"):
            raise ValueError(f"layout kind {kind!r} is neither 'image' nor 'tabular'")
        sample_shape = positive_ints(raw["sample_shape"], "layout.sample_shape")
        image_shape = raw["image_shape"]
        if kind == "image":
            image_shape = positive_ints(image_shape, "layout.image_shape")
            if len(image_shape) != 3 or np.prod(image_shape) != np.prod(sample_shape):
                raise ValueError(f"image shape {image_shape} does not fit samples {sample_shape}")
        elif image_shape is not None or len(sample_shape) != 1:
            raise ValueError("a tabular layout has one feature axis and no image shape")
        if not isinstance(raw["channels_last"], bool):
            raise ValueError("layout.channels_last is not true or false")
        return cls(kind, sample_shape, image_shape, raw["channels_last"])

    @property
    def channels(self) -> int:
        if self.kind == "tabular":
            return self.sample_shape[0]
        return self.image_shape[-1] if self.channels_last else self.image_shape[0]

    @property
    def height_width(self) -> tuple[int, int]:
        return self.image_shape[0:2] if self.channels_last else self.image_shape[1:3]

    @property
    def channel_axis(self) -> int:
        """Axis of the channels in a batch reshaped to ``(n, *image_shape)``."""
        return -1 if self.kind == "tabular" or self.channels_last else 1


def positive_ints(raw, name: str) -> tuple:
    """``raw`` as a tuple of positive ints, or a ``ValueError`` naming ``name``."""
    values = tuple(raw)
    if not values or not all(
        isinstance(v, int | np.integer) and not isinstance(v, bool) and v > 0 for v in values
    ):
        raise ValueError(f"{name} must be a list of positive integers, not {raw!r}")
    return tuple(int(v) for v in values)


def _guess_channels_last(shape: tuple, what: str) -> bool:
    """For a 3-D per-sample shape, True if (H, W, C), False if (C, H, W); refuse if unclear."""
    first_small, last_small = shape[0] <= _MAX_CHANNELS, shape[-1] <= _MAX_CHANNELS
    if last_small and not first_small:
        return True
    if first_small and not last_small:
        return False
    raise ValueError(
        f"Cannot tell whether {what} {shape} is (H, W, C) or (C, H, W). "
        "Pass image_layout='channels_last' or image_layout='channels_first'."
    )


def resolve_layout(sample_shape: tuple, image_shape, image_layout: str) -> Layout:
    """Decide how samples of ``sample_shape`` are laid out, or raise a clear ``ValueError``.

    ``sample_shape`` is ``X.shape[1:]``. Rules:

    - ``(F,)`` without ``image_shape``: tabular rows of F features.
    - ``(F,)`` with ``image_shape``: flat images; ``image_shape`` is ``(H, W)`` (grey),
      ``(H, W, C)`` or ``(C, H, W)`` (``image_layout`` says which, or it is guessed when one
      end is a plausible channel count, at most 4, and the other is not), and
      ``H * W * C == F`` in the C order of ``X.reshape(n, *image_shape)``.
    - ``(H, W)``: grey images.
    - ``(H, W, C)`` or ``(C, H, W)``: colour images; layout from ``image_layout`` or guessed
      as above.

    Examples
    --------
    >>> resolve_layout((32, 32, 3), None, "auto").channels_last
    True
    >>> resolve_layout((64,), (8, 8), "auto").image_shape
    (8, 8, 1)
    """
    sample_shape = tuple(int(s) for s in sample_shape)
    if len(sample_shape) > 3:
        raise ValueError(
            f"X has {len(sample_shape) + 1} dimensions (samples of shape {sample_shape}); "
            "expected (n, F), (n, H, W), (n, H, W, C) or (n, C, H, W)."
        )
    if image_shape is not None:
        image_shape = tuple(int(s) for s in image_shape)
        if len(image_shape) not in (2, 3) or min(image_shape) < 1:
            raise ValueError(
                f"image_shape must be (H, W), (H, W, C) or (C, H, W) of positive ints; "
                f"got {image_shape}."
            )
        if len(sample_shape) == 1:
            if int(np.prod(image_shape)) != sample_shape[0]:
                raise ValueError(
                    f"image_shape={image_shape} holds {int(np.prod(image_shape))} values but "
                    f"each sample of X has {sample_shape[0]} features."
                )
        elif sample_shape != image_shape:
            raise ValueError(
                f"X holds samples of shape {sample_shape} but image_shape={image_shape}; "
                "leave image_shape=None for arrays that already have image dimensions."
            )
    elif len(sample_shape) == 1:
        return Layout("tabular", sample_shape)
    else:
        image_shape = sample_shape

    if len(image_shape) == 2:
        layout = Layout("image", sample_shape, (*image_shape, 1), True)
    else:
        if image_layout == "auto":
            channels_last = _guess_channels_last(image_shape, "a sample of shape")
        else:
            channels_last = image_layout == "channels_last"
        layout = Layout("image", sample_shape, image_shape, channels_last)

    h, w = layout.height_width
    if min(h, w) < MIN_IMAGE_SIDE:
        raise ValueError(
            f"Images of {h}x{w} pixels are too small for the conv encoder, which needs at least "
            f"{MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}. Upsample them, or pass them flat with "
            "image_shape=None to use the tabular encoder."
        )
    return layout


def _as_images(X: np.ndarray, layout: Layout) -> np.ndarray:
    """View of X as ``(n, *image_shape)`` (or ``(n, F)`` for tabular); no copy."""
    if layout.kind == "tabular":
        return X
    return X.reshape(X.shape[0], *layout.image_shape)


def channel_stats(X: np.ndarray, layout: Layout) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (images) or per-feature (tabular) mean and std of X, in float64.

    Works through X in chunks (Chan's parallel update), so uint8 data is never copied whole
    to float. A constant channel gets scale 1 rather than a division by zero.
    """
    arr = _as_images(X, layout)
    axis = layout.channel_axis % arr.ndim
    reduce_axes = tuple(a for a in range(arr.ndim) if a != axis)
    count, mean, m2 = 0, 0.0, 0.0
    rows = max(1, _STATS_CHUNK_VALUES // max(1, int(np.prod(arr.shape[1:]))))
    for start in range(0, arr.shape[0], rows):
        chunk = arr[start : start + rows].astype(np.float64)
        n_chunk = chunk.size // chunk.shape[axis]
        chunk_mean = chunk.mean(axis=reduce_axes)
        shape = [1] * chunk.ndim
        shape[axis] = -1
        chunk -= chunk_mean.reshape(shape)  # in place: one chunk-sized buffer in all
        chunk_m2 = np.square(chunk, out=chunk).sum(axis=reduce_axes)
        delta = chunk_mean - mean
        total = count + n_chunk
        mean = mean + delta * n_chunk / total
        m2 = m2 + chunk_m2 + delta**2 * count * n_chunk / total
        count = total
    std = np.sqrt(m2 / count)
    std[std < 1e-8 * np.maximum(1.0, np.abs(mean))] = 1.0
    std[std == 0] = 1.0
    return mean, std


class ArrayBatches(torch.utils.data.Dataset):
    """Serves batches of an array: raw on the host, standardised where the model runs.

    ``raw(rows)`` reads only the requested rows, in their stored dtype (uint8 stays uint8:
    a quarter of the bytes of float32 to copy to an accelerator; float64 becomes float32).
    ``prepare(batch)`` standardises a raw batch on whatever device it is on, ``(x - mean) /
    std`` per channel (or per feature) with the statistics of the data the model was fitted
    on, channels-first for images. ``take(rows)`` is both, on the CPU. ``rows`` restricts the
    dataset to those rows of X (a sorted index array) without copying X, so a memory-mapped
    array is only ever read a batch at a time.
    """

    def __init__(
        self,
        X: np.ndarray,
        layout: Layout,
        mean: np.ndarray,
        std: np.ndarray,
        rows: np.ndarray | None = None,
    ):
        self.X = _as_images(X, layout)
        self.rows = rows
        self.layout = layout
        self.mean = torch.as_tensor(mean, dtype=torch.float32)
        self.inv_std = torch.as_tensor(1.0 / std, dtype=torch.float32)
        if layout.kind == "image" and not layout.channels_last:
            self.mean = self.mean[:, None, None]
            self.inv_std = self.inv_std[:, None, None]
        self._stats_on = {torch.device("cpu"): (self.mean, self.inv_std)}

    def __len__(self) -> int:
        return self.X.shape[0] if self.rows is None else len(self.rows)

    def batch_sizes(self, batch_size: int) -> list[int]:
        """The sizes of the batches an epoch over this dataset is cut into
        (:func:`split_batches`)."""
        return split_batches(len(self), batch_size)

    @property
    def nbytes(self) -> int:
        """Bytes of its rows as stored (uint8 stays uint8; other dtypes become float32)."""
        item = 1 if self.X.dtype == np.uint8 else 4
        return len(self) * int(np.prod(self.X.shape[1:])) * item

    def raw(self, rows) -> torch.Tensor:
        """The given rows (an index array or a slice) as a host tensor in the stored dtype
        (uint8 or float32; other dtypes become float32)."""
        rows_array = self.X[rows] if self.rows is None else self.X[self.rows[rows]]
        if rows_array.dtype not in (np.uint8, np.float32):
            rows_array = rows_array.astype(np.float32)
        elif not rows_array.flags.writeable:  # a slice of a read-only memory map
            rows_array = np.array(rows_array)
        return torch.from_numpy(rows_array)

    def prepare(self, batch: torch.Tensor) -> torch.Tensor:
        """Standardised float32 model input from a raw batch, computed on its device."""
        if batch.device not in self._stats_on:
            self._stats_on[batch.device] = (
                self.mean.to(batch.device),
                self.inv_std.to(batch.device),
            )
        mean, inv_std = self._stats_on[batch.device]
        batch = (batch.to(torch.float32) - mean) * inv_std
        if self.layout.kind == "image" and self.layout.channels_last:
            batch = batch.permute(0, 3, 1, 2).contiguous()
        return batch

    def take(self, rows, device: torch.device | str = "cpu") -> torch.Tensor:
        """Model input for the given rows on ``device``: read in the stored dtype, copied
        there as it is, and standardised there."""
        return self.prepare(self.raw(rows).to(device, non_blocking=True))

    def __getitem__(self, index):
        return self.take(slice(index, index + 1))[0]


def training_data(
    X: np.ndarray, layout: Layout, stats, optimisation, *, seed: int, hold_out: bool, processes=1
):
    """The data of one training call: ``(training rows, held-out rows or None, statistics)``
    as :class:`ArrayBatches`, standardised with ``stats`` (``(mean, scale)``; None: those of
    X, one pass over it, :func:`channel_stats`). With ``hold_out`` (``early_stopping``),
    ``optimisation.validation_fraction`` of the rows are held out (:func:`holdout_rows`,
    drawn with ``seed``). ``processes`` that train together each need a row of every batch
    of ``optimisation.batch_size`` (a ``ValueError`` says so before training)."""
    if stats is None:
        stats = channel_stats(X, layout)
    train_rows, valid_rows = None, None
    if hold_out:
        train_rows, valid_rows = holdout_rows(len(X), optimisation.validation_fraction, seed)
    train = ArrayBatches(X, layout, *stats, rows=train_rows)
    sizes = train.batch_sizes(optimisation.batch_size)
    if min(sizes) < processes:
        raise ValueError(
            f"batch_size={optimisation.batch_size} gives batches of {min(sizes)} rows, fewer "
            f"than the {processes} processes training together, so some would get no "
            f"rows. Use batch_size >= {processes}, or fewer processes."
        )
    valid = None if valid_rows is None else ArrayBatches(X, layout, *stats, rows=valid_rows)
    return train, valid, stats


def holdout_rows(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Training rows and held-out rows (``early_stopping``): ``round(fraction * n)`` rows
    drawn with ``seed`` are held out; both in order.

    Examples
    --------
    >>> train, held_out = holdout_rows(10, 0.2, seed=0)
    >>> len(train), len(held_out)
    (8, 2)
    """
    n_valid = int(round(fraction * n))
    if n_valid < 2 or n - n_valid < 2:
        raise ValueError(
            f"early_stopping with validation_fraction={fraction} splits "
            f"{n} samples into {n - n_valid} for training and {n_valid} held out; each "
            "part needs at least 2. Pass more samples, change validation_fraction, or "
            "set early_stopping=False."
        )
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_valid:]), np.sort(order[:n_valid])


def even_sizes(total: int, parts: int) -> list[int]:
    """Sizes of ``parts`` consecutive pieces of ``total`` rows, differing by at most one,
    the larger ones first: the sizes of ``np.array_split(np.arange(total), parts)``, without
    the array of ``total`` numbers it would need.

    Examples
    --------
    >>> even_sizes(7, 2)
    [4, 3]
    """
    base, extra = divmod(total, parts)
    return [base + 1] * extra + [base] * (parts - extra)


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
    return even_sizes(n, min(-(-n // batch_size), n // 2))


class ShuffledBatches:
    """Iterable over one epoch: shuffled, nearly equal batches of ``(model input, part)``.

    Used as skorch's ``iterator_train``. It draws the shuffle from ``generator``, which the
    training call owns and seeds, and reads each batch in one vectorised step, which is
    faster than a ``DataLoader`` that fetches and collates sample by sample. A batch is read
    in its stored dtype (:meth:`ArrayBatches.raw`: uint8 stays uint8), copied to ``device``
    as it is and standardised there (:meth:`ArrayBatches.prepare`). With ``pin_memory``
    (training on CUDA) each batch is put in page-locked memory, so that its copy to the
    device can run asynchronously, and (``prefetch``, on by default with ``pin_memory``) the
    next batch is read in a thread while the device works on this one. With ``resident_on``
    the whole dataset is copied to that device once and batches are gathered there. With
    ``parts`` (data-parallel training: a function from a batch's size to this process's part
    of it, :meth:`dimlearn.distributed.Ranks.part`) every process draws the same batches and
    yields only its rows of each, with the part as the second element (None otherwise); the
    processes' parts of an epoch are disjoint and together the whole epoch.
    """

    def __init__(
        self,
        dataset: ArrayBatches,
        batch_size: int,
        device: torch.device | str = "cpu",
        pin_memory: bool = False,
        resident_on: torch.device | None = None,
        generator: torch.Generator | None = None,
        prefetch: bool | None = None,
        parts=None,
    ):
        self.parts = parts
        self.generator = generator  # a CPU generator for the shuffle (global RNG when None)
        self.dataset = dataset
        self.device = torch.device(device)
        self.sizes = dataset.batch_sizes(batch_size)
        self.pin_memory = pin_memory
        # read (and pin) the next batch in a thread while the device works on this one
        self.prefetch = pin_memory if prefetch is None else prefetch
        # data_on_device: the whole set, in its stored dtype, copied to the device once
        self.resident = None if resident_on is None else dataset.raw(slice(None)).to(resident_on)

    def __len__(self) -> int:
        return len(self.sizes)

    def _host_batch(self, rows: np.ndarray) -> torch.Tensor:
        batch = self.dataset.raw(rows)
        return batch.pin_memory() if self.pin_memory else batch

    def _on_device(self, raw: torch.Tensor) -> torch.Tensor:
        return self.dataset.prepare(raw.to(self.device, non_blocking=True))

    def __iter__(self):
        order = torch.randperm(len(self.dataset), generator=self.generator).numpy()
        bounds = np.cumsum([0, *self.sizes])
        # sorted rows read memory in order; the batch's content is what was drawn
        batches = [np.sort(order[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        parts = [None] * len(batches)
        if self.parts is not None:  # this process's rows of each batch
            parts = [self.parts(len(rows)) for rows in batches]
            batches = [rows[part.rows] for rows, part in zip(batches, parts, strict=True)]
        if self.resident is not None:
            for rows, part in zip(batches, parts, strict=True):
                rows = torch.from_numpy(rows).to(self.resident.device)
                yield self.dataset.prepare(self.resident[rows]), part
        elif not self.prefetch:
            for rows, part in zip(batches, parts, strict=True):
                yield self._on_device(self._host_batch(rows)), part
        else:
            with ThreadPoolExecutor(max_workers=1) as reader:
                pending = reader.submit(self._host_batch, batches[0])
                for following, part in zip([*batches[1:], None], parts, strict=True):
                    batch = pending.result()
                    if following is not None:
                        pending = reader.submit(self._host_batch, following)
                    yield self._on_device(batch), part


class OrderedBatches:
    """Iterable over a dataset in order, in nearly equal batches of ``(model input, None)``
    standardised on ``device``: skorch's ``iterator_valid``."""

    def __init__(self, dataset: ArrayBatches, batch_size: int, device="cpu"):
        self.dataset = dataset
        self.device = torch.device(device)
        self.sizes = dataset.batch_sizes(batch_size)

    def __len__(self) -> int:
        return len(self.sizes)

    def __iter__(self):
        bounds = np.cumsum([0, *self.sizes])
        for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
            yield self.dataset.take(slice(int(start), int(stop)), self.device), None
