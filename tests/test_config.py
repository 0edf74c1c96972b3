"""The settings (one source for the parameters) and their resolution for one training call."""

import dataclasses

import numpy as np
import pytest

from dimlearn import DeepInfomaxTransformer
from dimlearn.config import resolved
from dimlearn.settings import TERM_NAMES, Settings


def test_the_settings_hold_the_parameters_of_the_same_names():
    params = DeepInfomaxTransformer(alpha=0.5, width=16, lr=3e-4).get_params()
    settings = Settings.from_params(params)
    assert settings.params() == params
    assert settings.objective.alpha == 0.5 and settings.optimisation.lr == 3e-4
    assert settings.objective.weights == dict(
        zip(TERM_NAMES, (0.5, 1.0, 0.1, 0.0, 0.0), strict=True)
    )
    assert settings.architecture.critic_hidden == 128


def test_the_settings_are_frozen_and_miss_no_parameter():
    settings = Settings.from_params(DeepInfomaxTransformer().get_params())
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.optimisation.lr = 1.0
    with pytest.raises(KeyError):
        Settings.from_params({"alpha": 0.0})


def layout(shape):
    from dimlearn.inputs import resolve_layout

    return resolve_layout(shape, None, "auto")


def resolve(params, shape, native=False, device_type="cpu"):
    settings = Settings.from_params(DeepInfomaxTransformer(**params).get_params())
    return resolved(settings, layout(shape), native_bfloat16=native, device_type=device_type)


def test_auto_precision_is_bfloat16_only_where_the_device_computes_it():
    for native, expected in ((True, "bfloat16"), (False, "float32")):
        assert resolve({}, (8, 8), native).runtime.precision == expected
        assert resolve({}, (5,), native).runtime.precision == "float32"  # table rows
    assert resolve({"precision": "float32"}, (8, 8), True).runtime.precision == "float32"


@pytest.mark.parametrize(
    "shape, flip",
    [
        ((8, 8), False),
        ((8, 8, 1), False),
        ((1, 8, 8), False),
        ((8, 8, 3), True),
        ((3, 8, 8), True),
        ((5,), False),
    ],
)
def test_auto_flip_mirrors_colour_images_only(shape, flip):
    assert resolve({}, shape).views.flip is flip
    for pinned in (True, False) if len(shape) > 1 else (False,):
        assert resolve({"flip": pinned}, shape).views.flip is pinned


@pytest.mark.parametrize(
    "params, shape, match",
    [
        ({"alpha": 0.0, "beta": 0.0}, (8, 8), "nothing rewards information"),
        ({"temperature": 0.1, "critic": "concat"}, (8, 8), "critic='dot'"),
        ({"precision": "float16"}, (8, 8), "needs a CUDA device"),
        ({"augment": True}, (5,), "crops and flips images"),
        ({"augment": True}, (8, 8), "Set views=1 to train one augmented view"),
        ({"augment": True, "views": 2}, (8, 8), "Set views=1 to train one augmented view"),
        ({"delta": 0.5, "tabular_encoder": "mlp"}, (5,), "one position"),
        ({"flip": True}, (5,), "flip=True mirrors images"),
    ],
)
def test_combinations_that_cannot_train_are_refused_with_the_fix(params, shape, match):
    with pytest.raises(ValueError, match=match):
        resolve(params, shape)


# -- what "auto" resolved to is kept: fitted attributes, history, files, continued fits ----


def _auto(fast, **params):
    return DeepInfomaxTransformer(**dict(fast, precision="auto", device="cpu", **params))


@pytest.mark.parametrize("native, precision", [(True, "bfloat16"), (False, "float32")])
def test_the_resolved_settings_are_fitted_attributes_and_in_the_history(
    monkeypatch, digit_images, fast, native, precision
):
    import dimlearn.training

    monkeypatch.setattr(dimlearn.training, "native_bfloat16", lambda device: native)
    X, _ = digit_images
    dim = _auto(fast).fit(X[:64])
    assert (dim.precision_, dim.views_, dim.flip_, dim.device_) == (precision, 2, False, "cpu")
    assert dim.get_params()["precision"] == "auto" and dim.get_params()["views"] == "auto"
    assert dim.get_params()["flip"] == "auto"
    for entry in dim.history_:
        chosen = (entry["precision"], entry["views"], entry["flip"], entry["device"])
        assert chosen == (precision, 2, False, "cpu")
    tables = _auto(fast).fit(X[:64].reshape(64, -1))
    assert (tables.precision_, tables.views_, tables.flip_) == ("float32", 1, False)
    colour = _auto(fast).fit(np.repeat(X[:64, :, :, None], 3, axis=3))
    assert colour.flip_ is True


def test_the_resolved_settings_survive_model_files_and_pickles(
    monkeypatch, digit_images, fast, tmp_path
):
    import pickle

    import dimlearn
    import dimlearn.training

    monkeypatch.setattr(dimlearn.training, "native_bfloat16", lambda device: True)
    X, _ = digit_images
    dim = _auto(fast).fit(X[:64])
    for copy in (
        dimlearn.load(dimlearn.save(dim, tmp_path / "dim.safetensors")),
        pickle.loads(pickle.dumps(dim)),
    ):
        assert (copy.precision_, copy.views_, copy.flip_, copy.device_) == (
            "bfloat16",
            2,
            False,
            "cpu",
        )
        assert copy.history_[-1, "precision"] == "bfloat16"
        assert copy.history_[-1, "flip"] is False


def test_a_continued_fit_keeps_the_choices_it_was_trained_with(
    monkeypatch, digit_images, fast, tmp_path
):
    import dimlearn
    import dimlearn.training

    X, _ = digit_images
    monkeypatch.setattr(dimlearn.training, "native_bfloat16", lambda device: True)
    path = dimlearn.save(
        _auto(fast).fit(X[:64]), tmp_path / "dim.safetensors", include_training_state=True
    )
    # continued on a machine without native bfloat16: still the model's own bfloat16
    monkeypatch.setattr(dimlearn.training, "native_bfloat16", lambda device: False)
    continued = dimlearn.load(path).set_params(warm_start=True).fit(X[:64])
    assert continued.precision_ == "bfloat16"
    assert list(continued.history_[:, "precision"]) == ["bfloat16"] * 4
    # unless the user sets another
    pinned = dimlearn.load(path).set_params(warm_start=True, precision="float32").fit(X[:64])
    assert pinned.precision_ == "float32"
    assert list(pinned.history_[:, "precision"]) == ["bfloat16"] * 2 + ["float32"] * 2
    # a fresh fit resolves anew
    assert _auto(fast).fit(X[:64]).precision_ == "float32"


def test_a_file_that_does_not_say_what_auto_resolved_to_reads_what_can_be_known(
    digit_images, fast, tmp_path
):
    """Files of dimlearn 0.3.0 have no precision_, views_, flip_ or device_, nor the flip
    parameter (they mirrored every augmented image)."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    import dimlearn
    from dimlearn.persistence import _digest

    X, _ = digit_images
    path = dimlearn.save(_auto(fast).fit(X[:64]), tmp_path / "dim.safetensors")
    with safe_open(str(path), "pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        metadata = handle.metadata()
    payload = json.loads(metadata["dimlearn"])
    for name in ("precision_", "views_", "flip_", "device_"):
        del payload["fitted"][name]
    del payload["params"]["flip"]
    payload["versions"]["dimlearn"] = "0.3.0"
    metadata["dimlearn"] = json.dumps(payload)
    metadata["sha256"] = _digest(tensors, f"{metadata['format_version']}|{metadata['dimlearn']}")
    save_file(tensors, str(path), metadata=metadata)
    older = dimlearn.load(path)
    assert (older.precision_, older.views_, older.flip_, older.device_) == (None, 2, True, None)
    with pytest.warns(UserWarning, match="Adam starts afresh"):
        older.set_params(precision="float32", warm_start=True).fit(X[:64])
    assert older.precision_ == "float32"


def test_a_pickle_of_0_3_0_without_flip_reads_as_it_trained(digit_images, fast):
    """dimlearn 0.3.0 had no ``flip`` and mirrored every augmented image: its pickles read
    with ``flip="auto"`` and ``flip_`` True for images, False for table rows, so a continued
    fit mirrors as that model did."""
    X, _ = digit_images
    for samples, expected in ((X[:64], True), (X[:64].reshape(64, -1), False)):
        state = _auto(fast).fit(samples).__getstate__()
        del state["flip"]
        del state["_fitted"]["fitted"]["flip_"]
        del state["_dimlearn_version"]  # pickles of 0.3.0 did not say
        older = DeepInfomaxTransformer.__new__(DeepInfomaxTransformer)
        older.__setstate__(state)
        assert (older.flip, older.flip_) == ("auto", expected)
        continued = older.set_params(warm_start=True).fit(samples)
        assert continued.flip_ is expected
        assert continued.history_[-1, "flip"] is expected
