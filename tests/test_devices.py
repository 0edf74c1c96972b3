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


@pytest.mark.parametrize(
    "device",
    ["gpu0", "tpu", "CPU", " cpu", "cuda:", "cuda:x", "cuda:1234", "cuda:0 ", "mps:0", 3.5],
)
def test_the_device_parameter_takes_exactly_the_device_names(device):
    """The one check of a device's name: the parameter's constraint, which ``fit``,
    ``set_params``, model files, pickles and skops files all go through."""
    from sklearn.utils._param_validation import InvalidParameterError

    from dimlearn import DeepInfomaxTransformer

    with pytest.raises(InvalidParameterError, match="'auto', 'cpu', 'cuda', 'cuda:N'"):
        DeepInfomaxTransformer(device=device)._validate_params()


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:12", "mps"])
def test_every_device_name_passes_the_constraint(device):
    from dimlearn import DeepInfomaxTransformer

    DeepInfomaxTransformer(device=device)._validate_params()
    DeepInfomaxTransformer(device=torch.device("cpu"))._validate_params()


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="needs a machine without Apple's GPU")
def test_mps_without_mps_is_an_error_in_fit_and_a_warning_elsewhere():
    with pytest.raises(ValueError, match="MPS .* is not available here"):
        resolve_device("mps", strict=True)
    with pytest.warns(UserWarning, match="running on the CPU"):
        assert resolve_device("mps", strict=False) == torch.device("cpu")


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


def test_native_bfloat16_on_cuda_asks_about_that_device_and_counts_no_emulation(monkeypatch):
    """A machine with an A100 as device 0 and a V100 (bfloat16 emulated only) as device 1."""
    import contextlib

    from dimlearn.devices import native_bfloat16

    current = {"index": 0}
    native = {0: True, 1: False}

    @contextlib.contextmanager
    def on(index):
        before, current["index"] = current["index"], index
        try:
            yield
        finally:
            current["index"] = before

    def is_bf16_supported(including_emulation=True):
        return including_emulation or native[current["index"]]

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current["index"])
    monkeypatch.setattr(torch.cuda, "device", on)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    assert native_bfloat16(torch.device("cuda:0"))
    assert not native_bfloat16(torch.device("cuda:1"))  # emulated: not native
    assert native_bfloat16(torch.device("cuda"))  # the current device, 0
    current["index"] = 1
    assert native_bfloat16(torch.device("cuda:0"))  # device 0, whatever is current
    assert not native_bfloat16(torch.device("cuda"))
