"""dimlearn: Deep InfoMax feature learning as a scikit-learn transformer.

Public, and kept stable across releases: the names below (``__all__``), the figures of
:mod:`dimlearn.plot` and the ``dimlearn`` command (:mod:`dimlearn.cli`). Every other module
is internal: documented, tested and used by the benchmarks, but free to change between
releases. Reading order, from the estimator down: ``estimator`` -> ``training`` (one
training call) -> ``net`` (the skorch net) and ``callbacks`` -> ``infomax`` (the DIM module
and its builder) -> ``critics`` -> ``networks`` (the encoders), and ``objectives``; beside
them ``config`` (settings), ``fitted`` (the fitted state), ``inputs`` (arrays to batches),
``inference``, ``distributed``, ``devices``, ``persistence`` (model files) and ``model_file``
(reading one safely), ``images`` and ``browse`` (the browse page, public as
:func:`dimlearn.plot.browse`). The version lives in ``_version``.
"""

from ._version import __version__
from .estimator import DeepInfomaxTransformer
from .images import load_images
from .net import NonFiniteLossError
from .persistence import ModelFileError, load, save

__all__ = [
    "DeepInfomaxTransformer",
    "ModelFileError",
    "NonFiniteLossError",
    "__version__",
    "load",
    "load_images",
    "save",
]
