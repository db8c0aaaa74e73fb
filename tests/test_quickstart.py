"""The quick start on a new project: this Django's own ``startproject``, the settings block of
docs/quickstart.md for this Django (read from the page, not retyped), then ``manage.py check``
and ``manage.py sendtestemail`` against the emulator, each in a process of its own.

Django 6.1's ``startproject`` writes ``MAILERS``; the quick start's Django 5.2/6.0 form
(``EMAIL_BACKEND``) would stop every command there. This proves the page leads each release's
user to settings that work.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import django
import pytest

from msgraph_mail.emulator import GraphEmulator

QUICKSTART = Path(__file__).resolve().parent.parent / "docs" / "quickstart.md"
FORM = "Django 6.1" if django.VERSION >= (6, 1) else "Django 5.2 and 6.0"
#: A fenced python block, possibly indented (the quick start's steps are a list).
BLOCK = re.compile(r"^(?P<indent>[ \t]*)```python\n(?P<code>.*?)^(?P=indent)```$", re.M | re.S)


def settings_block(form: str) -> str:
    """The quick start's settings for one Django release, dedented, as a reader copies it."""
    for found in BLOCK.finditer(QUICKSTART.read_text(encoding="utf-8")):
        indent = len(found["indent"])
        code = "".join(line[indent:] for line in found["code"].splitlines(keepends=True))
        if code.startswith(f"# settings.py ({form})"):
            return code
    raise AssertionError(f"docs/quickstart.md has no '# settings.py ({form})' block")


def manage(project: Path, *args: str, secret: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MSGRAPH_CLIENT_SECRET": secret, "PYTHONWARNINGS": "error"}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return subprocess.run(  # noqa: S603 - this interpreter, fixed arguments
        [sys.executable, "manage.py", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_each_release_has_its_own_settings_block() -> None:
    assert "MAILERS = {" in settings_block("Django 6.1")
    assert "EMAIL_BACKEND" not in settings_block("Django 6.1")
    assert 'EMAIL_BACKEND = "msgraph_mail.backend.EmailBackend"' in settings_block(
        "Django 5.2 and 6.0"
    )


def test_a_new_project_sends_with_the_quick_start_settings(tmp_path: Path) -> None:
    subprocess.run(  # noqa: S603 - this interpreter, fixed arguments
        [sys.executable, "-m", "django", "startproject", "mysite", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    settings_py = tmp_path / "mysite" / "settings.py"
    written = settings_py.read_text(encoding="utf-8")
    assert ("MAILERS" in written) == (django.VERSION >= (6, 1))  # what startproject wrote
    # The dev inbox's permissive emulator: it takes the page's tenant, app and secret.
    with GraphEmulator(strict=False) as emulator:
        if django.VERSION >= (6, 1):
            point_here = (
                f'MAILERS["default"]["OPTIONS"].update(graph_url="{emulator.url}", '
                f'authority_url="{emulator.url}")'
            )
        else:
            point_here = (
                f'MSGRAPH_MAIL.update(GRAPH_URL="{emulator.url}", AUTHORITY_URL="{emulator.url}")'
            )
        settings_py.write_text(
            f"{written}\n\n{settings_block(FORM)}\n# the test: Graph is the emulator\n"
            f"{point_here}\n",
            encoding="utf-8",
        )
        checked = manage(tmp_path, "check", secret="quick-start-secret")
        assert checked.returncode == 0, checked.stderr
        assert "System check identified no issues" in checked.stdout, checked.stdout
        sent = manage(tmp_path, "sendtestemail", "you@contoso.com", secret="quick-start-secret")
        assert sent.returncode == 0, sent.stderr
        [message] = emulator.sent
    assert message.to == ["you@contoso.com"]
    assert message.from_ == "noreply@contoso.com"
    assert "quick-start-secret" not in sent.stdout + sent.stderr


@pytest.mark.skipif(django.VERSION < (6, 1), reason="MAILERS is new in Django 6.1")
def test_the_other_form_is_refused_by_django_61(tmp_path: Path) -> None:
    """Why the page shows two forms: EMAIL_BACKEND beside startproject's MAILERS stops 6.1."""
    subprocess.run(  # noqa: S603 - this interpreter, fixed arguments
        [sys.executable, "-m", "django", "startproject", "mysite", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    settings_py = tmp_path / "mysite" / "settings.py"
    settings_py.write_text(
        settings_py.read_text(encoding="utf-8") + "\n" + settings_block("Django 5.2 and 6.0")
    )
    checked = manage(tmp_path, "check", secret="x")
    assert checked.returncode != 0
    assert "Deprecated email settings are not allowed when MAILERS is defined" in checked.stderr
