"""Model files, a pickle and a skops file written by dimlearn 0.3.0 (bd60208), read by this one.

``tests/fixtures/make_0_3_files.py`` wrote them with that commit (its docstring says how) and
stored the inputs, the codes of that version's ``transform`` and the machine in
``0_3_expected.json``. Nothing here writes a 0.3 file.

Tolerance: another processor (vector width, cache sizes that decide oneDNN's blocking) may add
the same float32 numbers in another order, which moves a code by at most ``SUM_ROUNDING`` of
the codes' size (tests/conftest.py), so that is what this test allows on any machine. That
nothing moved bit for bit is checked on one machine against a checkout of bd60208 with
``benchmarks/codes_of.py`` (its docstring says how).
"""

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from dimlearn import DeepInfomaxTransformer, load, save
from tests.conftest import SUM_ROUNDING

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def expected():
    return json.loads((FIXTURES / "0_3_expected.json").read_text())


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def inputs(expected, kind):
    X = np.asarray(expected["inputs"][kind])
    return X.astype(np.uint8) if kind == "image" else X


def assert_same_codes(codes, expected, kind):
    wanted = np.asarray(expected[kind]["codes"], dtype=np.float32)
    np.testing.assert_allclose(codes, wanted, rtol=0, atol=SUM_ROUNDING * np.abs(wanted).max())


@pytest.mark.parametrize(
    "name, kind", [("0_3_image.safetensors", "image"), ("0_3_tabular.safetensors", "tabular")]
)
def test_0_3_model_files_give_0_3s_codes(name, kind, expected, one_thread):
    model = load(FIXTURES / name)
    assert model.get_params() == {
        **expected[kind]["params"],
        **{k: v for k, v in model.get_params().items() if k not in expected[kind]["params"]},
    }
    assert model.n_iter_ == expected[kind]["n_iter_"]
    assert_same_codes(model.transform(inputs(expected, kind)), expected, kind)


def test_0_3_pickle_gives_0_3s_codes_and_continues(expected, one_thread):
    with open(FIXTURES / "0_3_image_fitted.pickle", "rb") as handle:
        model = pickle.load(handle)
    assert isinstance(model, DeepInfomaxTransformer)
    X = inputs(expected, "image")
    assert_same_codes(model.transform(X), expected, "image")
    assert (model.views_, model.flip_, model.precision_) == (2, False, "float32")
    model.set_params(warm_start=True, max_epochs=1).fit(X)  # its training state came along
    assert model.n_iter_ == expected["image"]["n_iter_"] + 1


def test_0_3_skops_pipeline_gives_0_3s_codes(expected, one_thread):
    skops_io = pytest.importorskip("skops.io", reason="needs the skops extra")
    path = FIXTURES / "0_3_image_pipeline.skops"
    pipeline = skops_io.load(path, trusted=skops_io.get_untrusted_types(file=path))
    assert_same_codes(pipeline.transform(inputs(expected, "image")), expected, "image")


def test_0_3_model_file_saved_again_keeps_its_codes(expected, one_thread, tmp_path):
    model = load(FIXTURES / "0_3_image.safetensors")
    again = load(save(model, tmp_path / "again.safetensors", include_training_state=True))
    X = inputs(expected, "image")
    np.testing.assert_array_equal(again.transform(X), model.transform(X))
