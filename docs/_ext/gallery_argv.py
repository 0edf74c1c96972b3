"""How the gallery runs the examples (``reset_argv``) and in which order it lists them.

``DIMLEARN_DOCS_EXAMPLES=quick`` (the default) runs every example with its ``--quick``
flag, ``full`` as a user runs it; ``off`` does not run them (see ``docs/conf.py``). A
module of its own, named in ``sphinx_gallery_conf`` by its dotted path, so that Sphinx can
cache the configuration.
"""

import os


def example_argv(gallery_conf, script_vars):
    """``["--quick"]`` unless the examples are to run as a user runs them."""
    return [] if os.environ.get("DIMLEARN_DOCS_EXAMPLES", "quick") == "full" else ["--quick"]


ORDER = [
    "quickstart.py",
    "pipeline_and_search.py",
    "grid_search.py",
    "save_and_load.py",
    "dask_grid_search.py",
    "distributed_fit.py",
]


class ExampleOrder:
    """The gallery's order (``within_subsection_order``): the main job first, then the user
    stories as the user guide tells them; examples not listed come last, by file name."""

    def __init__(self, src_dir):
        self.src_dir = src_dir

    def __call__(self, filename):
        return (ORDER.index(filename) if filename in ORDER else len(ORDER), filename)
