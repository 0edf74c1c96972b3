"""Model files and pickles written by dimlearn 0.2 itself, read by this dimlearn.

The files in ``tests/fixtures/`` were written by a checkout of dimlearn 0.2's last commit
(``tests/fixtures/make_0_2_files.py`` says how; it also stored the inputs, 0.2's codes and
0.2's parameters in ``0_2_expected.json``). Nothing here writes a 0.2 file: the
tests only read them, so what they check is what 0.2 really wrote.

0.3 builds its networks without a bias in a layer directly before a BatchNorm layer and
without a bias in the critics' candidate embeddings; reading a 0.2 file or pickle folds
the first kind into the running means and drops the second
(:func:`dimlearn.networks.fold_old_biases`).
"""

import json
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from sklearn.base import clone
from sklearn.exceptions import InconsistentVersionWarning, NotFittedError
from sklearn.utils.validation import check_is_fitted

from dimlearn import DeepInfomaxTransformer, ModelFileError, load
from dimlearn.networks import batch_norm_pairs
from dimlearn.settings import SETTINGS
from dimlearn.upgrades import READ_AS
from tests.conftest import SUM_ROUNDING, UNIT_ROUNDOFF

FIXTURES = Path(__file__).parent / "fixtures"
# every 0.2 model file loads with the warning that its description is not checksummed; the
# test of that warning is test_a_0_2_model_file_warns_that_its_description_is_unprotected
pytestmark = pytest.mark.filterwarnings("ignore:.*format 1.*checksum covers the weights only")
ADDED_SINCE_0_2 = {
    name: READ_AS.get(name, setting.default)
    for name, setting in SETTINGS.items()
    if setting.since is not None
}
MODEL_FILES = {  # file -> the model of 0_2_expected.json it holds
    "0_2_image.safetensors": "image",
    "0_2_image_training_state.safetensors": "image",
    "0_2_tabular.safetensors": "tabular",
}

# -- tolerances -----------------------------------------------------------------------------
#
# The codes of 0_2_expected.json were computed on the machine that wrote the fixtures; this
# one may add the same float32 numbers in another order (another vector width, another
# thread count), which moves a code by at most SUM_ROUNDING of the codes' size (see
# tests/conftest.py). Folding a bias b into a running mean m changes one float32 operation
# per value before each BatchNorm: 0.2 computed (W x + b) - m, this version W x - (m - b),
# with m - b rounded once when the file is read. Each side rounds to within UNIT_ROUNDOFF
# of the largest of |W x|, |b|, |m|, so the two differ by at most two roundings of their
# size, carried through the rest of the encoder like any other relative error.
FOLD_ROUNDING = 2 * UNIT_ROUNDOFF
CODE_TOLERANCE = SUM_ROUNDING + FOLD_ROUNDING
"""Largest difference from 0.2's codes, relative to the largest code value."""


@pytest.fixture(scope="module")
def expected():
    """``0_2_expected.json``: inputs, parameters, codes and epochs of 0.2."""
    return json.loads((FIXTURES / "0_2_expected.json").read_text())


def inputs(expected, kind: str) -> np.ndarray:
    """The float64 array that 0.2 was fitted on and transformed (the digits, stored as
    their integer values 0..16, or the table rows)."""
    return np.asarray(expected["inputs"][kind], dtype=np.float64)


def params_of_0_2(record: dict) -> dict:
    """0.2's ``get_params()`` as JSON stored it (``image_shape``'s tuple came back as a
    list), with the values that behave as 0.2 did for the parameters added since."""
    params = dict(record["params"])
    if params["image_shape"] is not None:
        params["image_shape"] = tuple(params["image_shape"])
    assert not set(params) & set(ADDED_SINCE_0_2)  # 0.2 really had none of them
    return {**params, **ADDED_SINCE_0_2}


def assert_codes_of_0_2(codes: np.ndarray, record: dict) -> None:
    """Assert that ``codes`` are 0.2's codes of ``record`` within :data:`CODE_TOLERANCE`."""
    expected_codes = np.asarray(record["codes"], dtype=np.float32)
    assert codes.dtype == np.float32 and codes.shape == expected_codes.shape
    atol = CODE_TOLERANCE * np.abs(expected_codes).max()
    np.testing.assert_allclose(codes, expected_codes, rtol=0, atol=atol)


def unpickle(name: str):
    """Unpickle a fixture; scikit-learn warns if it is not the version that pickled it
    (``written_by`` in the JSON), which is no concern of these tests."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InconsistentVersionWarning)
        return pickle.loads((FIXTURES / name).read_bytes())


def read_tensors(name: str) -> dict:
    """The network weights of a model file, by state-dict name (without ``module.``)."""
    with safe_open(str(FIXTURES / name), "pt") as handle:
        return {
            key.removeprefix("module."): handle.get_tensor(key)
            for key in handle.keys()
            if key.startswith("module.")
        }


# -- model files ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MODEL_FILES))
def test_a_model_file_of_0_2_loads_with_0_2s_codes_parameters_and_epochs(expected, name):
    kind = MODEL_FILES[name]
    record = expected[kind]
    loaded = load(FIXTURES / name)
    assert_codes_of_0_2(loaded.transform(inputs(expected, kind)), record)
    assert loaded.get_params() == params_of_0_2(record)
    assert loaded.n_iter_ == record["n_iter_"] == len(loaded.loss_curve_)
    assert (loaded.views_, loaded.precision_) == (1, "float32")  # how 0.2 trained
    assert (loaded.flip, loaded.flip_) == ("auto", kind == "image")  # 0.2 mirrored images


@pytest.mark.parametrize("name", sorted(MODEL_FILES))
def test_every_weight_of_a_0_2_file_is_used_or_folded_away(name):
    """Every tensor of the file is in the loaded networks as it was, except the biases
    that 0.3's networks do not have: those before a BatchNorm layer are subtracted from its
    running mean, those of the critics' candidate embeddings are dropped."""
    old = read_tensors(name)
    module = load(FIXTURES / name).module_
    new = module.state_dict()
    assert set(new) <= set(old)  # nothing new was invented
    folded = {}
    for layer, batch_norm in batch_norm_pairs(module):
        if f"{layer}.bias" in old:
            folded[f"{batch_norm}.running_mean"] = f"{layer}.bias"
    assert folded  # 0.2 had such biases: the test below is not empty
    for key, value in old.items():
        if key in folded:
            expected_mean = value - old[folded[key]]  # the same float32 subtraction
            assert torch.equal(new[key], expected_mean), key
        elif key in new:
            assert torch.equal(new[key], value), key
        else:  # a bias this version's layer does not have
            layer, _, what = key.rpartition(".")
            assert what == "bias" and module.get_submodule(layer).bias is None, key


@pytest.mark.parametrize("name", ["0_2_image.safetensors", "0_2_tabular.safetensors"])
def test_without_the_folded_biases_the_codes_would_miss_the_tolerance(expected, name):
    """The tolerance is tight enough to see a bias that was dropped instead of folded."""
    kind = MODEL_FILES[name]
    old = read_tensors(name)
    loaded = load(FIXTURES / name)
    with torch.no_grad():
        for layer, batch_norm in batch_norm_pairs(loaded.module_):
            if f"{layer}.bias" in old:
                loaded.module_.get_submodule(batch_norm).running_mean += old[f"{layer}.bias"]
    codes = loaded.transform(inputs(expected, kind))
    with pytest.raises(AssertionError):
        assert_codes_of_0_2(codes, expected[kind])


def test_a_0_2_file_with_training_state_trains_on_with_adams_moments(expected):
    X = inputs(expected, "image")
    loaded = load(FIXTURES / "0_2_image_training_state.safetensors")
    before = loaded.transform(X)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Adam's moments are there: no "afresh" warning
        loaded.set_params(warm_start=True, max_epochs=1).fit(X)
    assert loaded.n_iter_ == expected["image"]["n_iter_"] + 1
    assert not np.array_equal(loaded.transform(X), before)


def test_a_0_2_file_without_training_state_trains_on_with_a_fresh_adam(expected):
    X = inputs(expected, "tabular")
    loaded = load(FIXTURES / "0_2_tabular.safetensors").set_params(warm_start=True)
    with pytest.warns(UserWarning, match="Adam starts afresh"):
        loaded.set_params(max_epochs=1).fit(X)
    assert loaded.n_iter_ == expected["tabular"]["n_iter_"] + 1


def test_a_weight_changed_in_a_0_2_file_fails_its_checksum(expected, tmp_path):
    """0.2's checksum covers the weights (``weights_sha256`` in its description)."""
    with safe_open(str(FIXTURES / "0_2_tabular.safetensors"), "pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        metadata = handle.metadata()
    copied = tmp_path / "copied.safetensors"
    save_file(tensors, str(copied), metadata=metadata)
    assert_codes_of_0_2(load(copied).transform(inputs(expected, "tabular")), expected["tabular"])
    key = "module.encoder.to_code.weight"
    tensors[key] = tensors[key] + 1.0
    altered = tmp_path / "altered.safetensors"
    save_file(tensors, str(altered), metadata=metadata)
    with pytest.raises(ModelFileError, match="weights do not match the checksum"):
        load(altered)


# -- pickles ----------------------------------------------------------------------------------


def test_a_fitted_pickle_of_0_2_gives_0_2s_codes_and_parameters(expected):
    record = expected["image"]
    dim = unpickle("0_2_image_fitted.pickle")
    codes = dim.transform(inputs(expected, "image"))
    assert_codes_of_0_2(codes, record)
    assert dim.get_params() == params_of_0_2(record)
    assert dim.n_iter_ == record["n_iter_"]
    assert (dim.views_, dim.precision_, dim.flip_) == (1, "float32", True)  # how 0.2 trained
    # pickled again by this version, it is the same model
    again = pickle.loads(pickle.dumps(dim))
    np.testing.assert_array_equal(again.transform(inputs(expected, "image")), codes)


def test_a_fitted_pickle_of_0_2_trains_on_with_adams_moments(expected):
    X = inputs(expected, "image")
    dim = unpickle("0_2_image_fitted.pickle")
    before = dim.transform(X)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 0.2 pickled Adam's moments: no "afresh" warning
        dim.set_params(warm_start=True, max_epochs=1).fit(X)
    assert dim.n_iter_ == expected["image"]["n_iter_"] + 1
    assert len(dim.loss_curve_) == dim.n_iter_
    assert not np.array_equal(dim.transform(X), before)


def test_an_unfitted_pickle_of_0_2_has_its_parameters_and_0_2s_new_ones(expected):
    dim = unpickle("0_2_unfitted.pickle")
    with pytest.raises(NotFittedError):
        check_is_fitted(dim)
    params = params_of_0_2(expected["unfitted"])
    assert params != DeepInfomaxTransformer().get_params()  # not the defaults
    assert dim.get_params() == params
    assert clone(dim).get_params() == params


def test_an_unfitted_pickle_of_0_2_clones_and_fits(expected):
    dim = unpickle("0_2_unfitted.pickle")
    X = inputs(expected, "image").reshape(-1, 64)  # flat images: image_shape=(8, 8)
    fitted = clone(dim).fit(X)
    codes = fitted.transform(X)
    assert codes.shape == (len(X), expected["unfitted"]["params"]["latent_dim"])
    assert np.isfinite(codes).all()
    assert fitted.n_iter_ == expected["unfitted"]["params"]["max_epochs"]


def test_a_0_2_model_file_warns_that_its_description_is_unprotected():
    with pytest.warns(
        UserWarning, match=r"dimlearn 0.2 \(format 1\).*dimlearn.save\(dimlearn.load"
    ):
        load(FIXTURES / "0_2_tabular.safetensors")
