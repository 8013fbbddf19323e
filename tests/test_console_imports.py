"""The console is a service of its own: it never imports faust (``streams`` stays the only package that does)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_console_never_imports_faust() -> None:
    code = ("import sys, console.server, console.users, console.history, console.follower, console.topics; "
            "print(sorted(m for m in sys.modules if m == 'faust' or m.startswith(('faust.', 'streams'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
