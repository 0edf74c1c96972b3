"""The command-line arguments each example of the gallery runs with (``reset_argv``).

``DIMLEARN_DOCS_EXAMPLES=quick`` (the default) runs every example with its ``--quick``
flag, ``full`` as a user runs it; ``off`` does not run them (see ``docs/conf.py``). A
module of its own, named in ``sphinx_gallery_conf`` by its dotted path, so that Sphinx can
cache the configuration.
"""

import os


def example_argv(gallery_conf, script_vars):
    """``["--quick"]`` unless the examples are to run as a user runs them."""
    return [] if os.environ.get("DIMLEARN_DOCS_EXAMPLES", "quick") == "full" else ["--quick"]
