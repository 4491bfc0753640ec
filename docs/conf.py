"""Sphinx configuration of the flux-brokermod documentation."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

project = "flux-brokermod"
author = "flux-brokermod developers"
extensions = ["sphinx.ext.autodoc"]
exclude_patterns = ["_build", "real-flux.md"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
nitpicky = False
html_theme = "alabaster"
man_pages = [
    ("flux-brokermod", "flux-brokermod", "run, describe and set up Python broker modules for Flux",
     [author], 1),
]
