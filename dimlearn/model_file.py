"""Reading a safetensors container safely: the header first, bounded, then the tensors.

A model file (:mod:`dimlearn.persistence`) is a safetensors file: 8 bytes giving the length
of a JSON header, the header (each tensor's dtype, shape and byte range, and a
``__metadata__`` mapping of strings), then the tensors' bytes, back to back. Any file may
have been prepared on purpose, so this module reads one in an order that spends nothing on
what a file promises before checking it against what the file holds: :func:`read_header`
reads the length and the header alone, refuses a header longer than :data:`HEADER_LIMIT`
before reading it and one that lists more than :data:`MAX_TENSORS` tensors before parsing
all of it, and checks every entry against the file's size; only then does
:func:`read_tensors` read the tensors, each into a buffer of its own size, so that they
never take more memory than the file holds. Every problem is a :class:`ModelFileError`
that names it. Neither safetensors' nor PyTorch's readers see the file: both know dtypes
and sizes that dimlearn has no use for.
"""

from __future__ import annotations

import json
import math
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

HEADER_LIMIT = 100_000_000
"""The longest header read, in bytes: the safetensors format's own limit, which its writer
enforces too, so that every file :func:`dimlearn.save` writes is read. A dimlearn header is
the tensors' entries (about 100 bytes each) and the model's description, whose training
history grows by about 500 bytes an epoch and 140 bytes a batch (three loss terms; each
term more adds about 40): measured, 10,000 epochs of one batch write a 5.0 MB header, 10,000 of
five batches 10.6 MB, and 1,000 epochs of CIFAR-10 (391 batches of 128) 54.6 MB, which
loads in about 2 s and 200 MB. This limit is also what bounds the cost of parsing a forged
header, which grows with its length: up to about 25 times it, for JSON made of empty
lists (a 99 MB header: 2.4 GB and 24 s before it is refused)."""

MAX_TENSORS = 1024
"""The most tensors a file may list. A model holds at most 213: the weights and buffers of
the encoder and of every critic (60 with images, a concat critic, the adversarial prior,
``delta > 0`` and ``local_scales=2``), and with its training state Adam's ``exp_avg``,
``exp_avg_sq`` and ``step`` for each of the 51 weights; a file of dimlearn 0.2 has a few
biases more. A header listing more is refused before it is parsed past the limit (dimlearn
0.3.0 parsed all of them: 400,000 empty entries took 760 MB and 14 s)."""

DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
"""The safetensors dtypes read (a model holds ``F32`` and ``I64`` tensors only); others,
such as ``F8_E8M0`` or ``F4``, are refused by name."""

INT_DIGITS = 20
"""The most digits of an integer in a header or description (``-2**63`` has 19): no
integer dimlearn writes has more, and Python's reading of longer ones takes time that grows
with the square of their length."""


class ModelFileError(ValueError):
    """A file that :func:`dimlearn.load` cannot read as a dimlearn model, or a model that
    :func:`dimlearn.save` cannot write as one, and why.

    Raised by ``load`` for truncated or damaged files, files written by a newer dimlearn,
    files that are not dimlearn models (pickle and joblib files included), and files whose
    description (JSON) or weights were edited into something inconsistent; by ``save`` for
    a model holding Python code of its own, which a model file cannot rebuild (an
    ``encoder``, an ``optimizer`` class other than dimlearn's, an ``augmentation`` or
    ``callbacks``): the message says to use joblib or skops, or what to set instead. A
    ``ValueError``, so code that catches bad input catches it too.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from dimlearn import ModelFileError, load
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = Path(folder) / "notes.safetensors"
    ...     _ = path.write_text("not a model")
    ...     try:
    ...         load(path)
    ...     except ModelFileError as error:
    ...         print(isinstance(error, ValueError))
    True
    """


@dataclass(frozen=True)
class Header:
    """A safetensors header, checked: the metadata (strings), each tensor's entry as
    ``(dtype, shape, start, end)`` with its byte range relative to ``data_start``, and
    what identifies the file it was read from (:func:`read_tensors` reads the same one)."""

    metadata: dict
    entries: dict
    data_start: int
    identity: tuple


def read_header(path: Path) -> Header:
    """The header of the safetensors file at ``path``, every entry checked against the
    file's size; the tensors are not read. Raises :class:`ModelFileError`."""
    if not stat.S_ISREG(os.stat(path).st_mode):  # checked before opening: a pipe's waits
        raise ModelFileError(
            f"{path} is not a regular file (a pipe or a device?): dimlearn.load reads model "
            "files from the disk. Save or copy the model to a file and load that."
        )
    with open(path, "rb") as handle:
        info = os.fstat(handle.fileno())
        start = handle.read(9)
        header_len = _check_start(start, info.st_size, path)
        text = bytearray(header_len)
        text[:1] = start[8:]
        if not _read_into(handle, memoryview(text)[1:]):
            raise ModelFileError(f"{path} is truncated inside its header. Copy it again.")
    # each entry has a "data_offsets" key: a bound before parsing, which the count of
    # objects during the parse makes exact (a key may be spelt with \u escapes)
    if text.count(b'"data_offsets"') > MAX_TENSORS:
        raise _too_many(path)
    objects = _ObjectCount(MAX_TENSORS + 2, path)  # the entries, the header, the metadata
    try:
        header = parse_json(text, object_pairs_hook=objects)
        if not isinstance(header, dict):
            raise TypeError("the header is not a JSON object")
        metadata = header.pop("__metadata__", {})
        if not isinstance(metadata, dict) or not all(
            isinstance(value, str) for value in metadata.values()
        ):
            raise TypeError("the metadata is not a mapping of strings")
        entries = {name: _entry(name, entry, path) for name, entry in header.items()}
    except (TypeError, ValueError) as error:
        if isinstance(error, ModelFileError):
            raise
        raise ModelFileError(
            f"{path}: the safetensors header is not valid JSON of the expected form ({error}); "
            "the file is damaged or not a dimlearn model."
        ) from None
    data_start = 8 + header_len
    _check_ranges(entries, info.st_size - data_start, path)
    return Header(metadata, entries, data_start, _identity(info))


def read_tensors(path: Path, header: Header) -> dict:
    """The tensors :func:`read_header` found in ``path``, each in memory of its own (never
    more than the file holds). Raises :class:`ModelFileError`, also if the file was
    replaced or changed in between."""
    tensors = {}
    with open(path, "rb") as handle:
        if _identity(os.fstat(handle.fileno())) != header.identity:
            raise ModelFileError(f"{path} changed while it was read; load it again.")
        handle.seek(header.data_start)
        for name, (dtype, shape, start, end) in sorted(
            header.entries.items(), key=lambda item: item[1][2:]
        ):
            data = bytearray(end - start)
            if not _read_into(handle, data):
                raise ModelFileError(f"{path} was cut short while it was read; copy it again.")
            tensors[name] = _tensor(data, dtype, shape)
    return tensors


def parse_json(text, object_pairs_hook=None):
    """``json.loads(text)`` for text that may have been prepared on purpose: a document
    nested too deeply for Python's parser or holding an integer of more than
    :data:`INT_DIGITS` digits is a ``ValueError`` that says so, as invalid JSON is (and no
    ``RecursionError``, nor Python's own integer-length error, comes out)."""
    try:
        return json.loads(text, parse_int=_int, object_pairs_hook=object_pairs_hook)
    except RecursionError:
        raise ValueError("it is nested too deeply to be read") from None


def _check_start(start: bytes, size: int, path: Path) -> int:
    """The header's length, once the first 9 bytes say that this is a safetensors file
    whose header fits in the file and in :data:`HEADER_LIMIT`."""
    if start[:1] == b"\x80" and start[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        raise ModelFileError(
            f"{path} is a pickle file (what joblib.dump and pickle.dump write), not a dimlearn "
            "model file. dimlearn.load never unpickles: unpickling runs code the file "
            "chooses. If you made this file yourself, open it with joblib.load; to share a "
            "model, write it with dimlearn.save."
        )
    header_len = int.from_bytes(start[:8], "little") if len(start) == 9 else 0
    if start[8:9] != b"{" or header_len == 0:
        raise ModelFileError(
            f"{path} is not a dimlearn model file (it is not in the safetensors format that "
            "dimlearn.save writes)."
        )
    if header_len > HEADER_LIMIT:
        raise ModelFileError(
            f"{path}: its safetensors header would be {header_len} bytes long, more than the "
            f"format's limit of {HEADER_LIMIT}; the file is damaged or not a dimlearn model."
        )
    if 8 + header_len > size:
        raise ModelFileError(
            f"{path} is truncated: its header alone needs {8 + header_len} bytes, the file has "
            f"{size} (an interrupted copy or download?). Copy or save it again."
        )
    return header_len


class _ObjectCount:
    """An ``object_pairs_hook`` that stops the parse at the ``limit``-th JSON object, and
    refuses an object with a key twice (which readers may take either way)."""

    def __init__(self, limit: int, path: Path):
        self.left, self.path = limit, path

    def __call__(self, pairs: list) -> dict:
        self.left -= 1
        if self.left < 0:
            raise _too_many(self.path)
        mapping = dict(pairs)
        if len(mapping) != len(pairs):
            raise ValueError("a JSON object has the same key twice")
        return mapping


def _too_many(path: Path) -> ModelFileError:
    return ModelFileError(
        f"{path}: its safetensors header lists more than {MAX_TENSORS} tensors, and a "
        "dimlearn model holds a few hundred at most; the file is damaged or not a dimlearn "
        "model."
    )


def _entry(name: str, entry, path: Path) -> tuple:
    """``(dtype, shape, start, end)`` of one tensor's header entry, once it is of the form
    safetensors writes (``TypeError`` otherwise) and of a dtype in :data:`DTYPES`."""
    if not (isinstance(entry, dict) and set(entry) == {"dtype", "shape", "data_offsets"}):
        raise TypeError(f"the header entry of {name!r} is not of the safetensors form")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not (
        isinstance(dtype, str)
        and isinstance(offsets, list)
        and len(offsets) == 2
        and isinstance(shape, list)
        and len(shape) <= 8  # a model's tensors have 4 dimensions at most
        and all(_natural(value) for value in [*offsets, *shape])
        and offsets[0] <= offsets[1]
    ):
        raise TypeError(f"the header entry of {name!r} is not of the safetensors form")
    if dtype not in DTYPES:
        raise ModelFileError(
            f"{path}: its tensor {name!r} is of dtype {dtype!r}, which no dimlearn model holds "
            f"(this dimlearn reads {', '.join(DTYPES)}); the file is not a dimlearn model "
            "or was edited."
        )
    if math.prod(max(side, 1) for side in shape) > 2**48:  # PyTorch's strides overflow
        raise TypeError(f"the tensor {name!r} is of shape {shape}, which no tensor can have")
    size = math.prod(shape) * DTYPES[dtype].itemsize
    if size != offsets[1] - offsets[0]:
        raise TypeError(f"the tensor {name!r} of shape {shape} is not {size} bytes long")
    return DTYPES[dtype], tuple(shape), offsets[0], offsets[1]


def _check_ranges(entries: dict, data_size: int, path: Path) -> None:
    """The tensors' byte ranges must cover the data after the header exactly, back to
    back, as safetensors writes them."""
    end = 0
    for _, _, start, stop in sorted(entries.values(), key=lambda entry: entry[2:]):
        if start != end:
            raise ModelFileError(
                f"{path}: the tensors' byte ranges in its header overlap or leave gaps; the "
                "file is damaged or not a dimlearn model."
            )
        end = stop
    if end > data_size:
        raise ModelFileError(
            f"{path} is truncated: it has {data_size} bytes of tensors, its header promises "
            f"{end} (an interrupted copy or download?). Copy or save it again."
        )
    if end < data_size:
        raise ModelFileError(
            f"{path}: {data_size - end} bytes follow its last tensor; the file is damaged or "
            "not a dimlearn model. Copy or save it again."
        )


def _tensor(data: bytearray, dtype: torch.dtype, shape: tuple) -> torch.Tensor:
    """A tensor on ``data`` itself (safetensors' bytes are little-endian)."""
    if not data:
        return torch.empty(shape, dtype=dtype)
    tensor = torch.frombuffer(data, dtype=dtype)
    if sys.byteorder == "big" and dtype.itemsize > 1:
        raw = tensor.view(torch.uint8).reshape(-1, dtype.itemsize)
        tensor = raw.flip(1).contiguous().view(dtype).reshape(-1)
    return tensor.reshape(shape)


def _read_into(handle, data) -> bool:
    """Fill ``data`` (a bytearray or a memoryview of one) from ``handle``; False if the
    file ends first."""
    view, done = memoryview(data), 0
    while done < len(data):
        count = handle.readinto(view[done:])
        if not count:
            return False
        done += count
    return True


def _identity(info: os.stat_result) -> tuple:
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns


def _int(text: str) -> int:
    if len(text.lstrip("-")) > INT_DIGITS:
        raise ValueError(f"it holds an integer of {len(text.lstrip('-'))} digits")
    return int(text)


def _natural(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
