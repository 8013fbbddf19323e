"""Loading a script that is not part of an installed package (a bench, a fixture maker) as a module."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

__all__ = ["load_script"]


def load_script(path: Path, name: str) -> ModuleType:
    """Execute the file at ``path`` as the module ``name`` and return it.

    The module is registered in ``sys.modules`` before it runs: dataclasses and pickling look their
    module up while the file executes.
    """
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod
