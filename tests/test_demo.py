"""The README's first command: the demo runs against the bundled emulator and says what it did."""

from __future__ import annotations

import subprocess
import sys


def test_demo_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "msgraph_mail", "demo"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Bcc      audit@contoso.com" in out
    assert "attached invoice-1001.txt" in out
    assert "first message : 3" in out
    assert "next message  : 1" in out
