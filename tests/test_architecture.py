"""The package layers hold: the import-linter contracts (pyproject.toml) pass on the tree as it is.

Runs ``lint-imports`` as ``make lint`` does.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept() -> None:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
    out = subprocess.run([exe, "--no-logo", "--no-cache", "pyproject.toml"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout
    assert "Contracts: 4 kept" in out.stdout


def test_contracts_catch_a_forbidden_import(tmp_path: Path) -> None:
    """A detector that imported an I/O library would break a contract (the check can fail)."""
    pkg = tmp_path / "detectors"
    shutil.copytree(ROOT / "detectors", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    (pkg / "leak.py").write_text("from __future__ import annotations\n\nimport paho.mqtt.client\n")
    for name in ("tools", "streams", "console", "ingest", "alerts", "wearwatch"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
    out = subprocess.run([exe, "--no-logo", "--no-cache", "pyproject.toml"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300, env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 1, out.stdout[-3000:]
    assert "detectors.leak -> paho (l.3)" in out.stdout
