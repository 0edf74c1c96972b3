"""Model files: dimlearn.save / dimlearn.load (safetensors + JSON, never pickle), and pickles
that keep only the weights something uses."""

import json
import pickle
import warnings
from pathlib import Path

import joblib
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from sklearn.exceptions import NotFittedError

from dimlearn import DeepInfomaxTransformer, ModelFileError, load, save
from dimlearn.persistence import FORMAT_VERSION, _digest


@pytest.fixture(scope="module")
def fitted(digit_images, fast):
    X, _ = digit_images
    return DeepInfomaxTransformer(**fast).fit(X[:200]), X


@pytest.fixture
def model_file(fitted, tmp_path):
    return save(fitted[0], tmp_path / "dim.safetensors")


def read_file(path):
    with safe_open(str(path), "pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        metadata = handle.metadata()
    return tensors, metadata


def rewrite(path, tensors, metadata, edit=None, sign=True):
    """Write a copy of a model file with its JSON description changed by ``edit``; with
    ``sign``, the checksum is made to match again (a forger's file, which must still be
    refused when it makes no sense)."""
    metadata = dict(metadata)
    if edit is not None:
        payload = json.loads(metadata["dimlearn"])
        edit(payload)
        metadata["dimlearn"] = json.dumps(payload)
    if sign:
        version = metadata["format_version"]
        metadata["sha256"] = _digest(tensors, f"{version}|{metadata['dimlearn']}")
    save_file(tensors, str(path), metadata=metadata)
    return path


def assert_same_fit(a, b):
    for name in ("input_mean_", "input_scale_", "n_iter_", "loss_curve_", "sample_shape_"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.get_params() == b.get_params()
    assert list(a.history_[:, "train_loss"]) == list(b.history_[:, "train_loss"])


# -- round trips --------------------------------------------------------------------------


def test_save_and_load_give_identical_codes_scores_and_fitted_attributes(fitted, model_file):
    dim, X = fitted
    loaded = load(model_file)
    np.testing.assert_array_equal(loaded.transform(X), dim.transform(X))
    assert loaded.score(X[300:500]) == dim.score(X[300:500])
    assert_same_fit(loaded, dim)


def test_default_file_holds_what_transform_and_score_need_only(fitted, model_file):
    tensors, metadata = read_file(model_file)
    parts = {key.split(".")[1] for key in tensors}
    assert parts == {"encoder", "local_critic"}
    payload = json.loads(metadata["dimlearn"])
    assert payload["versions"]["torch"] == torch.__version__
    assert payload["fitted"]["n_iter_"] == 2 and not payload["training_state"]
    assert int(metadata["format_version"]) == FORMAT_VERSION


def test_default_model_on_32x32_colour_images_is_at_most_25_mb(tmp_path):
    X = np.random.default_rng(0).integers(0, 256, size=(8, 32, 32, 3), dtype=np.uint8)
    dim = DeepInfomaxTransformer(max_epochs=1, random_state=0).fit(X)  # width 64, the default
    assert dim.module_.global_critic is None  # alpha=0 by default: nothing trains it
    size = save(dim, tmp_path / "dim.safetensors").stat().st_size
    assert size <= 25e6, size
    encoder_bytes = sum(t.numel() * 4 for t in dim.module_.encoder.state_dict().values())
    assert size >= encoder_bytes  # the encoder is all there
    joblib.dump(dim, tmp_path / "dim.joblib")
    full = save(dim, tmp_path / "full.safetensors", include_training_state=True)
    assert size < full.stat().st_size <= (tmp_path / "dim.joblib").stat().st_size * 1.05


def test_training_state_continues_bit_identically_to_the_in_memory_estimator(
    digit_images, tmp_path, fast
):
    X, _ = digit_images
    params = dict(fast, alpha=0.5, prior="adversarial", lr_schedule="cosine")
    dim = DeepInfomaxTransformer(**params).fit(X[:200])
    path = save(dim, tmp_path / "dim.safetensors", include_training_state=True)
    loaded = load(path).set_params(warm_start=True)
    dim.set_params(warm_start=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is missing: no "continuing" warning
        loaded.fit(X[200:400])
    dim.fit(X[200:400])
    expected = dim.module_.state_dict()
    got = loaded.module_.state_dict()
    assert got.keys() == expected.keys()
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    assert_same_fit(loaded, dim)
    loaded.partial_fit(X[400:500])
    dim.partial_fit(X[400:500])
    np.testing.assert_array_equal(loaded.transform(X[:50]), dim.transform(X[:50]))


def test_continuing_a_file_without_training_state_says_adam_starts_afresh(
    fitted, model_file, digit_images
):
    X, _ = digit_images
    loaded = load(model_file).set_params(warm_start=True)
    with pytest.warns(UserWarning, match="no optimiser state.*Adam starts afresh"):
        loaded.fit(X[200:300])
    assert loaded.n_iter_ == 4


def test_saving_the_training_state_of_a_model_that_has_none_is_refused(
    fitted, model_file, tmp_path, digit_images
):
    loaded = load(model_file)  # saved without training state
    with pytest.raises(ValueError, match="holds no training state.* Save it without"):
        save(loaded, tmp_path / "full.safetensors", include_training_state=True)
    assert not (tmp_path / "full.safetensors").exists()
    X, _ = digit_images
    with pytest.warns(UserWarning, match="Adam starts afresh"):
        loaded.set_params(warm_start=True).fit(X[200:300])
    full = load(save(loaded, tmp_path / "full.safetensors", include_training_state=True))
    np.testing.assert_array_equal(full.transform(X[:20]), loaded.transform(X[:20]))


def test_adam_starting_afresh_is_said_once(model_file, digit_images):
    X, _ = digit_images
    loaded = load(model_file).set_params(warm_start=True)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        loaded.fit(X[200:300])
        loaded.fit(X[300:400])
        loaded.partial_fit(X[400:500])
    assert [str(w.message).count("Adam starts afresh") for w in record] == [1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="simulates a machine without CUDA")
def test_a_model_fitted_for_a_gpu_loads_and_transforms_on_a_cpu_machine(fitted, tmp_path):
    # the fitted networks always live on the CPU and are written from there; the saved
    # device parameter is what a GPU server had
    dim, X = fitted
    path = save(dim.set_params(device="cuda"), tmp_path / "gpu.safetensors")
    dim.set_params(device="auto")
    loaded = load(path)
    assert loaded.device == "cuda"
    with pytest.warns(UserWarning, match="CUDA is not available here; running on the CPU"):
        codes = loaded.transform(X[:50])
    np.testing.assert_array_equal(codes, dim.transform(X[:50]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(load(path, device="cpu").transform(X[:50]), codes)


def test_save_replaces_a_file_whole_and_leaves_no_temporary_files(fitted, tmp_path):
    dim, _ = fitted
    path = tmp_path / "dim.safetensors"
    path.write_bytes(b"an older model")
    save(dim, path)
    assert [p.name for p in tmp_path.iterdir()] == ["dim.safetensors"]
    load(path)


def test_saving_an_unfitted_estimator_is_refused(tmp_path):
    with pytest.raises(NotFittedError):
        save(DeepInfomaxTransformer(), tmp_path / "dim.safetensors")


def test_pandas_feature_names_survive_the_round_trip(digits, tmp_path, fast):
    pd = pytest.importorskip("pandas")
    X, _ = digits
    frame = pd.DataFrame(X[:100], columns=[f"px{i}" for i in range(64)])
    dim = DeepInfomaxTransformer(**fast).fit(frame)
    loaded = load(save(dim, tmp_path / "tab.safetensors"))
    np.testing.assert_array_equal(loaded.feature_names_in_, dim.feature_names_in_)
    np.testing.assert_array_equal(loaded.transform(frame), dim.transform(frame))


# -- files that are not what they should be ------------------------------------------------


@pytest.mark.parametrize("keep", [0.5, 0.99, 100, 7])
def test_a_truncated_file_is_refused_by_name(model_file, keep):
    data = model_file.read_bytes()
    cut = int(len(data) * keep) if keep < 1 else keep
    model_file.write_bytes(data[:cut])
    with pytest.raises(ModelFileError, match="truncated|not a dimlearn model"):
        load(model_file)


def test_a_file_of_a_newer_format_asks_for_a_newer_dimlearn(model_file, tmp_path):
    tensors, metadata = read_file(model_file)
    newer = rewrite(tmp_path / "newer.safetensors", tensors, {**metadata, "format_version": "99"})
    with pytest.raises(ModelFileError, match="newer dimlearn .*format 99.*Upgrade dimlearn"):
        load(newer)


def edit_latent_dim(payload):
    payload["params"]["latent_dim"] = 16


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda p: p["params"].update(latent_dim="banana"), "does not make sense"),
        (lambda p: p["params"].update(colour="blue"), "unknown parameters"),
        (lambda p: p["fitted"].pop("input_mean_"), "missing field 'input_mean_'"),
        (lambda p: p["fitted"].update(input_scale_=[0.0]), "input_scale_"),
        (lambda p: p["fitted"].update(sample_shape_=[8, -8]), "positive integers"),
        (lambda p: p["fitted"]["layout"].update(kind="video"), "neither 'image' nor"),
        (lambda p: p["fitted"].update(n_iter_="two"), "non-negative integer"),
        (lambda p: p.update(history=7), "does not make sense"),
        (edit_latent_dim, r"weights do not fit the networks .* by the parameters"),
    ],
)
def test_a_description_edited_into_nonsense_is_refused(model_file, tmp_path, edit, match):
    tensors, metadata = read_file(model_file)
    edited = rewrite(tmp_path / "edited.safetensors", tensors, metadata, edit)
    with pytest.raises(ModelFileError, match=match):
        load(edited)


def test_invalid_json_is_refused(model_file, tmp_path):
    tensors, metadata = read_file(model_file)
    broken = {**metadata, "dimlearn": metadata["dimlearn"][:-10]}
    with pytest.raises(ModelFileError, match="not valid JSON"):
        load(rewrite(tmp_path / "broken.safetensors", tensors, broken))


def test_weights_changed_after_saving_fail_the_checksum(model_file, tmp_path):
    tensors, metadata = read_file(model_file)
    key = next(k for k in tensors if k.endswith("weight"))
    tensors[key] = tensors[key] + 1.0
    with pytest.raises(ModelFileError, match="do not match the checksum"):
        load(rewrite(tmp_path / "altered.safetensors", tensors, metadata, sign=False))


@pytest.mark.parametrize(
    "edit",
    [
        lambda p: p["fitted"]["input_mean_"].__setitem__(0, p["fitted"]["input_mean_"][0] + 1),
        lambda p: p["fitted"]["input_scale_"].__setitem__(0, 2.0),
        lambda p: p["params"].update(feature_level="fc"),
        lambda p: p["fitted"].update(n_iter_=3),
    ],
)
def test_a_description_changed_after_saving_fails_the_checksum(model_file, tmp_path, edit):
    tensors, metadata = read_file(model_file)
    edited = rewrite(tmp_path / "edited.safetensors", tensors, metadata, edit, sign=False)
    with pytest.raises(ModelFileError, match="description or the weights do not match"):
        load(edited)


def _corruptions(data: bytes, rng):
    """Damaged copies of a model file: every digit of every number in its header changed
    once, random bit flips and byte changes in the data part, truncations, appended bytes."""
    header_end = 8 + int.from_bytes(data[:8], "little")
    for i in range(8, header_end):
        if chr(data[i]).isdigit():
            digit = int(chr(data[i]))
            other = str((digit + 1 + int(rng.integers(9))) % 10).encode()
            yield f"digit {i}", data[:i] + other + data[i + 1 :]
    for _ in range(200):
        i = int(rng.integers(header_end, len(data)))
        flipped = data[i] ^ (1 << int(rng.integers(8)))
        yield f"bit {i}", data[:i] + bytes([flipped]) + data[i + 1 :]
    for _ in range(100):
        i = int(rng.integers(0, len(data)))
        yield f"byte {i}", data[:i] + bytes([int(rng.integers(256))]) + data[i + 1 :]
    for cut in rng.integers(0, len(data), 50):
        yield f"cut {cut}", data[: int(cut)]
    for extra in (b"\0", b"junk", bytes(rng.integers(0, 256, 1000, dtype=np.uint8))):
        yield f"appended {len(extra)}", data + extra


def test_a_damaged_file_is_refused_or_gives_the_same_codes(fitted, model_file, tmp_path):
    dim, X = fitted
    expected = dim.transform(X[:50])
    data = model_file.read_bytes()
    damaged = tmp_path / "damaged.safetensors"
    outcomes = {"refused": 0, "same codes": 0}
    for what, corrupt in _corruptions(data, np.random.default_rng(0)):
        damaged.write_bytes(corrupt)
        try:
            loaded = load(damaged)
        except ModelFileError:
            outcomes["refused"] += 1
            continue
        assert np.array_equal(loaded.transform(X[:50]), expected), what
        outcomes["same codes"] += 1
    assert outcomes["refused"] > 1000, outcomes  # nearly every header digit matters


# -- files that are no dimlearn models ------------------------------------------------------
#
# (Files and pickles that dimlearn 0.2 itself wrote are read in tests/test_compat_0_2.py,
# from fixtures that tests/fixtures/make_0_2_files.py wrote with 0.2's code.)


def test_other_files_are_not_dimlearn_models(tmp_path):
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(3)}, str(plain))
    text = tmp_path / "notes.txt"
    text.write_text("hello, these are not weights")
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    for path in (plain, text, empty):
        with pytest.raises(ModelFileError, match="not a dimlearn model"):
            load(path)


def test_a_joblib_file_is_refused_and_named(fitted, tmp_path):
    path = tmp_path / "dim.joblib"
    joblib.dump(fitted[0], path)
    with pytest.raises(ModelFileError, match="pickle file .*never unpickles.*joblib.load"):
        load(path)


class _CreatesAFile:
    """Unpickling this creates ``target``: what a malicious model file would do."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (Path.touch, (Path(self.target),))


def test_a_pickle_payload_in_place_of_the_weights_is_never_unpickled(model_file, tmp_path):
    target = tmp_path / "pwned"
    payload = pickle.dumps(_CreatesAFile(target))
    pickle.loads(payload)  # the payload works: unpickling it creates the file
    assert target.exists()
    target.unlink()

    # 1. the payload as the whole file
    whole = tmp_path / "whole.safetensors"
    whole.write_bytes(payload)
    # 2. a real model file whose first weight is replaced by the payload's bytes
    tensors, metadata = read_file(model_file)
    key = sorted(tensors)[0]
    tensors[key] = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
    inside = rewrite(tmp_path / "inside.safetensors", tensors, metadata, sign=False)
    # 3. the same, with the checksum made to match, so that loading gets as far as it can
    forged = rewrite(tmp_path / "forged.safetensors", tensors, metadata)  # checksum matches

    for path in (whole, inside, forged):
        with pytest.raises(ModelFileError):
            load(path)
        assert not target.exists(), path.name


# -- pickles keep what is used ------------------------------------------------------------


def test_pickles_do_not_keep_critics_of_terms_with_weight_zero(digit_images, fast):
    X, _ = digit_images
    local_only = DeepInfomaxTransformer(**fast).fit(X[:100])  # alpha=0, prior kl_mean
    assert local_only.module_.global_critic is None
    assert all(not name.startswith("global_critic") for name in local_only._optimizer_state)
    with_global = DeepInfomaxTransformer(**fast, alpha=0.5).fit(X[:100])
    assert with_global.module_.global_critic is not None
    assert len(pickle.dumps(local_only)) < len(pickle.dumps(with_global))


def test_turning_on_a_term_whose_critic_was_not_kept_trains_a_new_one(digit_images, fast):
    X, _ = digit_images
    dim = DeepInfomaxTransformer(**fast, warm_start=True).fit(X[:100])
    encoder_before = {k: v.clone() for k, v in dim.module_.encoder.state_dict().items()}
    dim.set_params(alpha=0.5)
    with pytest.warns(UserWarning, match="no trained global_critic .* a new one"):
        dim.fit(X[100:200])
    assert dim.module_.global_critic is not None
    assert np.isfinite(dim.history_[-1, "train_global"])
    assert dim.n_iter_ == 4
    moved = [
        not torch.equal(v, encoder_before[k]) for k, v in dim.module_.encoder.state_dict().items()
    ]
    assert any(moved)  # the fitted encoder went on training, it was not replaced
