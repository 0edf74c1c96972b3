"""The user stories of the README and the estimator's contract, on small data."""

import warnings

import joblib
import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.neighbors import NearestNeighbors
from sklearn.pipeline import Pipeline

import dimlearn.estimator as estimator_module
import dimlearn.inputs as inputs_module
import dimlearn.training as training_module
from dimlearn import DeepInfomaxTransformer
from tests.conftest import SUM_ROUNDING, small_images

KERAS_FORM = dict(
    alpha=0.5,
    beta=1.0,
    gamma=0.1,
    prior="kl",
    negatives="shuffle",
    critic="concat",
    mi_estimator="jsd",
)


@pytest.fixture(scope="module")
def fitted_digits(digit_images):
    X, y = digit_images
    # float32: its codes are compared within float32 sums' rounding (SUM_ROUNDING), and
    # precision="auto" would train in bfloat16 on some CPUs only
    params = dict(max_epochs=5, width=8, latent_dim=16, random_state=0, precision="float32")
    dim = DeepInfomaxTransformer(**params)
    return dim.fit(X[:600]), X, y


# -- user stories ---------------------------------------------------------------------


def test_pipeline_with_logistic_regression_scores_above_chance(digit_images):
    X, y = digit_images
    pipe = Pipeline(
        [
            ("dim", DeepInfomaxTransformer(max_epochs=5, width=8, latent_dim=16, random_state=0)),
            ("clf", LogisticRegression(max_iter=2000)),
        ]
    )
    pipe.fit(X[:1000], y[:1000])
    accuracy = pipe.score(X[1000:1400], y[1000:1400])
    # plumbing: rows stay aligned with labels through the pipeline (chance is 0.1)
    assert accuracy > 0.3


def test_nearest_neighbours_on_codes_find_same_class_images(fitted_digits):
    dim, X, y = fitted_digits
    codes = dim.transform(X[:600])
    index = NearestNeighbors(n_neighbors=6, metric="cosine").fit(codes)
    _, neighbours = index.kneighbors(dim.transform(X[600:800]))
    # the first neighbour is another training image; same class far above chance (0.1)
    same_class = (y[:600][neighbours[:, :5]] == y[600:800, None]).mean()
    assert same_class > 0.3


@pytest.mark.slow
def test_grid_search_over_loss_weights_in_parallel(digit_images):
    X, y = digit_images
    pipe = Pipeline(
        [
            ("dim", DeepInfomaxTransformer(max_epochs=1, width=4, latent_dim=8, random_state=0)),
            ("clf", LogisticRegression(max_iter=500)),
        ]
    )
    grid = {"dim__alpha": [0.0, 0.5], "dim__beta": [1.0], "dim__gamma": [0.0, 0.1]}
    search = GridSearchCV(pipe, grid, cv=2, n_jobs=2, error_score="raise")
    search.fit(X[:300], y[:300])
    assert len(search.cv_results_["params"]) == 4
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()
    assert search.best_estimator_.named_steps["dim"].n_iter_ == 1


def test_joblib_round_trip_transforms_identically(fitted_digits, tmp_path):
    dim, X, _ = fitted_digits
    path = tmp_path / "dim.joblib"
    joblib.dump(dim, path)
    loaded = joblib.load(path)
    np.testing.assert_array_equal(loaded.transform(X), dim.transform(X))


def test_fitted_state_is_on_the_cpu(fitted_digits):
    dim, _, _ = fitted_digits
    tensors = list(dim.module_.parameters()) + list(dim.module_.buffers())
    assert {t.device.type for t in tensors} == {"cpu"}
    assert not dim.module_.training


@pytest.mark.skipif(torch.cuda.is_available(), reason="simulates a machine without CUDA")
def test_model_asking_for_cuda_transforms_on_cpu_with_a_warning(fitted_digits, tmp_path):
    # what a model fitted with device="cuda" meets on a laptop: its state is CPU tensors,
    # and transform falls back to the CPU rather than fail
    dim, X, _ = fitted_digits
    path = tmp_path / "gpu_model.joblib"
    joblib.dump(clone(dim).set_params(device="cuda"), path)  # unfitted: params travel as given
    assert joblib.load(path).device == "cuda"
    joblib.dump(dim, path)
    gpu_like = joblib.load(path).set_params(device="cuda")
    with pytest.warns(UserWarning, match="CUDA is not available here; running on the CPU"):
        codes = gpu_like.transform(X[:50])
    np.testing.assert_array_equal(codes, dim.transform(X[:50]))


# -- fit / transform contract -----------------------------------------------------------


def test_same_random_state_gives_bit_identical_transforms_on_cpu(digit_images, fast):
    X, _ = digit_images
    a = DeepInfomaxTransformer(**fast).fit(X[:200]).transform(X[:200])
    b = DeepInfomaxTransformer(**fast).fit(X[:200]).transform(X[:200])
    np.testing.assert_array_equal(a, b)
    c = DeepInfomaxTransformer(**{**fast, "random_state": 1}).fit(X[:200]).transform(X[:200])
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("precision", ["auto", "bfloat16"])
def test_the_auto_defaults_and_bfloat16_are_bit_reproducible_too(digit_images, fast, precision):
    # "auto" is bfloat16 on CPUs that compute it natively, float32 elsewhere: either way the
    # same seed on the same machine gives the same numbers (two views drawn from the seed)
    X, _ = digit_images
    params = {**fast, "precision": precision, "views": "auto"}
    a = DeepInfomaxTransformer(**params).fit(X[:200]).transform(X[:200])
    b = DeepInfomaxTransformer(**params).fit(X[:200]).transform(X[:200])
    np.testing.assert_array_equal(a, b)
    assert np.isfinite(a).all()


def test_fit_leaves_torch_global_rng_alone(digit_images, fast):
    X, _ = digit_images
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    DeepInfomaxTransformer(**fast).fit(X[:100])
    torch.testing.assert_close(torch.rand(3), expected)


def test_transform_returns_float32_code_means(fitted_digits):
    dim, X, _ = fitted_digits
    codes = dim.transform(X[:10])
    assert codes.dtype == np.float32 and codes.shape == (10, 16)
    np.testing.assert_array_equal(codes, dim.transform(X[:10]))  # the mean, not a sample


def test_fit_transform_equals_fit_then_transform(digit_images, fast):
    X, _ = digit_images
    a = DeepInfomaxTransformer(**fast).fit_transform(X[:100])
    b = DeepInfomaxTransformer(**fast).fit(X[:100]).transform(X[:100])
    np.testing.assert_array_equal(a, b)


def test_transform_runs_in_batches(fitted_digits, monkeypatch):
    dim, X, _ = fitted_digits
    full = dim.transform(X[:23])
    monkeypatch.setattr(estimator_module, "_TRANSFORM_BATCH", 5)
    sizes = []
    hook = dim.module_.encoder.to_local.register_forward_hook(
        lambda m, args, out: sizes.append(len(args[0]))
    )
    try:
        batched = dim.transform(X[:23])
    finally:
        hook.remove()
    assert sizes == [5, 5, 5, 5, 3]
    # other batch sizes may split the convolutions' sums otherwise: one sum's rounding
    np.testing.assert_allclose(batched, full, rtol=0, atol=SUM_ROUNDING * np.abs(full).max())


def test_history_records_loss_and_each_term_per_epoch(digit_images, fitted_digits, fast):
    assert fitted_digits[0].n_iter_ == 5 and len(fitted_digits[0].loss_curve_) == 5
    X, _ = digit_images
    dim = DeepInfomaxTransformer(**{**fast, **KERAS_FORM}).fit(X[:100])  # all three terms
    last = dim.history_[-1]
    for key in ("train_loss", "train_global", "train_local", "train_prior"):
        assert np.isfinite(last[key])
    expected = 0.5 * last["train_global"] + 1.0 * last["train_local"] + 0.1 * last["train_prior"]
    assert last["train_loss"] == pytest.approx(expected, rel=1e-5)


def test_zero_weight_terms_are_not_computed(digit_images, fast):
    X, _ = digit_images
    dim = DeepInfomaxTransformer(**{**fast, "alpha": 0.0, "gamma": 0.0}).fit(X[:60])
    assert "train_local" in dim.history_[-1]
    assert "train_global" not in dim.history_[-1] and "train_prior" not in dim.history_[-1]


def test_training_lowers_the_loss(digit_images):
    X, _ = digit_images
    # float32: the thresholds were set on float32 losses, and precision="auto" would train
    # in bfloat16 on CPUs with AVX512-BF16 or AMX only (drops measured on one with it, in
    # float32 / bfloat16: one view 0.690 / 0.691, two views 0.097 / 0.097)
    params = dict(max_epochs=8, width=8, latent_dim=8, random_state=0, precision="float32")
    dim = DeepInfomaxTransformer(**params, views=1).fit(X[:400])
    assert dim.loss_curve_[-1] < dim.loss_curve_[0] - 0.2
    two_views = DeepInfomaxTransformer(**params).fit(X[:400])  # the default on images
    assert two_views.loss_curve_[-1] < two_views.loss_curve_[0] - 0.05


def test_feature_names_and_pandas_output(fitted_digits):
    pd = pytest.importorskip("pandas")
    dim, X, _ = fitted_digits
    names = dim.get_feature_names_out()
    assert list(names[:2]) == ["deepinfomaxtransformer0", "deepinfomaxtransformer1"]
    out = clone(dim).set_output(transform="pandas").fit(X[:60]).transform(X[:5])
    assert isinstance(out, pd.DataFrame) and list(out.columns) == list(names)


def test_verbose_prints_epoch_table_and_progress_bar(digit_images, capsys, fast):
    X, _ = digit_images
    DeepInfomaxTransformer(**{**fast, "verbose": 1}).fit(X[:60])
    captured = capsys.readouterr()
    assert "train_loss" in captured.out and "train_local" in captured.out
    assert "it/s" in captured.err or "%" in captured.err


def test_silent_by_default(digit_images, capsys, fast):
    X, _ = digit_images
    DeepInfomaxTransformer(**fast).fit(X[:60])
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


# -- input layouts -----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
def test_every_image_layout_gives_the_same_model(dtype, fast):
    hwc = small_images(n=20, shape=(9, 10, 3), dtype=dtype)
    variants = {
        "hwc": (hwc, {}),
        "chw": (np.ascontiguousarray(hwc.transpose(0, 3, 1, 2)), {}),
        "flat": (hwc.reshape(20, -1), {"image_shape": (9, 10, 3)}),
    }
    codes = {
        name: DeepInfomaxTransformer(**fast, **params).fit(X).transform(X)
        for name, (X, params) in variants.items()
    }
    np.testing.assert_allclose(codes["chw"], codes["hwc"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(codes["flat"], codes["hwc"], rtol=1e-4, atol=1e-5)


def test_uint8_and_float_images_give_the_same_model(fast):
    X = small_images(n=20, shape=(8, 8))
    a = DeepInfomaxTransformer(**fast).fit(X).transform(X)
    b = DeepInfomaxTransformer(**fast).fit(X / 255.0).transform(X / 255.0)
    # the standardised inputs differ by the rounding of x / 255 alone, and both fits add
    # them up in the same order: the codes agree within one sum's rounding of their size
    np.testing.assert_allclose(a, b, rtol=0, atol=SUM_ROUNDING * np.abs(a).max())


def test_grey_images_and_explicit_channels_first(fast):
    grey = small_images(n=12, shape=(8, 8))
    assert DeepInfomaxTransformer(**fast).fit_transform(grey).shape == (12, 8)
    many_channels = small_images(n=12, shape=(6, 8, 8)).astype(np.float32)
    dim = DeepInfomaxTransformer(**fast, image_layout="channels_first")
    assert dim.fit_transform(many_channels).shape == (12, 8)


@pytest.mark.parametrize("encoder", ["tokens", "mlp"])
def test_tabular_rows_use_the_tabular_encoders(fast, encoder):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 7))
    dim = DeepInfomaxTransformer(**fast, tabular_encoder=encoder).fit(X)
    expected = {"tokens": "TokenEncoder", "mlp": "MLPEncoder"}[encoder]
    assert type(dim.module_.encoder).__name__ == expected
    assert dim.transform(X).shape == (50, 8)
    positions = 7 if encoder == "tokens" else 1  # a position of the local map per feature
    assert dim.module_.encoder.local_shape[1:] == (positions, 1)


@pytest.mark.slow
def test_a_table_of_5000_features_fits_at_the_default_width_within_the_bound(tmp_path):
    # width 64 would give the token encoder's fc layer 82 M weights here and the global
    # critic 164 M; both are bounded (dimlearn.networks.MAX_FLAT_WEIGHTS), and a model file
    # rebuilds the same networks from the parameters and the input layout
    import dimlearn
    from dimlearn.networks import MAX_FLAT_WEIGHTS

    X = np.random.default_rng(0).normal(size=(8, 5_000)).astype(np.float32)
    dim = DeepInfomaxTransformer(max_epochs=1, batch_size=4, random_state=0).fit(X)
    codes = dim.transform(X)
    assert codes.shape == (8, 64) and np.isfinite(codes).all()
    sizes = [p.numel() for p in dim.module_.parameters()]
    assert max(sizes) <= MAX_FLAT_WEIGHTS
    assert sum(sizes) <= MAX_FLAT_WEIGHTS + 2 * 5_000 * 64 + 1_000_000  # + tokens, critic
    dimlearn.save(dim, tmp_path / "wide.safetensors")
    np.testing.assert_array_equal(dimlearn.load(tmp_path / "wide.safetensors").transform(X), codes)


def test_a_table_too_wide_for_the_tokens_is_refused_before_training(no_training, monkeypatch):
    def no_statistics(*args):
        raise AssertionError("the pass over X for the input statistics came first")

    monkeypatch.setattr(inputs_module, "channel_stats", no_statistics)
    X = np.zeros((4, 65_537), dtype=np.float32)
    dim = DeepInfomaxTransformer(max_epochs=1, random_state=0)
    with pytest.raises(ValueError, match="Set width=63 or less, tabular_encoder='mlp'"):
        dim.fit(X)
    assert not hasattr(dim, "module_")


def test_list_input_is_accepted(digit_images, fast):
    X, _ = digit_images
    codes = DeepInfomaxTransformer(**fast).fit(X[:20].tolist()).transform(X[:5].tolist())
    assert codes.shape == (5, 8)


# -- bad input: a clear error before any training --------------------------------------


@pytest.fixture
def no_training(monkeypatch):
    """Fails the test if training starts: every error below must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("training started before the input was rejected")

    monkeypatch.setattr(training_module, "train_net", refuse)


@pytest.mark.parametrize(
    ("X", "error", "match"),
    [
        (np.array([[0.0, np.nan], [1.0, 2.0]]), ValueError, "NaN"),
        (np.array([[0.0, np.inf], [1.0, 2.0]]), ValueError, "infinity"),
        (np.zeros(10), ValueError, "Expected 2D array"),
        (np.zeros((1, 8, 8)), ValueError, "minimum of 2 is required"),
        (np.zeros((5, 6, 6)), ValueError, "too small for the conv encoder"),
        (np.zeros((5, 8, 8, 8, 2)), ValueError, "X has 5 dimensions"),
        (np.array([["a", "b"], ["c", "d"]]), ValueError, "string"),
        (np.zeros((4, 3), dtype=complex), ValueError, "[Cc]omplex"),
        (np.zeros((4, 3, 16, 3)), ValueError, "Cannot tell whether"),
    ],
)
def test_bad_input_is_refused_before_training(no_training, X, error, match, fast):
    with pytest.raises(error, match=match):
        DeepInfomaxTransformer(**fast).fit(X)


def test_nan_in_images_is_refused(no_training, fast):
    X = small_images(shape=(8, 8)).astype(float)
    X[3, 2, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        DeepInfomaxTransformer(**fast).fit(X)


def test_unknown_device_is_refused(no_training, fast):
    with pytest.raises(ValueError, match="'auto', 'cpu', 'cuda', 'cuda:N'.*Got 'gpu0'"):
        DeepInfomaxTransformer(**{**fast, "device": "gpu0"}).fit(small_images())


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_cuda_is_refused(no_training, device, fast):
    with pytest.raises(ValueError, match="CUDA is not available here.*device='cpu'"):
        DeepInfomaxTransformer(**{**fast, "device": device}).fit(small_images())


def test_auto_device_picks_cpu_without_cuda():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert estimator_module.resolve_device("auto").type == expected


def test_no_mi_term_is_refused(no_training, fast):
    with pytest.raises(ValueError, match="alpha, beta and reconstruction are all 0"):
        DeepInfomaxTransformer(**{**fast, "alpha": 0, "beta": 0}).fit(small_images())


@pytest.mark.parametrize(
    ("param", "value"), [("alpha", -1.0), ("latent_dim", 0), ("batch_size", 1), ("lr", 0.0)]
)
def test_invalid_parameters_are_refused(no_training, param, value, fast):
    with pytest.raises(ValueError, match=f"'{param}' parameter"):
        DeepInfomaxTransformer(**{**fast, param: value}).fit(small_images())


def test_flat_input_with_wrong_image_shape_is_refused(no_training, fast):
    with pytest.raises(ValueError, match="image_shape=\\(8, 9\\) holds 72 values"):
        DeepInfomaxTransformer(**fast, image_shape=(8, 9)).fit(np.zeros((5, 64)))


@pytest.mark.parametrize(
    "other",
    [np.zeros((3, 9, 8)), np.zeros((3, 8, 8, 3)), np.zeros((3, 64))],
)
def test_transform_refuses_other_sample_shapes(fitted_digits, other):
    dim, _, _ = fitted_digits
    with pytest.raises(ValueError, match=r"fitted on samples of shape \(8, 8\)"):
        dim.transform(other)


def test_transform_refuses_nan(fitted_digits):
    dim, X, _ = fitted_digits
    bad = X[:3].copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        dim.transform(bad)


def test_unfitted_transform_raises_not_fitted():
    with pytest.raises(NotFittedError):
        DeepInfomaxTransformer().transform(small_images())


def test_no_warnings_on_a_clean_fit(digit_images, fast):
    X, _ = digit_images
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DeepInfomaxTransformer(**fast).fit(X[:40]).transform(X[:10])


@pytest.mark.parametrize(
    "variant",
    [
        {"negatives": "all", "critic": "dot", "mi_estimator": "infonce"},
        {"negatives": "all", "critic": "concat", "mi_estimator": "jsd"},
        {"negatives": "shuffle", "critic": "dot", "mi_estimator": "dv"},
    ],
)
def test_objective_variants_fit_and_transform(digit_images, variant, fast):
    X, _ = digit_images
    dim = DeepInfomaxTransformer(**fast, **variant).fit(X[:64])
    assert np.isfinite(dim.loss_curve_).all()
    assert dim.transform(X[:5]).shape == (5, 8)


def test_feature_levels_of_the_paper(fitted_digits):
    dim, X, _ = fitted_digits  # width 8, 8x8 images: the last conv layer is 2x2
    codes = dim.transform(X[:7])
    widths = {}
    try:
        for level in ("code", "fc", "conv"):
            out = dim.set_params(feature_level=level).transform(X[:7])
            assert out.dtype == np.float32 and np.isfinite(out).all()
            assert len(dim.get_feature_names_out()) == out.shape[1]
            widths[level] = out.shape[1]
    finally:
        dim.set_params(feature_level="code")
    assert widths == {"code": 16, "fc": 16 * 8, "conv": 4 * 8 * 2 * 2}
    np.testing.assert_array_equal(dim.transform(X[:7]), codes)


def test_fc_level_is_what_the_code_is_read_from(fitted_digits):
    dim, X, _ = fitted_digits
    try:
        fc = torch.from_numpy(dim.set_params(feature_level="fc").transform(X[:5]))
    finally:
        dim.set_params(feature_level="code")
    with torch.no_grad():
        mu = dim.module_.encoder.to_code(fc).chunk(2, dim=1)[0]
    np.testing.assert_allclose(mu.numpy(), dim.transform(X[:5]), rtol=1e-5, atol=1e-5)


def test_tabular_feature_levels(fast):
    X = np.random.default_rng(0).normal(size=(30, 5))
    dim = DeepInfomaxTransformer(**fast).fit(X)  # tokens: width 4 per feature
    assert dim.set_params(feature_level="conv").transform(X).shape == (30, 5 * 4)
    assert dim.set_params(feature_level="fc").transform(X).shape == (30, 16)
    mlp = DeepInfomaxTransformer(**fast, tabular_encoder="mlp").fit(X)
    assert mlp.set_params(feature_level="conv").transform(X).shape == (30, 16)


def test_augmentation_trains_and_is_reproducible(fast):
    X = small_images(n=24, shape=(16, 16, 3))
    a = DeepInfomaxTransformer(**fast, augment=True, views=1).fit(X).transform(X)
    b = DeepInfomaxTransformer(**fast, augment=True, views=1).fit(X).transform(X)
    c = DeepInfomaxTransformer(**fast, views=1).fit(X).transform(X)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_augmentation_of_tabular_rows_is_refused(no_training, fast):
    with pytest.raises(ValueError, match="augment=True crops and flips images"):
        DeepInfomaxTransformer(**fast, augment=True).fit(np.zeros((5, 3)))


# -- options beyond the Keras reference ---------------------------------------------------


@pytest.mark.parametrize("prior", ["kl", "kl_mean", "adversarial"])
def test_each_prior_form_trains(digit_images, prior, fast):
    X, _ = digit_images
    dim = DeepInfomaxTransformer(**fast, gamma=0.5, prior=prior).fit(X[:64])
    prior_curve = dim.history_[:, "train_prior"]
    assert np.isfinite(prior_curve).all() and len(prior_curve) == 2
    assert dim.transform(X[:3]).shape == (3, 8)


@pytest.mark.parametrize("negatives", ["all", "shuffle"])
def test_local_local_term_trains_with_its_own_weight(digit_images, negatives, fast):
    X, _ = digit_images
    dim = DeepInfomaxTransformer(**fast, delta=0.5, negatives=negatives).fit(X[:64])
    assert np.isfinite(dim.history_[:, "train_local_local"]).all()
    assert hasattr(dim.module_, "local_local_critic")


def test_local_local_on_tabular_rows_is_refused(monkeypatch, fast):
    import dimlearn.training as training_module

    monkeypatch.setattr(training_module, "train_net", lambda *a, **k: 1 / 0)
    with pytest.raises(ValueError, match="delta > 0 .*tabular_encoder='tokens'"):
        DeepInfomaxTransformer(**fast, delta=1.0, tabular_encoder="mlp").fit(
            np.random.default_rng(0).random((20, 5))
        )


def test_local_local_mi_between_the_features_of_a_row(fast):
    X = np.random.default_rng(0).random((40, 5))
    dim = DeepInfomaxTransformer(**fast, delta=0.5).fit(X)
    assert np.isfinite(dim.history_[:, "train_local_local"]).all()
