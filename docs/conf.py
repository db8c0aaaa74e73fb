"""Sphinx configuration for the msgraph_mail documentation."""

from pathlib import Path

import django
from django.conf import settings

import msgraph_mail

settings.configure(INSTALLED_APPS=["msgraph_mail"], USE_TZ=True)
django.setup()


def _write_checks_table() -> None:
    """docs/_generated/checks.md: every system check, from the code itself."""
    from msgraph_mail import checks

    rows = ["| id | level | message | what to do |", "|---|---|---|---|"]
    for name, check in sorted(vars(checks).items()):
        if name[:1] in "EW" and name[1:].isdigit():
            level = "error" if name.startswith("E") else "warning"
            cells = [f"`{check.id}`", level, check.msg, check.hint or ""]
            rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    target = Path(__file__).parent / "_generated" / "checks.md"
    target.parent.mkdir(exist_ok=True)
    target.write_text("\n".join(rows) + "\n", encoding="utf-8")


_write_checks_table()

project = "msgraph_mail"
author = "msgraph_mail contributors"
copyright = "2026, msgraph_mail contributors"
release = msgraph_mail.__version__
version = release

extensions = ["myst_parser", "sphinx.ext.autodoc"]
myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build", "_generated", "requirements.txt", "screenshot.py"]
html_theme = "furo"
html_title = "msgraph_mail"
