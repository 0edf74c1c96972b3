"""The scikit-learn face of dimlearn: parameters, validation, fit / transform, tags."""

from __future__ import annotations

from numbers import Integral

import numpy as np
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
    _fit_context,
)
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from . import fitted, training, upgrades
from ._version import __version__
from .devices import on_device, resolve_device
from .fitted import FittedState
from .inference import encode, feature_width, local_mi_score
from .inputs import ArrayBatches
from .settings import (
    Settings,
    estimator_init,
    parameter_constraints,
    routed,
    with_parameters,
)

_TRANSFORM_BATCH = 512
_TRANSFORM_BATCH_ACCELERATOR = 4096
_PICKLE_FORMAT = 2
"""The form of a pickled estimator: 2 (dimlearn 0.3 and on) holds plain values and arrays
only, and from 0.4 on the version that wrote it (``_dimlearn_version``); a pickle without
it (dimlearn 0.2) holds torch modules (:mod:`dimlearn.upgrades` reads both)."""


_SKLEARN_STATE = frozenset({"_sklearn_version", "_sklearn_output_config"})
"""What scikit-learn may keep in an estimator's ``__dict__`` besides the parameters: the
version that ``BaseEstimator.__getstate__`` writes (for scikit-learn's own classes since
1.3, for every estimator before, so in pickles of dimlearn 0.2) and ``set_output``'s choice."""


SCORE_BATCH = 128
"""Batch size of :meth:`DeepInfomaxTransformer.score`: each code is told apart from up to
127 other images, so the score is at most ``log(128)`` = 4.85 nats."""


class DeepInfomaxTransformer(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Unsupervised features by Deep InfoMax: a conv encoder trained to maximise mutual
    information between its inputs and their codes.

    ``fit`` trains an encoder, a global critic and a local critic jointly (through skorch) on
    ``alpha * global MI + beta * local MI + gamma * prior (+ delta * local-local MI,
    + reconstruction * masked-feature reconstruction on table rows)`` with a
    reparameterised Gaussian code. The Keras reference's objective (Jensen-Shannon
    estimator, one shuffled in-batch negative, concatenate-and-score critics, KL summed over
    code dimensions; see References) is available through ``negatives``, ``critic``,
    ``mi_estimator`` and ``prior``; the defaults use the DIM paper's stronger choices and a
    light prior.
    ``transform`` returns the code mean, a ``latent_dim``-wide float32 feature vector.

    Inputs may be images, ``(n, H, W)``, ``(n, H, W, C)`` or ``(n, C, H, W)``, in uint8 or
    float; flat images ``(n, H*W*C)`` with ``image_shape`` given; or any other 2-D numeric
    data, whose rows get the feature-token encoder (``tabular_encoder``). Every input is
    standardised per channel (images) or per feature (tabular rows) with the mean and
    standard deviation of the data passed to ``fit``, inside the estimator, identically in
    ``fit`` and ``transform``; no external scaling is needed, and uint8 and float images of
    the same pictures give the same model.

    Attributes
    ----------
    module_ : torch.nn.Module
        The trained encoder, the local critic (which ``score`` reads) and the critics of the
        terms with a weight above 0 (on the CPU, in eval mode).
    history_ : skorch.History
        Per-epoch records: ``train_loss`` and each active term (``train_global``,
        ``train_local``, ``train_prior``), with epoch durations. An epoch cut short by a
        time budget or a Ctrl-C has ``epoch_fraction`` (and ``stopped_by_time`` or
        ``interrupted``).
    loss_curve_ : list of float
        ``train_loss`` per epoch, over all ``fit`` calls that continued one another
        (``warm_start``, ``partial_fit``).
    n_iter_ : int
        Epochs run, over those same calls (an epoch cut short counts as one).
    random_state_ : numpy.random.RandomState
        The stream each training call draws its seed from.
    precision_ : {"float32", "bfloat16", "float16"} or None
        The precision the last training call ran in (what ``precision="auto"`` resolved
        to). A continued fit keeps it while ``precision`` is ``"auto"``. None for a model
        read from a file of dimlearn 0.3.0 fitted with ``"auto"``, which did not record it.
    views_ : {1, 2}
        The views per sample the last training call trained (what ``views="auto"``
        resolved to); kept by a continued fit while ``views`` is ``"auto"``.
    flip_ : bool
        Whether the last training call mirrored augmented images (what ``flip="auto"``
        resolved to; False for table rows); kept by a continued fit while ``flip`` is
        ``"auto"``. Models of dimlearn 0.3.0 and older mirrored every augmented image.
    device_ : str or None
        The device the last training call ran on (``"cpu"``, ``"cuda:0"``, ...); None where
        an older file does not say. ``history_`` holds all four for every epoch.
    input_mean_, input_scale_ : ndarray
        Per-channel (or per-feature) statistics used to standardise inputs.
    sample_shape_ : tuple
        Shape of one sample seen in ``fit``; ``transform`` insists on the same.
    layout_ : dimlearn.inputs.Layout
        How a sample is read: image or tabular, its image shape and where the channels are
        (what :func:`dimlearn.training.build_module` builds the networks from).
    n_features_in_ : int
        Values per sample (``prod(sample_shape_)``).
    feature_names_in_ : ndarray of str
        Column names, when ``fit`` got a DataFrame with string column names.

    See Also
    --------
    dimlearn.save, dimlearn.load : model files that are safe to share (safetensors + JSON).

    Notes
    -----
    Faults: a loss that is not finite stops training at once with
    :class:`~dimlearn.NonFiniteLossError` (a first fit leaves the estimator unfitted, a
    continued one as it was); a Ctrl-C stops training at the end of the running batch and
    ``fit`` returns the model trained so far, with a warning. Memory-mapped input
    (``np.load(path, mmap_mode="r")``) is read a batch at a time in ``fit``,
    ``partial_fit``, ``transform`` and ``score``, never copied whole.

    Why these defaults: they gave the best features per minute of training measured so far
    on CIFAR-10 with 2 CPU cores (``benchmarks/results/cifar10_variants.md`` and
    ``cifar10_options.md``: 10k images, 200 s per model). Local MI alone (``alpha=0,
    beta=1``, the DIM paper's DIM(L)), all other images of the batch as negatives,
    dot-product critics and the infoNCE estimator reach 52.2% linear / 45.2% kNN-10 on the
    codes, against 32.8 / 29.9 for the Keras reference's form (``alpha=0.5, beta=1, gamma=0.1,
    prior="kl", negatives="shuffle", critic="concat", mi_estimator="jsd"``, still one
    ``set_params`` away) and 36.9 / 38.4 for PCA. A light prior, the KL averaged over code
    dimensions with ``gamma=0.1``, kept the linear probe (51.6 vs 51.8) and lifted kNN-10
    (48.1 vs 45.0); the same KL summed over dimensions, or the adversarial prior, at
    ``gamma=0.1``, cost 14-18 points. ``latent_dim=64`` and ``width=64`` are the DIM
    paper's network; ``batch_size=128`` and ``lr=1e-3`` its and the Keras reference's optimiser
    settings.

    References
    ----------
    R. D. Hjelm et al., "Learning deep representations by mutual information estimation and
    maximization", ICLR 2019, arXiv:1808.06670.

    The Keras reference: Su Jianlin's 2018 blog post on Deep InfoMax ("Deep INFOMAX",
    kexue.fm, 2 October 2018) and its Keras code (github.com/bojone/infomax). Its objective,
    as the post writes it: ``alpha`` x global + ``beta`` x local Jensen-Shannon MI with one
    shuffled in-batch negative and concatenate-and-score critics, plus ``gamma`` x the KL
    of the code to N(0, I). Elsewhere in dimlearn "the Keras reference" means this.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from dimlearn import DeepInfomaxTransformer
    >>> X, y = load_digits(return_X_y=True)
    >>> dim = DeepInfomaxTransformer(image_shape=(8, 8), max_epochs=1, width=8, random_state=0)
    >>> dim.fit_transform(X[:200]).shape
    (200, 64)
    """

    _parameter_constraints: dict = parameter_constraints()
    __init__ = estimator_init()

    def get_params(self, deep=True) -> dict:
        """The parameters (scikit-learn's ``get_params``), with every ``optimizer__<keyword>``
        routed to the optimiser (as skorch's ``NeuralNet`` routes them), so that ``clone``
        and ``GridSearchCV`` carry them too.

        Examples
        --------
        >>> from dimlearn import DeepInfomaxTransformer
        >>> dim = DeepInfomaxTransformer(optimizer="adamw", optimizer__weight_decay=1e-4)
        >>> dim.get_params()["optimizer__weight_decay"]
        0.0001
        """
        return {**super().get_params(deep=deep), **routed(vars(self))}

    def set_params(self, **params):
        """Set parameters (scikit-learn's ``set_params``), ``optimizer__<keyword>`` ones
        included; returns the estimator.

        Examples
        --------
        >>> from dimlearn import DeepInfomaxTransformer
        >>> dim = DeepInfomaxTransformer().set_params(optimizer__betas=(0.9, 0.99))
        >>> dim.get_params()["optimizer__betas"]
        (0.9, 0.99)
        """
        options = routed(params)
        rest = {name: value for name, value in params.items() if name not in options}
        if rest:
            super().set_params(**rest)  # checks the names before anything is set
        for name, value in options.items():
            setattr(self, name, value)
        return self

    # -- input checks ---------------------------------------------------------------------

    def _validate_input(self, X, *, reset: bool) -> np.ndarray:
        """Validated array of X, in its own dtype, with the per-sample shape checked."""
        if not hasattr(X, "shape") and not hasattr(X, "__array__"):
            X = np.asarray(X)
        ndim = getattr(X, "ndim", 2)
        if ndim > 2:
            if not reset:
                self._check_sample_shape(X.shape[1:])
            sample_shape = tuple(X.shape[1:])
            X = np.reshape(np.asarray(X), (X.shape[0], -1))
        X = validate_data(
            self,
            X,
            reset=reset,
            dtype="numeric",
            ensure_all_finite=True,
            ensure_min_samples=2 if reset else 1,
        )
        if X.dtype.kind not in "biuf":
            raise TypeError(f"X must hold real numbers; got dtype {X.dtype}.")
        if ndim > 2:
            X = X.reshape(X.shape[0], *sample_shape)
        elif not reset:
            self._check_sample_shape(X.shape[1:])
        return X

    def _check_sample_shape(self, sample_shape) -> None:
        if tuple(sample_shape) != self.sample_shape_:
            raise ValueError(
                f"X has samples of shape {tuple(sample_shape)}, but {type(self).__name__} was "
                f"fitted on samples of shape {self.sample_shape_}. Pass arrays shaped like "
                "the training data, or refit."
            )

    # -- fit / transform ------------------------------------------------------------------

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Train the encoder and critics on X by Deep InfoMax.

        With ``warm_start=True`` and a fitted estimator, training continues from the fitted
        state; otherwise it starts from new random weights.

        Parameters
        ----------
        X : array-like of shape (n_samples, H, W[, C]), (n_samples, C, H, W) or (n_samples, F)
            Images (uint8 or float) or tabular rows. NaN and inf are refused.
        y : None
            Ignored; present for API consistency.

        Returns
        -------
        self : DeepInfomaxTransformer
            The fitted estimator.

        Examples
        --------
        >>> import numpy as np
        >>> from dimlearn import DeepInfomaxTransformer
        >>> X = np.random.default_rng(0).random((64, 8, 8))
        >>> dim = DeepInfomaxTransformer(max_epochs=2, width=4, latent_dim=8, random_state=0)
        >>> dim.fit(X).n_iter_, len(dim.history_)
        (2, 2)
        """
        continued = self.warm_start and hasattr(self, "module_")
        return self._train(X, max_epochs=self.max_epochs, continued=continued)

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y=None):
        """One epoch of training on X, continuing from the fitted state if there is one.

        The first call fits the input standardisation on its X (as ``fit`` does); later
        calls keep it and go on training the same networks and optimiser on new data, which
        must have the same per-sample shape. Every row of X is trained on: ``early_stopping``
        holds nothing out here (it needs several epochs in one call), and every call trains at
        ``lr`` (``lr_schedule`` acts within a ``fit``).

        Parameters
        ----------
        X : array-like, as for ``fit``
        y : None
            Ignored.

        Returns
        -------
        self : DeepInfomaxTransformer
            The estimator, trained one epoch more.

        Examples
        --------
        >>> import numpy as np
        >>> from dimlearn import DeepInfomaxTransformer
        >>> stream = np.random.default_rng(0).random((3, 64, 8, 8))  # three chunks of data
        >>> dim = DeepInfomaxTransformer(width=4, latent_dim=8, random_state=0)
        >>> for chunk in stream:
        ...     dim = dim.partial_fit(chunk)
        >>> dim.n_iter_
        3
        """
        return self._train(X, max_epochs=1, continued=hasattr(self, "module_"), partial=True)

    def _train(self, X, *, max_epochs: int, continued: bool, partial: bool = False):
        X = self._validate_input(X, reset=not continued)
        previous = FittedState.of(self) if continued else None
        rng = self._training_rng(previous)
        rng_before = rng.get_state()
        try:
            state = training.train(
                X,
                Settings.from_params(self.get_params()),
                seed=int(rng.randint(np.iinfo(np.int32).max)),
                max_epochs=max_epochs,
                previous=previous,
                partial=partial,
                feature_names_in=getattr(self, "feature_names_in_", None),
            )
        except BaseException:
            # never keep a half-trained or NaN model: a first fit ends unfitted, a
            # continued one exactly as it was before the call
            rng.set_state(rng_before)
            if previous is None:
                fitted.clear(self)
            raise
        state.random_state = rng
        state.write_to(self)
        return self

    def _training_rng(self, previous: FittedState | None) -> np.random.RandomState:
        """The RNG stream that seeds each training call, kept as ``random_state_``."""
        if previous is None:
            return check_random_state(self.random_state)
        if previous.random_state is not None:
            return previous.random_state
        # a model loaded without its training state: a stream of its own, not a replay
        if isinstance(self.random_state, Integral):
            entropy = [int(self.random_state), int(previous.n_iter)]
            return np.random.RandomState(np.random.SeedSequence(entropy).generate_state(1))
        return check_random_state(self.random_state)

    def transform(self, X) -> np.ndarray:
        """Features of X (by default the code means), float32, computed in batches.

        Parameters
        ----------
        X : array-like shaped like the training data (same per-sample shape)

        Returns
        -------
        features : ndarray of shape (n_samples, n_features_out), float32
            ``n_features_out`` is ``latent_dim`` for ``feature_level="code"``.

        Examples
        --------
        >>> import numpy as np
        >>> from dimlearn import DeepInfomaxTransformer
        >>> X = np.random.default_rng(0).random((64, 8, 8))
        >>> dim = DeepInfomaxTransformer(max_epochs=1, width=4, latent_dim=8, random_state=0)
        >>> codes = dim.fit(X).transform(X)
        >>> codes.shape, codes.dtype
        ((64, 8), dtype('float32'))
        """
        check_is_fitted(self)
        X = self._validate_input(X, reset=False)
        dataset = ArrayBatches(X, self.layout_, self.input_mean_, self.input_scale_)
        device = resolve_device(self.device, strict=False)
        batch = _TRANSFORM_BATCH if device.type == "cpu" else _TRANSFORM_BATCH_ACCELERATOR
        return encode(self._module_on(device), dataset, batch, device, self.feature_level)

    def score(self, X, y=None) -> float:
        """Held-out local mutual information between images and their codes, in nats.

        The infoNCE lower bound on I(C(x); E(x)), read by the model's own local critic: X is
        cut, in order, into batches of about :data:`~dimlearn.estimator.SCORE_BATCH` (128);
        each code mean is scored against every position of its own image's local map and of
        every other image in its batch, and the score is ``log(batch size)`` minus the
        infoNCE loss, averaged over codes and positions. Higher is better; 0 is chance; the
        ceiling is ``log(128)`` = 4.85. Its form is fixed: it does not depend on ``alpha``,
        ``beta``, ``gamma``, ``delta``, ``prior`` or the ``mi_estimator``, ``negatives`` and
        ``batch_size`` used in training, so ``GridSearchCV`` can compare models across them
        without labels. It is deterministic (no code sampling).

        What it measures is how well a code identifies its own image's local features among
        other images', the quantity DIM maximises. Models trained with ``beta=0`` never
        train the local critic and score near 0, whatever their codes are worth. It is not
        class separability: when labels exist, score the downstream task instead (a
        ``Pipeline`` ending in a classifier, or ``scoring=`` in ``GridSearchCV``).

        Parameters
        ----------
        X : array-like shaped like the training data, at least 2 samples
            Held-out data: on the training data the bound is optimistic.
        y : None
            Ignored.

        Returns
        -------
        score : float
            The bound, in nats: 0 for codes that tell nothing, at most ``log(128)``.

        Examples
        --------
        >>> import math
        >>> from sklearn.datasets import load_digits
        >>> from dimlearn import DeepInfomaxTransformer
        >>> images = load_digits().images
        >>> dim = DeepInfomaxTransformer(max_epochs=2, width=4, latent_dim=8, random_state=0)
        >>> nats = dim.fit(images[:500]).score(images[500:700])  # held-out images
        >>> bool(nats < math.log(128))  # in nats: about 0 after 2 small epochs
        True
        """
        check_is_fitted(self)
        X = self._validate_input(X, reset=False)
        if len(X) < 2:
            raise ValueError(
                f"score needs at least 2 samples (each code is told apart from the other "
                f"images); got {len(X)}."
            )
        dataset = ArrayBatches(X, self.layout_, self.input_mean_, self.input_scale_)
        device = resolve_device(self.device, strict=False)
        return local_mi_score(self._module_on(device), dataset, SCORE_BATCH, device)

    def _module_on(self, device):
        """The fitted networks on ``device``: ``module_`` itself on the CPU, elsewhere a copy
        kept between calls (until ``module_`` changes; never pickled)."""
        cached = self.__dict__.get("_device_copy")
        if cached is not None and cached[0] == device and cached[1] is self.module_:
            return cached[2]
        module = on_device(self.module_, device)
        if module is not self.module_:
            self._device_copy = (device, self.module_, module)
        return module

    def __getstate__(self):
        """The parameters and the fitted state as plain Python values and numpy arrays
        (:meth:`dimlearn.fitted.FittedState.to_plain`): no torch or skorch object, so that
        ``skops.io`` can store a fitted estimator (and a ``Pipeline`` around it) safely."""
        state = dict(super().__getstate__())  # a copy: object's is the instance's own dict
        for name in [*fitted.ATTRIBUTES.values(), *fitted.CACHES]:
            state.pop(name, None)
        if self.__sklearn_is_fitted__():
            state["_fitted"] = FittedState.of(self).to_plain(include_training_state=True)
        state["_pickle_format"] = _PICKLE_FORMAT
        state["_dimlearn_version"] = __version__
        return state

    def __setstate__(self, state):
        """Rebuild from :meth:`__getstate__`'s state, or from a pickle of an older dimlearn.

        A pickle or a skops file may come from anyone, so the state is read as untrusted,
        through the one way back that model files take too
        (:func:`dimlearn.fitted.restore`): only the estimator's parameters, the fitted state
        and scikit-learn's own bookkeeping are accepted, the parameters are validated, and
        anything else (a key that would replace a method, say) is refused with a
        ``ValueError`` before the estimator changes.
        """
        if not isinstance(state, dict):
            raise ValueError(f"A pickled {type(self).__name__} holds a dict, not a {type(state)}")
        state = dict(state)
        pickle_format = state.pop("_pickle_format", None)
        bookkeeping = {name: state.pop(name) for name in _SKLEARN_STATE if name in state}
        output_config = bookkeeping.get("_sklearn_output_config", {})
        if not (
            isinstance(output_config, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in output_config.items())
        ):
            raise ValueError(f"This pickled {type(self).__name__} has a malformed output config")
        if pickle_format is not None and (
            not isinstance(pickle_format, int) or pickle_format > _PICKLE_FORMAT
        ):
            raise ValueError(
                f"This DeepInfomaxTransformer was pickled by a newer dimlearn (pickle format "
                f"{pickle_format!r}; this dimlearn reads up to {_PICKLE_FORMAT}). Upgrade "
                "dimlearn to unpickle it, or save models with dimlearn.save to share them."
            )
        try:
            if pickle_format is None:  # dimlearn 0.2 pickled its __dict__, objects and all
                written_by = (0, 2)
                params = upgrades.parameters(
                    {k: v for k, v in state.items() if k in self._get_param_names()},
                    written_by,
                    self._get_param_names(),
                )
                fitted_state = upgrades.fitted_fields_of_0_2(state, Settings.from_params(params))
            else:
                written_by = upgrades.version_of(state.pop("_dimlearn_version", "0.3.0"))
                fitted_state = state.pop("_fitted", None)
            fitted.restore(self, state, fitted_state, written_by)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as error:
            problem = f"missing field {error}" if isinstance(error, KeyError) else str(error)
            raise ValueError(
                f"This pickled {type(self).__name__} is not one that dimlearn wrote, or was "
                f"edited or damaged ({problem}). Refit the model, or share it as a "
                "dimlearn.save model file."
            ) from None
        self.__dict__.update(bookkeeping)

    @property
    def _n_features_out(self) -> int:
        return feature_width(self.module_.encoder, self.feature_level)

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "module_")

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags


DeepInfomaxTransformer.__doc__ = with_parameters(DeepInfomaxTransformer.__doc__)
