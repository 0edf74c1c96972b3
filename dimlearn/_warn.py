"""Warnings reported at the user's line.

A warning raised deep inside ``fit`` or ``transform`` is useless when Python reports it at a
line of scikit-learn or skorch: :func:`warn` reports it at the first frame outside dimlearn
and the libraries a call to it passes through (scikit-learn's wrappers and pipelines,
skorch, torch, joblib, contextlib), which is the line of the user's code that called us.

Python 3.12's ``warnings.warn(skip_file_prefixes=...)`` is not used: it skips frames by file
path, so it would need each package's folder (and the files of the single-module ones,
contextlib and threading) found first, and it reports a warning whose every frame is skipped
at ``sys:1`` rather than at the outermost frame; the walk below is shorter and works the same
on every supported Python.
"""

from __future__ import annotations

import sys
import warnings

PASSED_THROUGH = frozenset(
    {"dimlearn", "sklearn", "skorch", "torch", "joblib", "contextlib", "numpy", "threading"}
)
"""Top-level packages whose frames are never "the user's line"."""


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn(message, category)`` at the first frame outside :data:`PASSED_THROUGH`
    (the outermost frame when every frame is inside them)."""
    frame, level = sys._getframe(1), 2
    while frame.f_back is not None and _passed_through(frame):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


def _passed_through(frame) -> bool:
    name = frame.f_globals.get("__name__") or ""
    return name.partition(".")[0] in PASSED_THROUGH
