"""Which device a call runs on, and the fitted module's copy there."""

import warnings

import pytest
import torch

from dimlearn.devices import on_device, resolve_device


def test_auto_and_cpu_resolve_without_a_word():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_device("cpu") == torch.device("cpu")
        expected = "cuda" if torch.cuda.is_available() else "cpu"
        assert resolve_device("auto").type == expected


@pytest.mark.parametrize("device", ["gpu0", "tpu", 3.5])
def test_unknown_devices_are_refused_with_the_choices(device):
    with pytest.raises(ValueError, match="'auto', 'cpu', 'cuda' or 'cuda:N'"):
        resolve_device(device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_missing_gpu_is_an_error_in_fit_and_a_warning_elsewhere():
    with pytest.raises(ValueError, match="CUDA is not available here"):
        resolve_device("cuda:1", strict=True)
    with pytest.warns(UserWarning, match="running on the CPU"):
        assert resolve_device("cuda", strict=False) == torch.device("cpu")


def test_the_cpu_copy_of_a_module_is_the_module_itself():
    module = torch.nn.Linear(2, 2)
    assert on_device(module, torch.device("cpu")) is module


def test_native_bfloat16_follows_the_cpu_s_instructions(monkeypatch):
    from dimlearn.devices import native_bfloat16

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert not native_bfloat16(torch.device("cpu"))
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert native_bfloat16(torch.device("cpu"))
    assert not native_bfloat16(torch.device("meta"))
