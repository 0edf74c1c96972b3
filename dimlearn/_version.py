"""The version of dimlearn, in one place that every module may import (the package's
``__init__`` imports the modules, so none of them imports it back)."""

__version__ = "0.4.0.dev0"
