"""The one way back from saved state (dimlearn.fitted.restore) refuses what it does not know:
unknown fields anywhere in a description, parameters missing from a file of this version, and
a bias before a BatchNorm layer in a file that is not dimlearn 0.2's. Each file below is
forged with a valid checksum, as anyone can (a checksum proves against damage, not tampering).
"""

import json
import pickle

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from dimlearn import DeepInfomaxTransformer, ModelFileError, load, save
from dimlearn.persistence import _digest


@pytest.fixture(scope="module")
def model(fast):
    X = np.random.default_rng(0).integers(0, 255, (24, 8, 8)).astype(np.uint8)
    return DeepInfomaxTransformer(**fast).fit(X), X


def forged(model, tmp_path, edit_payload=None, edit_tensors=None):
    """The model saved, its description and tensors edited, and signed again."""
    path = save(model, tmp_path / "m.safetensors", include_training_state=True)
    with safe_open(str(path), "pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        metadata = handle.metadata()
    payload = json.loads(metadata["dimlearn"])
    if edit_payload is not None:
        edit_payload(payload)
    if edit_tensors is not None:
        edit_tensors(tensors)
    metadata["dimlearn"] = json.dumps(payload)
    metadata["sha256"] = _digest(tensors, f"{metadata['format_version']}|{metadata['dimlearn']}")
    save_file(tensors, str(path), metadata=metadata)
    return path


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda p: p.update(comment="hello"), r"unknown fields \['comment'\]"),
        (lambda p: p["fitted"].update(input_min_=[0.0]), r"unknown fields \['fitted.input_min_'\]"),
        (lambda p: p["fitted"]["layout"].update(dpi=72), r"unknown layout fields \['dpi'\]"),
        (lambda p: p["params"].update(colour="blue"), r"unknown parameters \['colour'\]"),
        (lambda p: p["params"].pop("width"), r"no value for the parameters \['width'\]"),
        (lambda p: p["params"].pop("flip"), r"no value for the parameters \['flip'\]"),
        (lambda p: p.update(training_state="yes"), "training state is not what"),
    ],
    ids=["payload", "fitted", "layout", "param", "missing", "missing-newer", "state-flag"],
)
def test_a_file_with_unknown_or_missing_fields_is_refused(model, tmp_path, edit, match):
    with pytest.raises(ModelFileError, match=match):
        load(forged(model[0], tmp_path, edit))


def test_a_file_of_0_3_0_may_lack_what_0_3_0_lacked(model, tmp_path):
    def as_0_3_0(payload):
        payload["versions"]["dimlearn"] = "0.3.0"
        for name in ("flip", "reconstruction", "local_scales", "critic_width"):
            payload["params"].pop(name)

    loaded = load(forged(model[0], tmp_path, as_0_3_0))
    assert (loaded.flip, loaded.local_scales, loaded.critic_width) == ("auto", 1, None)
    np.testing.assert_array_equal(loaded.transform(model[1]), model[0].transform(model[1]))


def test_a_bias_before_batch_norm_is_refused_outside_0_2_files(model, tmp_path):
    """dimlearn 0.2's networks had such a bias, which loading folds into the running mean;
    a file of a later format never has one, so it is refused, not folded (which would move
    the codes)."""

    def add_bias(tensors):
        weight = tensors["module.encoder.to_local.2.weight"]
        tensors["module.encoder.to_local.2.bias"] = torch.ones(weight.shape[0])

    with pytest.raises(ModelFileError, match=r"encoder.to_local.2.bias \(not in the networks\)"):
        load(forged(model[0], tmp_path, edit_tensors=add_bias))


def test_a_pickle_with_a_missing_parameter_or_unknown_field_is_refused(model):
    state = model[0].__getstate__()
    without = {k: v for k, v in state.items() if k != "width"}
    with pytest.raises(ValueError, match=r"no value for the parameters \['width'\]"):
        DeepInfomaxTransformer.__new__(DeepInfomaxTransformer).__setstate__(without)
    extra = dict(state, _fitted=dict(state["_fitted"], notes="x"))
    with pytest.raises(ValueError, match=r"unknown fields \['notes'\]"):
        DeepInfomaxTransformer.__new__(DeepInfomaxTransformer).__setstate__(extra)


def test_pickles_say_which_dimlearn_wrote_them(model):
    import dimlearn

    state = model[0].__getstate__()
    assert state["_dimlearn_version"] == dimlearn.__version__
    again = pickle.loads(pickle.dumps(model[0]))
    np.testing.assert_array_equal(again.transform(model[1]), model[0].transform(model[1]))


def test_adams_amsgrad_moment_is_read_back_only_with_amsgrad(tmp_path):
    X = np.random.default_rng(1).random((24, 8, 8))
    params = dict(width=2, latent_dim=2, max_epochs=1, random_state=0, precision="float32")
    dim = DeepInfomaxTransformer(**params, optimizer__amsgrad=True).fit(X)
    path = save(dim, tmp_path / "m.safetensors", include_training_state=True)
    loaded = load(path)
    assert any("max_exp_avg_sq" in moments for moments in loaded._optimizer_state.values())
    loaded.set_params(warm_start=True).fit(X)  # continues with its own moments
