"""dimlearn: Deep InfoMax feature learning as a scikit-learn transformer."""

from .estimator import DeepInfomaxTransformer

__version__ = "0.1.0"
__all__ = ["DeepInfomaxTransformer", "__version__"]
