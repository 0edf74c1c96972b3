"""dimlearn: Deep InfoMax feature learning as a scikit-learn transformer."""

__version__ = "0.3.0"

from .estimator import DeepInfomaxTransformer  # noqa: E402
from .images import load_images  # noqa: E402
from .persistence import ModelFileError, load, save  # noqa: E402
from .training import NonFiniteLossError  # noqa: E402

__all__ = [
    "DeepInfomaxTransformer",
    "ModelFileError",
    "NonFiniteLossError",
    "__version__",
    "load",
    "load_images",
    "save",
]
