"""Image files in, a uint8 ``(n, H, W, C)`` array out, ready for :class:`DeepInfomaxTransformer`.

Needs Pillow, the optional extra ``dimlearn[images]``; it is imported when :func:`load_images`
is called, so ``import dimlearn`` works without it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from ._warn import warn

_CHANNELS = {"RGB": 3, "L": 1}
_FITS = ("crop", "pad", "resize")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")
_WRITE_ONLY_FORMATS = ("PDF", "PALM")  # Pillow registers their suffixes but cannot read them
_EXIF_ORIENTATION = 0x0112
_MAX_NAMED = 10  # unreadable files named in the warning; the rest are counted
_COPY_BYTES = 1 << 26  # chunk size when compacting an ``out`` file


def load_images(
    folder_or_paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    size: int | tuple[int, int],
    *,
    fit: Literal["crop", "pad", "resize"] = "crop",
    mode: Literal["RGB", "L"] = "RGB",
    recursive: bool = False,
    errors: Literal["warn", "raise"] = "warn",
    out: str | os.PathLike[str] | None = None,
    pad_value: int = 0,
    verbose: bool = False,
) -> tuple[np.ndarray, list[str]]:
    """Read image files into one uint8 array of shape ``(n, H, W, C)``.

    Each image is rotated upright from its EXIF orientation, converted to ``mode`` and fitted
    to ``size``. Greyscale, RGB, RGBA, palette (with or without transparency), 1-bit and
    16-bit images are read. Transparent pixels are composited onto white. 16-bit images
    (Pillow modes ``"I;16"`` and ``"I"``) are scaled from 0..65535 to 0..255 (rounded), not
    clipped; ``"I"`` values outside 0..65535 are clipped to it first, and float (``"F"``)
    values to 0..255.

    Parameters
    ----------
    folder_or_paths : str, path-like or iterable of them
        A folder: its image files are read in sorted order of their paths; files are picked
        by the suffixes Pillow can read (case-insensitive) and hidden ones (name starting
        with ``.``) are skipped, as are hidden sub-folders. A single file is read alone. An
        iterable of file paths is read in the order given.
    size : int or (int, int)
        Output ``(H, W)``; an int gives square images.
    fit : {"crop", "pad", "resize"}, default="crop"
        How images are fitted to ``size``. ``"crop"`` scales the image so that it covers
        ``size`` and keeps its centre (aspect ratio kept, borders cut: the usual choice for
        feature learning). ``"pad"`` scales it to fit inside ``size`` and fills the rest with
        ``pad_value`` (letterbox, centred). ``"resize"`` stretches it to ``size``. Resampling
        is bicubic.
    mode : {"RGB", "L"}, default="RGB"
        ``"RGB"`` gives C=3 channels, ``"L"`` gives C=1 (grey, ITU-R 601-2 luma).
    recursive : bool, default=False
        Whether a folder's sub-folders are read too.
    errors : {"warn", "raise"}, default="warn"
        On a file Pillow cannot read: skip it, with one warning at the end naming the skipped
        files, or raise a ``ValueError``.
    out : str or path-like, optional
        Write the images to this ``.npy`` file one at a time instead of holding them in
        memory, then return it opened with ``mmap_mode="r"``. It is written to a temporary
        file beside it, renamed when done (an existing file is replaced only then); unreadable
        files are left out by copying the rows read to a second temporary file. The paths are
        written beside it, one per line, to the same name with the suffix ``.paths.txt``.
    pad_value : int, default=0
        Grey level (0..255, all channels) of the border added by ``fit="pad"``.
    verbose : bool, default=False
        Show a progress bar, when ``tqdm`` is installed.

    Returns
    -------
    images : ndarray of uint8, shape (n, H, W, C)
        A read-only ``np.memmap`` when ``out`` is given.
    paths : list of str
        The files read, one per image, in the same order.

    Raises
    ------
    ImportError
        If Pillow is not installed.
    FileNotFoundError
        If the folder, or a path in the list, does not exist.
    ValueError
        If there is no image file to read (empty folder or list), none could be read, a file
        cannot be read and ``errors="raise"``, or an argument is invalid.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> from PIL import Image
    >>> from dimlearn.images import load_images
    >>> tmp = tempfile.TemporaryDirectory()
    >>> folder = Path(tmp.name)
    >>> Image.new("RGB", (40, 30), "red").save(folder / "b.png")
    >>> Image.new("L", (20, 20), 128).save(folder / "a.png")
    >>> images, paths = load_images(folder, size=16)
    >>> images.shape, images.dtype
    ((2, 16, 16, 3), dtype('uint8'))
    >>> [Path(p).name for p in paths]
    ['a.png', 'b.png']
    >>> images[1, 8, 8].tolist()
    [255, 0, 0]
    >>> on_disk, _ = load_images(folder, size=16, out=folder / "images.npy")
    >>> type(on_disk).__name__, np.array_equal(on_disk, images)
    ('memmap', True)
    >>> del on_disk; tmp.cleanup()
    """
    try:
        from PIL import Image, ImageOps
    except ImportError as exc:
        raise ImportError("load_images needs Pillow: pip install 'dimlearn[images]'") from exc

    height, width = _check_size(size)
    for name, value, allowed in [
        ("fit", fit, _FITS),
        ("mode", mode, tuple(_CHANNELS)),
        ("errors", errors, ("warn", "raise")),
    ]:
        if value not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}.")
    if isinstance(pad_value, bool) or not isinstance(pad_value, int) or not 0 <= pad_value < 256:
        raise ValueError(f"pad_value must be an int in 0..255, got {pad_value!r}.")

    suffixes = {
        suffix.lower()
        for suffix, fmt in Image.registered_extensions().items()
        if fmt not in _WRITE_ONLY_FORMATS
    }
    files = _find_files(folder_or_paths, recursive, suffixes)
    read = functools.partial(_read, Image, ImageOps, (height, width), fit, mode, pad_value)
    shape = (len(files), height, width, _CHANNELS[mode])
    if out is None:
        images = np.empty(shape, dtype=np.uint8)
        good, bad = _fill(images, files, read, errors, verbose)
        if bad:
            images = images[: len(good)].copy()
    else:
        images, good, bad = _write_npy(Path(out), shape, files, read, errors, verbose)
    if bad:
        warn(
            f"load_images skipped {len(bad)} unreadable image file(s): {_name(bad)} "
            "(errors='raise' tells why)."
        )
    return images, good


def _check_size(size) -> tuple[int, int]:
    pair = (size, size) if isinstance(size, int | np.integer) else size
    try:
        height, width = (int(side) for side in pair)
        valid = all(not isinstance(side, bool) and side == int(side) >= 1 for side in pair)
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise ValueError(f"size must be a positive int or a pair (H, W) of them, got {size!r}.")
    return height, width


def _find_files(source, recursive: bool, suffixes: set[str]) -> list[str]:
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if path.is_file():
            return [str(path)]
        if not path.is_dir():
            raise FileNotFoundError(f"No such folder: {str(path)!r}.")
        files = []
        for root, dirs, names in os.walk(path):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            files += [
                os.path.join(root, name)
                for name in names
                if not name.startswith(".") and os.path.splitext(name)[1].lower() in suffixes
            ]
            if not recursive:
                break
        if not files:
            where = "or its sub-folders " if recursive else ""
            known = ", ".join(sorted(suffixes)[:8])
            raise ValueError(
                f"No image files in folder {str(path)!r} {where}(suffixes read: {known}, ...)."
            )
        return sorted(files)
    files = [os.fspath(p) for p in source]
    if not files:
        raise ValueError("load_images got an empty list of paths.")
    missing = [p for p in files if not os.path.exists(p)]
    if missing:
        raise FileNotFoundError(f"No such file(s): {_name(missing)}.")
    return files


def _read(Image, ImageOps, size, fit, mode, pad_value, path: str) -> np.ndarray:
    """One image as a uint8 ``(H, W, C)`` array."""
    height, width = size
    with Image.open(path) as img:
        turned = img.getexif().get(_EXIF_ORIENTATION) in (5, 6, 7, 8)
        img.draft(None, (height, width) if turned else (width, height))  # JPEG: decode smaller
        img = ImageOps.exif_transpose(img)
    if img.mode in _SIXTEEN_BIT:
        values = np.clip(np.asarray(img), 0, 65535).astype(np.uint32)
        img = Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8))
    elif img.mode in _ALPHA or "transparency" in img.info:
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, img.convert("RGBA"))
    img = img.convert(mode)

    w, h = img.size
    resample = Image.Resampling.BICUBIC
    if (w, h) == (width, height):
        pass
    elif fit == "crop":
        scale = max(width / w, height / h)
        box_w, box_h = width / scale, height / scale
        left, top = (w - box_w) / 2, (h - box_h) / 2
        img = img.resize((width, height), resample, box=(left, top, left + box_w, top + box_h))
    elif fit == "pad":
        scale = min(width / w, height / h)
        inner = (max(1, round(w * scale)), max(1, round(h * scale)))
        canvas = Image.new(mode, (width, height), (pad_value,) * _CHANNELS[mode])
        canvas.paste(
            img.resize(inner, resample), ((width - inner[0]) // 2, (height - inner[1]) // 2)
        )
        img = canvas
    else:
        img = img.resize((width, height), resample)
    return np.asarray(img, dtype=np.uint8).reshape(height, width, _CHANNELS[mode])


def _fill(
    dest: np.ndarray, files: Sequence[str], read: Callable, errors: str, verbose: bool
) -> tuple[list[str], list[str]]:
    """Write the readable images to ``dest[0], dest[1], ...``; return good and bad paths."""
    if verbose:
        try:
            from tqdm.auto import tqdm

            files = tqdm(files, desc="load_images", unit="image")
        except ImportError:
            pass
    good, bad, reasons = [], [], []
    for path in files:
        try:
            dest[len(good)] = read(path)
        except Exception as exc:  # Pillow raises many types on bad files: OSError, SyntaxError...
            reason = str(exc) or type(exc).__name__
            if errors == "raise":
                raise ValueError(f"Cannot read image file {path!r}: {reason}") from exc
            bad.append(path)
            reasons.append(f"{path} ({reason})")
        else:
            good.append(path)
    if not good:
        raise ValueError(f"None of the {len(bad)} image file(s) could be read: {_name(reasons)}")
    return good, bad


def _write_npy(out: Path, shape, files, read, errors, verbose):
    """Write the images to a temporary ``.npy`` beside ``out``, drop unused rows, rename."""
    temps = []

    def temp_array(rows: int) -> np.memmap:
        fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
        os.close(fd)
        temps.append(name)
        return np.lib.format.open_memmap(name, mode="w+", dtype=np.uint8, shape=(rows, *shape[1:]))

    try:
        array = temp_array(shape[0])
        good, bad = _fill(array, files, read, errors, verbose)
        if bad:  # keep only the rows written, copied in chunks to a second temporary file
            compact = temp_array(len(good))
            step = max(1, _COPY_BYTES // array[0].nbytes)
            for start in range(0, len(good), step):
                stop = min(start + step, len(good))
                compact[start:stop] = array[start:stop]
            array = compact
            del compact
        array.flush()
        del array
        os.replace(temps[-1], out)
        out.with_suffix(".paths.txt").write_text("".join(p + "\n" for p in good), "utf-8")
    finally:
        for name in temps:
            with contextlib.suppress(OSError):  # already renamed, or still mapped (Windows)
                os.remove(name)
    return np.load(out, mmap_mode="r"), good, bad


def _name(items: Sequence[str]) -> str:
    named = ", ".join(items[:_MAX_NAMED])
    return named + (f" and {len(items) - _MAX_NAMED} more" if len(items) > _MAX_NAMED else "")
