"""Sphinx configuration of the mpiopt API reference (``sphinx-build -W -b html docs/api OUT``)."""
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

project = "mpiopt"
author = "mpiopt developers"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon"]
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = True
html_theme = "alabaster"
exclude_patterns = ["_build"]
nitpicky = False
