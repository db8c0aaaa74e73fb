"""Sphinx configuration for the msgraph_mail documentation."""

import msgraph_mail

project = "msgraph_mail"
author = "msgraph_mail contributors"
copyright = "2026, msgraph_mail contributors"
release = msgraph_mail.__version__
version = release

extensions = ["myst_parser", "sphinx.ext.autodoc"]
myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build", "requirements.txt"]
html_theme = "furo"
html_title = "msgraph_mail"
