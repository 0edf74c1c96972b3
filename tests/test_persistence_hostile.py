"""Model files, pickles and skops files prepared on purpose: a checksum anyone can compute
anew proves nothing against them, so what is read must be checked for what it is and what it
asks for before anything is built from it."""

import json
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import safetensors.torch
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from dimlearn import DeepInfomaxTransformer, ModelFileError, load, save
from dimlearn.cli import main
from dimlearn.infomax import build_module, keep_parts, kept_parts
from dimlearn.inputs import Layout
from dimlearn.model_file import HEADER_LIMIT, MAX_TENSORS
from dimlearn.persistence import _digest
from dimlearn.settings import Settings

FORGED_BYTES = 20 * 2**30
"""What the forged files below ask for: 20 GiB of weights."""

RSS_GROWTH_LIMIT_MB = 300


@pytest.fixture(scope="module")
def colour_model(fast):
    X = np.random.default_rng(0).integers(0, 256, (40, 16, 16, 3)).astype(np.uint8)
    return DeepInfomaxTransformer(**fast).fit(X), X


@pytest.fixture
def model_file(colour_model, tmp_path):
    return save(colour_model[0], tmp_path / "dim.safetensors")


@pytest.fixture
def trained_file(colour_model, tmp_path):
    """A model file with its training state: Adam's moments too."""
    path = tmp_path / "trained.safetensors"
    return save(colour_model[0], path, include_training_state=True)


def read_file(path):
    with safe_open(str(path), "pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}, handle.metadata()


def _tensors_of(data: bytes) -> dict:
    return safetensors.torch.load(data)


def forge(path, tensors, metadata, edit):
    """A copy of a model file with its description edited by ``edit`` and the checksum
    computed anew, as anyone can."""
    payload = json.loads(metadata["dimlearn"])
    edit(payload)
    return signed(path, tensors, metadata, json.dumps(payload))


def signed(path, tensors, metadata, description=None):
    """A model file of ``tensors`` and ``description`` (the metadata's by default), its
    checksum computed anew."""
    description = metadata["dimlearn"] if description is None else description
    digest = _digest(tensors, f"{metadata['format_version']}|{description}")
    save_file(tensors, str(path), metadata={**metadata, "dimlearn": description, "sha256": digest})
    return path


def weight_bytes(payload) -> int:
    """The bytes of float32 weights the networks a description asks for would take."""
    params = payload["params"]
    params["image_shape"] = tuple(params["image_shape"]) if params["image_shape"] else None
    config = Settings.from_params(DeepInfomaxTransformer(**params).get_params())
    layout = Layout.from_plain(payload["fitted"]["layout"])
    with torch.device("meta"):
        module = keep_parts(build_module(config, layout), kept_parts(config))
    return 4 * sum(t.numel() for t in module.state_dict().values())


def _wider(payload):
    payload["params"]["width"] = 3200


def _larger_images(payload):
    payload["params"]["width"] = 72
    side = 1024
    layout = payload["fitted"]["layout"]
    layout["sample_shape"] = layout["image_shape"] = [side, side, 3]
    payload["fitted"]["sample_shape_"] = [side, side, 3]


_PEAK_RSS = textwrap.dedent(
    """
    import json, resource, sys
    import dimlearn
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        dimlearn.load(sys.argv[1])
        outcome = "loaded"
    except dimlearn.ModelFileError as error:
        outcome = "refused: " + str(error)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"outcome": outcome, "growth_mb": (after - before) / 1024}))
    """
)


def peak_rss_of_load(path) -> dict:
    """``{"outcome", "growth_mb"}`` of ``dimlearn.load(path)`` in a fresh process: how much
    its peak resident memory grew."""
    run = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.splitlines()[-1])


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux only")
@pytest.mark.parametrize("edit", [_wider, _larger_images], ids=["width", "image size"])
def test_a_forged_file_asking_for_20_gib_is_refused_in_little_memory(model_file, tmp_path, edit):
    tensors, metadata = read_file(model_file)
    forged = forge(tmp_path / "forged.safetensors", tensors, metadata, edit)
    payload = json.loads(read_file(forged)[1]["dimlearn"])
    assert weight_bytes(payload) >= FORGED_BYTES  # what building it first would allocate
    result = peak_rss_of_load(forged)
    assert result["outcome"].startswith("refused: "), result
    assert "do not fit the networks" in result["outcome"]
    assert result["growth_mb"] < RSS_GROWTH_LIMIT_MB, result


def test_a_model_is_made_of_the_files_own_tensors(model_file):
    tensors, _ = read_file(model_file)
    loaded = load(model_file)
    for key, value in loaded.module_.state_dict().items():
        assert torch.equal(value, tensors[f"module.{key}"]), key
    assert not any(t.is_meta for t in loaded.module_.state_dict().values())


# -- what the checksum covers -------------------------------------------------------------


def test_relabelling_a_file_as_format_1_does_not_drop_the_description_from_the_check(
    model_file, tmp_path
):
    tensors, metadata = read_file(model_file)
    relabelled = tmp_path / "relabelled.safetensors"
    payload = json.loads(metadata["dimlearn"])
    payload["params"]["latent_dim"] = 3  # an edit the format-1 path would not see
    payload["weights_sha256"] = _digest(tensors)
    save_file(
        tensors,
        str(relabelled),
        metadata={**metadata, "format_version": "1", "dimlearn": json.dumps(payload)},
    )
    with pytest.raises(ModelFileError, match="format label was edited"):
        load(relabelled)
    # without the newer checksum, it still says it was written by 0.3
    stripped = {k: v for k, v in metadata.items() if k != "sha256"}
    save_file(
        tensors,
        str(relabelled),
        metadata={**stripped, "format_version": "1", "dimlearn": json.dumps(payload)},
    )
    with pytest.raises(ModelFileError, match="only dimlearn 0.2 wrote"):
        load(relabelled)


# -- the safetensors header and the description, every value of every type ---------------

_ODD_VALUES = ["7", 7.5, None, True, [], {}, -1, 2**70, [1, "x"], "\u00e9" * 3]


def _leaves(value, path=()):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, (*path, key))
    elif isinstance(value, list) and value:
        for i, item in enumerate(value[:4]):  # the first few items of long lists
            yield from _leaves(item, (*path, i))
    else:
        yield path


def _replaced(document, path, value):
    document = json.loads(json.dumps(document))
    target = document
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return document


def _with_header(data: bytes, header: dict) -> bytes:
    header_end = 8 + int.from_bytes(data[:8], "little")
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + data[header_end:]


def _typed_corruptions(data: bytes, rng):
    """Copies of a model file with one value of its safetensors header, or of its
    description (checksum made to match again), replaced by a value of another type."""
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    metadata = header["__metadata__"]
    for path in _leaves({k: v for k, v in header.items() if k != "__metadata__"}):
        for value in rng.choice(np.array(_ODD_VALUES, dtype=object), 3, replace=False):
            yield f"header {path} = {value!r}", _with_header(data, _replaced(header, path, value))
    description = json.loads(metadata["dimlearn"])
    for path in _leaves(description):
        for value in rng.choice(np.array(_ODD_VALUES, dtype=object), 2, replace=False):
            text = json.dumps(_replaced(description, path, value))
            tensors = _tensors_of(data)
            signed = {
                **metadata,
                "dimlearn": text,
                "sha256": _digest(tensors, f"{metadata['format_version']}|{text}"),
            }
            yield (
                f"description {path} = {value!r}",
                _with_header(data, {**header, "__metadata__": signed}),
            )


def test_a_value_of_the_wrong_type_anywhere_is_refused_or_harmless(
    colour_model, model_file, tmp_path
):
    dim, X = colour_model
    expected = dim.transform(X[:8])
    damaged = tmp_path / "typed.safetensors"
    outcomes = {"refused": 0, "same codes": 0, "forged, works": 0}
    for what, corrupt in _typed_corruptions(model_file.read_bytes(), np.random.default_rng(0)):
        damaged.write_bytes(corrupt)
        try:
            loaded = load(damaged)
        except ModelFileError:
            outcomes["refused"] += 1
            continue
        except Exception as error:  # noqa: BLE001 (the failure this test is for)
            raise AssertionError(f"{what}: {type(error).__name__}: {error}") from error
        codes = loaded.transform(X[:8])
        if what.startswith("header"):  # the checksum covers the tensors: nothing changed
            assert np.array_equal(codes, expected), what
            outcomes["same codes"] += 1
        else:  # a forger's valid value: a model that works, whatever its codes
            assert codes.shape == expected.shape and np.isfinite(codes).all(), what
            outcomes["forged, works"] += 1
    assert outcomes["refused"] > 300, outcomes


def test_non_integer_data_offsets_are_a_model_file_error(model_file, tmp_path):
    data = model_file.read_bytes()
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    name = next(key for key in header if key != "__metadata__")
    for offsets in (["0", "4"], [0.0, 4.0], None, [0], [True, 4]):
        header[name]["data_offsets"] = offsets
        (tmp_path / "m.safetensors").write_bytes(_with_header(data, header))
        with pytest.raises(ModelFileError, match="header is not valid JSON of the expected"):
            load(tmp_path / "m.safetensors")


# -- the container: what a file promises is bounded before it is read or parsed ----------


def _header_of(data: bytes) -> dict:
    return json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])


def _with_empty_entries(data: bytes, count: int, key: str = "data_offsets") -> bytes:
    """A model file whose header lists ``count`` more tensors, each of no bytes."""
    entries = "".join(f',"x{i}":{{"dtype":"F32","shape":[0],"{key}":[0,0]}}' for i in range(count))
    text = (json.dumps(_header_of(data))[:-1] + entries + "}").encode()
    header_end = 8 + int.from_bytes(data[:8], "little")
    return len(text).to_bytes(8, "little") + text + data[header_end:]


@pytest.mark.parametrize("key", ["data_offsets", "data\\u005foffsets"], ids=["plain", "escaped"])
def test_a_header_listing_more_tensors_than_a_model_has_is_refused(model_file, tmp_path, key):
    """Counted before parsing (``"data_offsets"`` keys) and while parsing (objects), so
    that a key spelt with a JSON escape does not get past."""
    path = tmp_path / "many.safetensors"
    path.write_bytes(_with_empty_entries(model_file.read_bytes(), 2 * MAX_TENSORS, key))
    with pytest.raises(ModelFileError, match=f"lists more than {MAX_TENSORS} tensors"):
        load(path)


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux only")
def test_a_header_of_300_000_tensors_is_refused_in_the_memory_of_its_bytes(model_file, tmp_path):
    """dimlearn 0.3.0 parsed them all (twice) first: 580 MB and 8 s for these 17 MB."""
    path = tmp_path / "many.safetensors"
    path.write_bytes(_with_empty_entries(model_file.read_bytes(), 300_000))
    header_mb = path.stat().st_size / 2**20
    result = peak_rss_of_load(path)
    assert f"lists more than {MAX_TENSORS} tensors" in result["outcome"], result
    assert result["growth_mb"] < header_mb + 30, result


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux only")
def test_a_large_file_that_is_no_model_is_refused_before_it_is_read(tmp_path):
    """512 MiB of zeros (a sparse file: no disk): its first 8 bytes are checked first.
    dimlearn 0.3.0 read it whole first (512 MB)."""
    path = tmp_path / "zeros.safetensors"
    with path.open("wb") as handle:
        handle.truncate(512 * 2**20)
    result = peak_rss_of_load(path)
    assert "is not a dimlearn model file" in result["outcome"], result
    assert result["growth_mb"] < 100, result


def test_a_header_longer_than_the_limit_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "long_header.safetensors"
    with path.open("wb") as handle:
        handle.write((HEADER_LIMIT + 1).to_bytes(8, "little") + b"{")
        handle.truncate(8 + HEADER_LIMIT + 1)  # sparse: the header it promises is there
    with pytest.raises(ModelFileError, match=f"more than the format's limit of {HEADER_LIMIT}"):
        load(path)


def test_a_key_given_twice_in_the_header_is_refused(model_file, tmp_path):
    """Readers may take either of the two: the file means nothing certain."""
    data = model_file.read_bytes()
    text = json.dumps(_header_of(data))
    text = text.replace('"dtype": "F32"', '"dtype": "F64", "dtype": "F32"', 1).encode()
    header_end = 8 + int.from_bytes(data[:8], "little")
    path = tmp_path / "twice.safetensors"
    path.write_bytes(len(text).to_bytes(8, "little") + text + data[header_end:])
    with pytest.raises(ModelFileError, match="the same key twice"):
        load(path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
def test_a_pipe_is_refused_without_waiting_for_a_writer(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(ModelFileError, match="not a regular file"):
        load(tmp_path / "pipe")


# -- hostile files: always a ModelFileError, one line on the command line -----------------


def _empty_entries(files, path):
    path.write_bytes(_with_empty_entries(files["model"].read_bytes(), 2 * MAX_TENSORS))
    return path


def _zeros(files, path):
    with path.open("wb") as handle:
        handle.truncate(512 * 2**20)
    return path


def _width(width):
    def forged(files, path):
        return forge(path, *read_file(files["model"]), lambda p: p["params"].update(width=width))

    return forged


def _description(text):
    def forged(files, path):
        return signed(path, *read_file(files["model"]), text)

    return forged


def _long_integer(files, path):
    tensors, metadata = read_file(files["model"])
    payload = json.loads(metadata["dimlearn"])
    payload["params"]["random_state"] = "LONG"
    text = json.dumps(payload).replace('"LONG"', "1" + "0" * 4999)
    return signed(path, tensors, metadata, text)


def _extra_tensor(dtype, values):
    """A model file with one more tensor: ``values`` values of ``dtype``, in one byte."""

    def forged(files, path):
        data = files["model"].read_bytes()
        header = _header_of(data)
        end = len(data) - 8 - int.from_bytes(data[:8], "little")
        entry = {"dtype": dtype, "shape": [values], "data_offsets": [end, end + 1]}
        path.write_bytes(_with_header(data, {**header, "module.encoder.extra": entry}) + b"\0")
        return path

    return forged


ADAM_WEIGHT = "encoder.to_local.0.weight"


def _adam_state(edit):
    """A model file with its training state, whose Adam tensors ``edit`` changed (the
    checksum computed anew)."""

    def forged(files, path):
        tensors, metadata = read_file(files["trained"])
        edit(tensors, f"optimizer.{ADAM_WEIGHT}.")
        return signed(path, tensors, metadata)

    return forged


def _set(key, make):
    """Adam's ``key`` tensor of one weight replaced by ``make(tensors, prefix)``."""
    return _adam_state(lambda t, prefix: t.update({prefix + key: make(t, prefix)}))


HOSTILE = {
    "many tensors": (_empty_entries, f"more than {MAX_TENSORS} tensors"),
    "512 MiB of zeros": (_zeros, "not a dimlearn model file"),
    "width 2**31": (_width(2**31), "does not make sense.*overflow"),
    "width 2**40": (_width(2**40), "does not make sense.*overflow"),
    "width 2**62": (_width(2**62), "does not make sense.*overflow"),
    "nested lists": (_description("[" * 100_000 + "]" * 100_000), "nested too deeply"),
    "nested in a field": (
        _description('{"estimator": "DeepInfomaxTransformer", "params": ' + "[" * 100_000),
        "nested too deeply|not valid JSON",
    ),
    "5,000-digit integer": (_long_integer, "an integer of 5000 digits"),
    "F4 tensor": (_extra_tensor("F4", 2), "of dtype 'F4', which no dimlearn model holds"),
    "F8_E8M0 tensor": (_extra_tensor("F8_E8M0", 1), "of dtype 'F8_E8M0'"),
    "exp_avg float64": (
        _set("exp_avg", lambda t, p: t[p + "exp_avg"].double()),
        rf"optimizer\.{ADAM_WEIGHT}\.exp_avg is \(4, 3, 4, 4\) float64; Adam keeps it as "
        r"\(4, 3, 4, 4\) float32",
    ),
    "exp_avg_sq float16": (
        _set("exp_avg_sq", lambda t, p: t[p + "exp_avg_sq"].half()),
        rf"optimizer\.{ADAM_WEIGHT}\.exp_avg_sq is .* float16",
    ),
    "step int64": (
        _set("step", lambda t, p: torch.tensor(5)),
        rf"optimizer\.{ADAM_WEIGHT}\.step is \(\) int64; Adam keeps it as \(\) float32",
    ),
    "step of shape (1,)": (
        _set("step", lambda t, p: torch.ones(1)),
        rf"optimizer\.{ADAM_WEIGHT}\.step is \(1,\) float32",
    ),
    "unknown Adam key": (
        _set("max_exp_avg_sq", lambda t, p: t[p + "exp_avg_sq"].clone()),
        rf"optimizer\.{ADAM_WEIGHT}\.max_exp_avg_sq is not part of Adam's state",
    ),
    "missing Adam key": (
        _adam_state(lambda tensors, prefix: tensors.pop(prefix + "exp_avg_sq")),
        rf"optimizer\.{ADAM_WEIGHT}\.exp_avg_sq is missing",
    ),
}
"""Files prepared on purpose, and what ``load`` says of each: before these checks, some
raised ``RuntimeError`` (a width that overflows PyTorch's sizes), ``RecursionError``,
``KeyError: 'F4'`` or Python's own integer-length ``ValueError``, some read 512 MiB
first, and Adam's state of the wrong dtype or keys loaded, to fail at the next fit."""


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_file_is_a_model_file_error_and_one_line_on_the_command_line(
    case, model_file, trained_file, tmp_path, capsys
):
    make, match = HOSTILE[case]
    path = make({"model": model_file, "trained": trained_file}, tmp_path / "hostile.safetensors")
    with pytest.raises(ModelFileError, match=match):
        load(path)
    images = tmp_path / "X.npy"
    np.save(images, np.zeros((2, 16, 16, 3), np.uint8))
    capsys.readouterr()
    assert main(["transform", str(path), str(images), "--out", str(tmp_path / "c.npy")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("dimlearn transform: error: "), err


def test_a_model_with_its_training_state_still_loads_and_continues(colour_model, trained_file):
    dim, X = colour_model
    loaded = load(trained_file)
    assert set(loaded._optimizer_state[ADAM_WEIGHT]) == {"exp_avg", "exp_avg_sq", "step"}
    loaded.set_params(warm_start=True, max_epochs=1).fit(X)
    assert loaded.n_iter_ == dim.n_iter_ + 1


# -- how a file is written ----------------------------------------------------------------


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_a_saved_file_has_the_usual_permissions(colour_model, tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        path = save(colour_model[0], tmp_path / "dim.safetensors")
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == mode


def test_a_saved_file_is_on_the_disk_before_it_replaces_the_old_one(
    colour_model, tmp_path, monkeypatch
):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append("fsync") or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: events.append("replace") or real_replace(a, b))
    save(colour_model[0], tmp_path / "dim.safetensors")
    assert events[:2] == ["fsync", "replace"], events
    assert load(tmp_path / "dim.safetensors").n_iter_ == colour_model[0].n_iter_


# -- pickles and skops files ----------------------------------------------------------------


def _unpickled(state):
    estimator = DeepInfomaxTransformer.__new__(DeepInfomaxTransformer)
    estimator.__setstate__(state)
    return estimator


@pytest.mark.parametrize("fitted", [True, False], ids=["fitted", "unfitted"])
def test_a_pickled_state_with_an_unknown_key_is_refused(colour_model, fitted):
    dim = colour_model[0] if fitted else DeepInfomaxTransformer()
    for key in ("transform", "module_", "__class__", "_device_copy"):
        state = {**dim.__getstate__(), key: "replaced"}
        with pytest.raises(ValueError, match=f"unknown parameters \\[.*'{key}'"):
            _unpickled(state)


def test_a_pickled_state_with_an_invalid_or_missing_parameter_is_refused(colour_model):
    state = colour_model[0].__getstate__()
    for name, value in (("width", -3), ("alpha", "much"), ("views", 3)):
        with pytest.raises(ValueError, match=f"'{name}' parameter"):
            _unpickled({**state, name: value})
    with pytest.raises(ValueError, match=r"no value for the parameters \['width'\]"):
        _unpickled({k: v for k, v in state.items() if k != "width"})


def test_a_pickled_fitted_state_that_makes_no_sense_is_a_value_error(colour_model):
    state = colour_model[0].__getstate__()
    fitted = dict(state["_fitted"], fitted=dict(state["_fitted"]["fitted"], precision_="float8"))
    with pytest.raises(ValueError, match="edited or damaged.*precision_"):
        _unpickled({**state, "_fitted": fitted})


def test_sklearn_output_config_survives_a_pickle(colour_model):
    dim = pickle.loads(pickle.dumps(colour_model[0]))
    pd = pytest.importorskip("pandas")
    dim.set_output(transform="pandas")
    again = pickle.loads(pickle.dumps(dim))
    assert isinstance(again.transform(colour_model[1][:2]), pd.DataFrame)


def test_a_skops_file_that_replaces_a_method_is_refused(colour_model, tmp_path, monkeypatch):
    sio = pytest.importorskip("skops.io")
    dim = colour_model[0]
    plain_state = DeepInfomaxTransformer.__getstate__
    monkeypatch.setattr(
        DeepInfomaxTransformer, "__getstate__", lambda self: {**plain_state(self), "transform": 0}
    )
    sio.dump(dim, tmp_path / "dim.skops")
    monkeypatch.undo()
    trusted = ["dimlearn.estimator.DeepInfomaxTransformer"]
    with pytest.raises(ValueError, match=r"unknown parameters \['transform'\]"):
        sio.load(tmp_path / "dim.skops", trusted=trusted)


def test_a_device_that_is_no_device_is_refused_on_load(model_file, tmp_path):
    """A file naming no device is refused on load by the parameter's constraint (the one
    check of a device's name), not at the first ``transform``; one naming a GPU loads."""
    data = model_file.read_bytes()
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    metadata = header["__metadata__"]
    tensors = _tensors_of(data)
    for device, refused in (("ééé", True), ("tpu", True), ("cuda:1", False), ("cpu", False)):
        description = json.loads(metadata["dimlearn"])
        description["params"]["device"] = device
        text = json.dumps(description)
        digest = _digest(tensors, f"{metadata['format_version']}|{text}")
        signed = {**metadata, "dimlearn": text, "sha256": digest}
        (tmp_path / "m.safetensors").write_bytes(
            _with_header(data, {**header, "__metadata__": signed})
        )
        if refused:
            with pytest.raises(ModelFileError, match="'auto', 'cpu', 'cuda', 'cuda:N'"):
                load(tmp_path / "m.safetensors")
        else:
            assert load(tmp_path / "m.safetensors").device == device
