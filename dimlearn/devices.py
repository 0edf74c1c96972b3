"""Which torch device a call runs on, and the fitted module's copy there."""

from __future__ import annotations

import copy

import torch
from torch import nn

from ._warn import warn


def resolve_device(device, *, strict: bool = True) -> torch.device:
    """Turn the ``device`` parameter into a ``torch.device``.

    The name itself was checked by the parameter's constraint
    (:class:`~dimlearn.settings.DeviceName`); here is asked whether the device is present.
    ``"auto"`` is CUDA when available, else CPU. With ``strict`` (``fit``), asking for a
    CUDA or MPS device that is not there raises; without it (``transform`` of a model
    loaded on another machine) it warns and falls back to the CPU.

    Examples
    --------
    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cpu":
        return resolved
    if resolved.type == "mps":
        backend = getattr(torch.backends, "mps", None)
        if backend is not None and backend.is_available():
            return resolved
        problem = f"device={device!r} was requested but MPS (Apple's GPU) is not available here"
    elif resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (resolved.index or 0) < count:
            return resolved
        problem = f"device={device!r} was requested but " + (
            "CUDA is not available here" if count == 0 else f"only {count} CUDA device(s) exist"
        )
    else:
        problem = f"device={device!r} is not a device dimlearn trains on"
    if strict:
        raise ValueError(f"{problem}. Use device='auto' or device='cpu'.")
    warn(f"{problem}; running on the CPU. Set device='cpu' to silence this.")
    return torch.device("cpu")


def on_device(module: nn.Module, device: torch.device) -> nn.Module:
    """The module itself on the CPU (where fitted modules live), a copy on another device."""
    return module if device.type == "cpu" else copy.deepcopy(module).to(device)


def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` computes in bfloat16 natively: a CUDA device of compute capability
    8.0 or more (Ampere and later; ``torch.cuda.is_bf16_supported`` alone also counts the
    emulation of a V100 or T4, which is slower than float32), asked of ``device`` itself
    rather than the current device, or a CPU with AVX512-BF16 or AMX instructions (where
    bfloat16 convolutions and matrix products run about twice as fast as float32; elsewhere
    they are emulated and slower)."""
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False
        index = torch.cuda.current_device() if device.index is None else device.index
        with torch.cuda.device(index):
            try:
                return torch.cuda.is_bf16_supported(including_emulation=False)
            except TypeError:  # torch < 2.4 has no including_emulation and never emulated
                return torch.cuda.get_device_properties(index).major >= 8
    if device.type != "cpu":
        return False
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, check, lambda: False)() for check in checks)
