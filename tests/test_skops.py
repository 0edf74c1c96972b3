"""A whole Pipeline saved safely: the fitted estimator pickles as plain values and numpy
arrays, so ``skops.io`` stores and reloads it, trusting only the types that the docs' table
of model files lists (docs/user_guide/model_files.md, the row of ``skops.io.dump``)."""

import pickle
import re
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline

from dimlearn import DeepInfomaxTransformer

sio = pytest.importorskip("skops.io")

MODEL_FILES_PAGE = Path(__file__).parents[1] / "docs" / "user_guide" / "model_files.md"


def documented_trusted_types() -> list[str]:
    """The types the docs say to trust when loading a skops file of dimlearn's."""
    text = MODEL_FILES_PAGE.read_text()
    row = next(line for line in text.splitlines() if "skops.io.dump" in line and "|" in line)
    return re.findall(r"`(dimlearn\.[\w.]+)`", row)


def round_trip(obj, path):
    sio.dump(obj, path)
    assert sorted(sio.get_untrusted_types(file=path)) == sorted(documented_trusted_types())
    return sio.load(path, trusted=documented_trusted_types())


def test_the_docs_name_the_estimator_as_the_one_type_to_trust():
    assert documented_trusted_types() == ["dimlearn.estimator.DeepInfomaxTransformer"]


def test_a_pipeline_round_trips_through_skops_bit_for_bit(digit_images, fast, tmp_path):
    X, y = digit_images
    pipe = Pipeline(
        [("dim", DeepInfomaxTransformer(**fast)), ("clf", LogisticRegression(max_iter=2000))]
    ).fit(X[:300], y[:300])
    loaded = round_trip(pipe, tmp_path / "pipe.skops")
    np.testing.assert_array_equal(loaded.predict(X[300:]), pipe.predict(X[300:]))
    np.testing.assert_array_equal(loaded[:-1].transform(X), pipe[:-1].transform(X))


def test_a_transformer_alone_round_trips_and_keeps_training_like_the_original(
    digit_images, fast, tmp_path
):
    X, _ = digit_images
    dim = DeepInfomaxTransformer(**fast, alpha=0.5, prior="adversarial").fit(X[:200])
    loaded = round_trip(dim, tmp_path / "dim.skops")
    np.testing.assert_array_equal(loaded.transform(X), dim.transform(X))
    assert loaded.score(X[200:400]) == dim.score(X[200:400])
    # the training state came along: continuing equals continuing the original
    loaded.set_params(warm_start=True).fit(X[200:400])
    dim.set_params(warm_start=True).fit(X[200:400])
    np.testing.assert_array_equal(loaded.transform(X), dim.transform(X))
    assert loaded.loss_curve_ == dim.loss_curve_


def test_a_search_s_best_estimator_round_trips(digit_images, fast, tmp_path):
    X, y = digit_images
    pipe = Pipeline([("dim", DeepInfomaxTransformer(**fast)), ("clf", LogisticRegression())])
    search = GridSearchCV(pipe, {"dim__gamma": [0.0, 0.1]}, cv=2).fit(X[:200], y[:200])
    loaded = round_trip(search.best_estimator_, tmp_path / "best.skops")
    np.testing.assert_array_equal(loaded.predict(X[200:]), search.predict(X[200:]))


def test_an_unfitted_estimator_round_trips(tmp_path):
    loaded = round_trip(DeepInfomaxTransformer(alpha=0.3), tmp_path / "unfitted.skops")
    assert loaded.get_params() == DeepInfomaxTransformer(alpha=0.3).get_params()


class _Stranger(TransformerMixin, BaseEstimator):
    """A type nobody listed as trusted."""

    def fit(self, X, y=None):
        return self

    def transform(self, X):
        return X


def test_a_file_naming_a_type_outside_the_list_is_refused(digit_images, fast, tmp_path):
    X, _ = digit_images
    pipe = Pipeline([("dim", DeepInfomaxTransformer(**fast)), ("other", _Stranger())]).fit(X[:60])
    path = tmp_path / "pipe.skops"
    sio.dump(pipe, path)
    assert f"{__name__}._Stranger" in sio.get_untrusted_types(file=path)
    with pytest.raises(Exception, match="Untrusted types found") as refused:
        sio.load(path, trusted=documented_trusted_types())
    assert type(refused.value).__name__ == "UntrustedTypesFoundException"
    with pytest.raises(Exception, match="Untrusted types found"):
        sio.load(path)  # nothing trusted: our own type is refused too


def test_the_pickled_state_holds_plain_values_and_arrays_only(digit_images, fast):
    X, _ = digit_images
    dim = DeepInfomaxTransformer(**fast).fit(X[:100])

    def plain(value):
        if isinstance(value, dict):
            return all(plain(v) for v in value.values())
        if isinstance(value, list | tuple):
            return all(plain(v) for v in value)
        return value is None or isinstance(value, bool | int | float | str | np.ndarray)

    assert plain(dim.__getstate__())
    assert "module_" in vars(dim)  # the instance keeps its torch objects


def test_joblib_and_pickle_keep_working(digit_images, fast, tmp_path):
    X, _ = digit_images
    dim = DeepInfomaxTransformer(**fast).fit(X[:100])
    joblib.dump(dim, tmp_path / "dim.joblib")
    for copy in (joblib.load(tmp_path / "dim.joblib"), pickle.loads(pickle.dumps(dim))):
        np.testing.assert_array_equal(copy.transform(X), dim.transform(X))


def test_a_pickle_of_a_newer_format_is_refused_by_version(digit_images, fast):
    X, _ = digit_images
    state = DeepInfomaxTransformer(**fast).fit(X[:60]).__getstate__()
    state["_pickle_format"] = 99
    with pytest.raises(ValueError, match="pickled by a newer dimlearn .*format 99"):
        DeepInfomaxTransformer.__new__(DeepInfomaxTransformer).__setstate__(state)
