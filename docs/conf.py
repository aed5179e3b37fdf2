"""Sphinx configuration: ``make docs`` builds docs/_build/html with warnings as errors."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "_ext"))

project = "pyramid_pgstore"
author = "pyramid_pgstore contributors"
copyright = "pyramid_pgstore contributors"

extensions = ["sphinx.ext.autodoc", "sphinx.ext.viewcode", "fixtures"]

exclude_patterns = ["_build"]
html_theme = "furo"
html_title = "pyramid_pgstore"

autodoc_member_order = "bysource"
autodoc_typehints = "description"
nitpicky = True

# No intersphinx (CI reaches no documentation site): references to other
# projects' objects, which type hints make, stay plain text.
nitpick_ignore_regex = [
    (
        r"py:.*",
        r"(datetime|collections|threading|pathlib|typing|pyramid|webob|zope|sqlalchemy|psycopg2|psycopg|pytest|pytest_postgresql)(\..*)?",
    ),
    (r"py:.*", r"(Path|Request|Response|Registry|Engine)"),
    (r"py:class", r"<InterfaceClass .*>"),
]
# Private types in public signatures, named but not documented.
nitpick_ignore = [("py:class", "pyramid_pgstore.testing._TestableStore")]
