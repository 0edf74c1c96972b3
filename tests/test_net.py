"""The skorch net: the training step goes through the module's forward (so that
``torch.compile`` and data-parallel wrappers, which wrap ``forward``, wrap the whole step),
on batches read in their stored dtype and standardised where they land."""

import numpy as np
import torch

from dimlearn import DeepInfomaxTransformer
from dimlearn.infomax import DeepInfomaxModule
from dimlearn.inputs import ArrayBatches
from dimlearn.net import DeepInfomaxNet


def test_the_training_step_goes_through_forward_with_batches_read_as_uint8(monkeypatch):
    calls, steps, raw_dtypes, inputs = [], [], [], []
    original_forward = DeepInfomaxModule.forward
    original_raw = ArrayBatches.raw
    original_input = DeepInfomaxNet.model_input

    def forward(self, x, names, **step):
        calls.append(tuple(names))
        steps.append(step)
        return original_forward(self, x, names, **step)

    def raw(self, rows):
        batch = original_raw(self, rows)
        raw_dtypes.append(batch.dtype)
        return batch

    def model_input(self, x, training, part=None):
        inputs.append(x)
        return original_input(self, x, training, part)

    monkeypatch.setattr(DeepInfomaxModule, "forward", forward)
    monkeypatch.setattr(ArrayBatches, "raw", raw)
    monkeypatch.setattr(DeepInfomaxNet, "model_input", model_input)
    X = np.random.default_rng(0).integers(0, 256, size=(40, 8, 8, 3), dtype=np.uint8)
    dim = DeepInfomaxTransformer(max_epochs=1, width=4, latent_dim=4, batch_size=20).fit(X)
    assert calls == [("local", "prior")] * 2
    # the step's part (the whole batch here) and the training call's generator are passed
    # to forward, not set on the module
    assert [sorted(step) for step in steps] == [["generator", "part"]] * 2
    assert all(step["part"] is None for step in steps)
    assert isinstance(steps[0]["generator"], torch.Generator)
    assert steps[1]["generator"] is steps[0]["generator"]
    assert not hasattr(dim.module_, "generator") and not hasattr(dim.module_, "part")
    assert raw_dtypes == [torch.uint8] * 2  # read as stored: a quarter of float32's bytes
    # standardised before the step, channels first
    assert [tuple(x.shape) for x in inputs] == [(20, 3, 8, 8)] * 2
    assert all(x.dtype == torch.float32 for x in inputs)
    assert abs(float(torch.cat(inputs).mean())) < 0.1


def test_the_extra_settings_are_constructor_arguments():
    module = torch.nn.Linear(2, 2)
    net = DeepInfomaxNet(module, criterion=torch.nn.MSELoss, augment=True, precision="bfloat16")
    params = net.get_params()
    assert params["augment"] is True and params["precision"] == "bfloat16"
    assert params["ranks"] is None and params["epochs_before"] == 0
