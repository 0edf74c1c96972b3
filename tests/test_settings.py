"""Every parameter is one setting (dimlearn.settings), and everything about it comes from there:
the constraint, the command line's flag or its Python-only mark, the documentation's row, the
Parameters of the docstring, and the way through model files, pickles and skops files."""

import inspect
import pickle

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from sklearn.utils._param_validation import InvalidParameterError
from skorch.callbacks import Callback

import dimlearn
from dimlearn import DeepInfomaxTransformer
from dimlearn.cli import build_parser
from dimlearn.networks import ConvEncoder
from dimlearn.settings import SETTINGS, Settings, defaults
from dimlearn.views import random_crop_flip


class Noted(Callback):
    """A callback that does nothing, equal to any other (copies compare equal)."""

    def __eq__(self, other):
        return type(other) is type(self)

    __hash__ = Callback.__hash__


# A value other than the default for every setting; the test below fails for a setting
# missing here, so a new parameter is walked too.
OTHER_VALUES = {
    "alpha": 0.5,
    "beta": 0.75,
    "gamma": 0.0,
    "delta": 0.25,
    "reconstruction": 0.5,
    "prior": "adversarial",
    "negatives": "shuffle",
    "critic": "concat",
    "temperature": 0.5,
    "mi_estimator": "jsd",
    "latent_dim": 3,
    "width": 3,
    "critic_width": 5,
    "local_scales": 2,
    "tabular_encoder": "mlp",
    "encoder": ConvEncoder,  # a class given, not "auto": what a user's own encoder is
    "augment": True,
    "views": 1,
    "flip": False,
    "augmentation": random_crop_flip,
    "max_epochs": 2,
    "max_time": 600.0,
    "batch_size": 7,
    "optimizer": "sgd",
    "lr": 0.002,
    "lr_schedule": "cosine",
    "early_stopping": True,
    "validation_fraction": 0.25,
    "n_iter_no_change": 3,
    "tol": 0.01,
    "warm_start": True,
    "device": "cpu",
    "precision": "float32",
    "data_on_device": False,
    "compile": True,
    "distributed": False,
    "random_state": 5,
    "verbose": 2,
    "callbacks": [("noted", Noted())],
    "feature_level": "fc",
    "image_shape": (8, 8),
    "image_layout": "channels_last",
}

# The settings that decide the networks' shapes: a model is fitted with them (the others are
# set after the fit, which is what a file then stores).
NETWORK_SETTINGS = {
    "delta",
    "reconstruction",
    "prior",
    "critic",
    "latent_dim",
    "width",
    "critic_width",
    "local_scales",
    "tabular_encoder",
    "encoder",
}
# the settings that hold Python code of the user's: model files refuse them (pickles and
# skops files keep them)
CODE_SETTINGS = {"encoder": "cannot rebuild", "augmentation": "None", "callbacks": "None"}
# what a value above needs beside it to train
COMPANIONS = {"temperature": {"critic": "dot"}, "critic": {"temperature": None}}


def test_every_setting_has_an_other_value_here():
    assert set(OTHER_VALUES) == set(SETTINGS)
    for name, value in OTHER_VALUES.items():
        assert value != SETTINGS[name].default, name


def test_the_estimator_is_made_from_the_settings():
    assert DeepInfomaxTransformer._parameter_constraints == {
        name: list(s.constraints) for name, s in SETTINGS.items()
    }
    assert DeepInfomaxTransformer().get_params() == defaults()
    signature = inspect.signature(DeepInfomaxTransformer)
    assert list(signature.parameters) == list(SETTINGS)
    assert all(p.kind is p.KEYWORD_ONLY for p in signature.parameters.values())
    # keywords routed to the optimiser are taken beside them, and only those
    assert DeepInfomaxTransformer(optimizer__weight_decay=0.1).optimizer__weight_decay == 0.1
    with pytest.raises(TypeError, match="unexpected keyword argument 'optimiser__eps'"):
        DeepInfomaxTransformer(optimiser__eps=1e-6)
    for name, setting in SETTINGS.items():
        assert setting.numpydoc() in inspect.getdoc(DeepInfomaxTransformer), name
    with pytest.raises(TypeError, match="unexpected keyword argument 'alhpa'"):
        DeepInfomaxTransformer(alhpa=1.0)


@pytest.mark.parametrize("name", list(SETTINGS))
def test_each_setting_has_a_constraint_a_flag_or_a_python_only_mark_and_a_docs_row(name):
    setting = SETTINGS[name]
    with pytest.raises(InvalidParameterError, match=f"'{name}' parameter"):
        DeepInfomaxTransformer(**{name: object()})._validate_params()
    DeepInfomaxTransformer(**{name: OTHER_VALUES[name]})._validate_params()
    fit = build_parser()._subparsers._group_actions[0].choices["fit"]
    flags = {}
    for action in fit._actions:
        flags.setdefault(action.dest, []).extend(action.option_strings)
    if setting.python_only:
        assert name not in flags
        assert f"{name} ({setting.cli.why})" in fit.epilog
    else:
        assert setting.flag in flags[name]
    from tests.test_docs import DOCS

    text = (DOCS / "_ext" / "settings_table.py").read_text()
    assert "SETTINGS.values()" in text  # the docs' table is a row per setting
    assert "```{dimlearn-settings}" in (DOCS / "user_guide" / "estimator.md").read_text()


def test_the_docs_table_has_a_row_per_setting():
    import sys

    from tests.test_docs import DOCS

    sys.path.insert(0, str(DOCS / "_ext"))
    try:
        from settings_table import settings_markdown
    finally:
        sys.path.remove(str(DOCS / "_ext"))
    rows = settings_markdown().splitlines()[2:]
    assert [row.split("|")[2].strip().strip("`") for row in rows] == list(SETTINGS)


def test_the_command_line_carries_each_flag_to_the_estimator():
    fit = build_parser()._subparsers._group_actions[0].choices["fit"]
    argv = ["images/", "--out", "m.safetensors"]
    expected = {}
    for name, setting in SETTINGS.items():
        if setting.python_only or name in ("augment", "early_stopping", "compile"):
            continue
        value = OTHER_VALUES[name]
        argv += [setting.flag, "none" if value is None else str(value)]
        expected[name] = value
    argv += ["--augment", "--early-stopping", "--compile"]
    expected.update(augment=True, early_stopping=True, compile=True)
    args = fit.parse_args(argv)
    for name, value in expected.items():
        assert getattr(args, name) == value, name
    assert fit.parse_args(["x", "--out", "m", "--flip", "yes"]).flip is True
    assert fit.parse_args(["x", "--out", "m", "--views", "auto"]).views == "auto"
    assert fit.parse_args(["x", "--out", "m", "--device", "cuda:1"]).device == "cuda:1"
    assert fit.parse_args(["x", "--out", "m", "-q"]).verbose == 0


def _fitted_with(name, value):
    """A tiny model fitted with the setting (network settings) or given it after the fit."""
    rows = name in ("reconstruction", "tabular_encoder")
    rng = np.random.default_rng(0)
    X = rng.random((16, 5)) if rows else rng.integers(0, 255, (16, 8, 8)).astype(np.uint8)
    params = dict(width=2, latent_dim=2, max_epochs=1, random_state=0, precision="float32")
    params.update(device="cpu")
    if name in NETWORK_SETTINGS:
        params.update({name: value}, **COMPANIONS.get(name, {}))
    dim = DeepInfomaxTransformer(**params).fit(X)
    dim.set_params(**{name: value}, **COMPANIONS.get(name, {}))
    return dim


@pytest.mark.parametrize("name", list(SETTINGS))
def test_each_setting_survives_model_files_pickles_and_skops(name, tmp_path):
    value = OTHER_VALUES[name]
    dim = _fitted_with(name, value)
    expected = dim.get_params()
    copies = [pickle.loads(pickle.dumps(dim))]
    if name in CODE_SETTINGS:  # refused, with the way out named, and nothing written
        with pytest.raises(dimlearn.ModelFileError, match=f"{name}=.*{CODE_SETTINGS[name]}"):
            dimlearn.save(dim, tmp_path / "m.safetensors")
        assert not (tmp_path / "m.safetensors").exists()
    else:
        path = dimlearn.save(dim, tmp_path / "m.safetensors", include_training_state=True)
        copies.append(dimlearn.load(path))
    skops_io = pytest.importorskip("skops.io", reason="needs the skops extra")
    skops_io.dump(dim, tmp_path / "m.skops")
    untrusted = skops_io.get_untrusted_types(file=tmp_path / "m.skops")
    copies.append(skops_io.load(tmp_path / "m.skops", trusted=untrusted))
    for copy in copies:
        got = copy.get_params()
        if name == "image_shape":  # a file writes a tuple as a JSON list, read back as tuple
            assert tuple(got[name]) == tuple(value)
            got[name] = expected[name]
        assert got == expected, name


def test_settings_group_the_flat_parameters_and_give_them_back():
    params = DeepInfomaxTransformer(**{k: v for k, v in OTHER_VALUES.items()}).get_params()
    settings = Settings.from_params(params)
    assert settings.params() == params
    assert {s.group for s in SETTINGS.values()} == {
        "objective",
        "architecture",
        "views",
        "optimisation",
        "runtime",
        "data",
    }


def test_grid_search_and_clone_see_the_flat_parameters():
    X = np.random.default_rng(0).random((40, 8, 8))
    dim = DeepInfomaxTransformer(width=2, latent_dim=2, max_epochs=1, random_state=0)
    assert clone(dim).get_params() == dim.get_params()
    search = GridSearchCV(dim, {"alpha": [0.0, 0.5], "gamma": [0.0, 0.1]}, cv=2).fit(X)
    assert search.best_params_.keys() == {"alpha", "gamma"}


def test_the_settings_0_2_lacked_say_since_when():
    """A model file of 0.2 holds exactly the parameters without a ``since``: every later
    one says from which version on files hold it, which is how older files are read."""
    import json
    from pathlib import Path

    fixture = Path(__file__).parent / "fixtures" / "0_2_expected.json"
    of_0_2 = set(json.loads(fixture.read_text())["image"]["params"])
    assert {name for name, s in SETTINGS.items() if s.since is None} == of_0_2
