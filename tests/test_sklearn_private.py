"""scikit-learn's private names that dimlearn relies on, pinned with the behaviour it needs.

scikit-learn may rename or change anything private in any release, without a deprecation.
These tests fail first and say what to do, instead of the estimator breaking later in some
less legible way. What dimlearn uses, and where:

- ``sklearn.base._fit_context`` (dimlearn/estimator.py, on ``fit`` and ``partial_fit``):
  validates the parameters before the method runs, and switches off the validation of nested
  estimators' parameters while it runs;
- ``sklearn.utils._param_validation`` (``Interval``, ``StrOptions``, ``Options``, whose
  subclass ``OptimizerClass`` in dimlearn/settings.py accepts ``torch.optim.Optimizer``
  classes, and the ``callable`` constraint; ``InvalidParameterError`` is what is raised):
  the ``_parameter_constraints`` of ``DeepInfomaxTransformer``;
- ``BaseEstimator._validate_params`` (dimlearn/estimator.py ``__setstate__`` and
  dimlearn/persistence.py): the same validation, called on parameters read from a pickle or
  a model file;
- the state keys ``_sklearn_version`` and ``_sklearn_output_config`` (dimlearn/estimator.py,
  ``_SKLEARN_STATE`` and ``__setstate__``): what ``BaseEstimator.__getstate__`` and
  ``set_output`` may add to a pickled estimator besides its parameters and fitted state.
"""

import importlib
from numbers import Integral, Real

import pytest
import sklearn
import torch
from sklearn.base import BaseEstimator, TransformerMixin

from dimlearn import DeepInfomaxTransformer
from dimlearn.networks import ConvEncoder


def changed(what: str, where: str, instead: str) -> str:
    """The failure message: what changed, who uses it, and what to do."""
    return (
        f"scikit-learn {sklearn.__version__} changed {what}, a private part of scikit-learn "
        f"relied on by {where}. Either {instead}, or cap scikit-learn below "
        f"{sklearn.__version__} in pyproject.toml until that is done."
    )


def private(module: str, name: str, where: str, instead: str):
    """``module.name``, or a test failure saying what to do when it is gone."""
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        pytest.fail(changed(f"{module}.{name} (it is gone)", where, instead))


PARAM_VALIDATION = "sklearn.utils._param_validation"
CONSTRAINTS = "DeepInfomaxTransformer._parameter_constraints (dimlearn/estimator.py)"
CHECK_BY_HAND = (
    "check the parameters by hand at the start of fit, partial_fit, __setstate__ and "
    "dimlearn.persistence.load, raising ValueError naming the parameter"
)


def test_fit_context_validates_before_fit_and_skips_nested_validation():
    fit_context = private(
        "sklearn.base",
        "_fit_context",
        "the fit and partial_fit decorators of dimlearn/estimator.py",
        CHECK_BY_HAND,
    )
    interval = private(PARAM_VALIDATION, "Interval", CONSTRAINTS, CHECK_BY_HAND)
    error = private(PARAM_VALIDATION, "InvalidParameterError", CONSTRAINTS, CHECK_BY_HAND)
    seen = []

    class Probe(BaseEstimator):
        _parameter_constraints: dict = {"width": [interval(Integral, 1, None, closed="left")]}

        def __init__(self, width=1):
            self.width = width

        @fit_context(prefer_skip_nested_validation=True)
        def fit(self, X=None):
            seen.append(sklearn.get_config()["skip_parameter_validation"])
            return self

    Probe(width=3).fit()
    message = changed(
        "what _fit_context does", "DeepInfomaxTransformer.fit and partial_fit", CHECK_BY_HAND
    )
    assert seen == [True], message  # nested estimators' parameters are not checked again
    assert not sklearn.get_config()["skip_parameter_validation"], message
    try:
        Probe(width=0).fit()
    except error as refusal:
        assert "'width' parameter" in str(refusal), message
    else:
        pytest.fail(message + " (width=0 is accepted)")
    assert seen == [True], message  # refused before the method's body ran
    assert issubclass(error, ValueError), message  # dimlearn documents a ValueError


@pytest.mark.parametrize(
    ("param", "good", "bad"),
    [
        ("width", 1, 0),  # Interval(Integral, 1, None, closed="left")
        ("width", 64, 1.5),
        ("alpha", 0.0, -0.1),  # Interval(Real, 0, None, closed="left")
        ("lr", 1e-6, 0.0),  # Interval(Real, 0, None, closed="neither")
        ("temperature", None, 0.0),  # ... or None
        ("validation_fraction", 0.5, 1.0),  # Interval(Real, 0, 1, closed="neither")
        ("views", 2, 3),  # Interval(Integral, 1, 2, closed="both") or StrOptions({"auto"})
        ("views", "auto", "two"),
        ("tabular_encoder", "mlp", "MLP"),  # StrOptions
        ("data_on_device", True, "yes"),  # StrOptions({"auto"}) or "boolean"
        ("random_state", 0, "seed"),  # "random_state"
        ("verbose", 1, "loud"),  # "verbose"
        ("encoder", ConvEncoder, "conv"),  # StrOptions({"auto"}) or callable
        ("augmentation", None, "crop"),  # callable or None
        ("optimizer", torch.optim.NAdam, torch.nn.Linear),  # StrOptions or OptimizerClass
        ("optimizer", "adamw", "AdamW"),
        ("callbacks", [], "progress_bar"),  # list or None
    ],
)
def test_the_parameter_constraints_accept_and_refuse_as_dimlearn_expects(param, good, bad):
    error = private(PARAM_VALIDATION, "InvalidParameterError", CONSTRAINTS, CHECK_BY_HAND)
    validate = getattr(BaseEstimator, "_validate_params", None)
    if validate is None:
        pytest.fail(
            changed(
                "BaseEstimator._validate_params (it is gone)",
                "dimlearn/estimator.py __setstate__ and dimlearn/persistence.py load",
                "call sklearn.utils._param_validation.validate_parameter_constraints there, "
                f"or {CHECK_BY_HAND}",
            )
        )
    what = f"what _validate_params makes of the constraints of {param}"
    message = changed(what, CONSTRAINTS, CHECK_BY_HAND)
    try:
        DeepInfomaxTransformer(**{param: good})._validate_params()
    except error:
        pytest.fail(message + f" ({param}={good!r} is refused)")
    try:
        DeepInfomaxTransformer(**{param: bad})._validate_params()
    except error as refusal:
        assert f"'{param}' parameter" in str(refusal), message  # the message names it
    else:
        pytest.fail(message + f" ({param}={bad!r} is accepted)")


def test_every_constraint_of_the_estimator_is_of_a_known_kind():
    # the kinds the parametrised test above exercises: a new kind in _parameter_constraints
    # gets a case there
    interval = private(PARAM_VALIDATION, "Interval", CONSTRAINTS, CHECK_BY_HAND)
    options = private(PARAM_VALIDATION, "Options", CONSTRAINTS, CHECK_BY_HAND)
    named = {"boolean", "random_state", "verbose"}
    for param, constraints in DeepInfomaxTransformer._parameter_constraints.items():
        for constraint in constraints:
            known = (
                constraint is None
                or constraint is callable
                or constraint in named
                or isinstance(constraint, type)
                or isinstance(constraint, options)  # StrOptions among them
                or (isinstance(constraint, interval) and constraint.type in (Integral, Real))
            )
            assert known, f"{param}: {constraint!r}"


def test_the_pickled_state_keys_sklearn_adds_are_the_ones_dimlearn_allows():
    class Probe(TransformerMixin, BaseEstimator):
        def fit(self, X=None):
            return self

        def transform(self, X):
            return X

        def get_feature_names_out(self, input_features=None):
            return input_features

    # (_sklearn_version: added for scikit-learn's own classes only since 1.3, and found in
    # pickles of older versions)
    state = Probe().set_output(transform="pandas").__getstate__()
    allowed = {"_sklearn_version", "_sklearn_output_config"}
    assert set(state) <= allowed, changed(
        f"the keys BaseEstimator.__getstate__ and set_output add to a pickle ({sorted(state)})",
        "DeepInfomaxTransformer.__setstate__ (dimlearn/estimator.py, _SKLEARN_STATE)",
        "allow the new keys there (and check their values)",
    )
    assert state["_sklearn_output_config"] == {"transform": "pandas"}
