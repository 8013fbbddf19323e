"""Files the tools write: replaced whole or not at all.

A tool's output (alerts JSON lines, a FHIR Bundle, the AsyncAPI document) is
written into a temporary file in the same folder and renamed over the target
(``os.replace``, atomic on one file system) only once it is complete: a run that
fails midway leaves an existing file as it was, and never a truncated one.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from wearwatch.errors import WearwatchError

__all__ = ["write_atomically"]


def write_atomically(path: Path, produce: Callable[[IO[bytes]], object], *, private: bool = True) -> None:
    """Let ``produce`` write into a temporary file beside ``path``, then rename it over ``path``.

    On any failure the temporary file is removed and ``path`` is left as it was
    (an existing file keeps its contents; none is created). The folder must exist
    (:class:`~wearwatch.errors.WearwatchError` otherwise). The file is created
    readable by its owner only (outputs may hold patient identifiers); with ``private``
    False, with the usual permissions (0666 less the umask).
    """
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise WearwatchError(f"--out {path}: folder {folder} does not exist")
    if path.is_dir():
        raise WearwatchError(f"--out {path}: is a folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=folder)
    except OSError as exc:
        raise WearwatchError(f"--out {path}: cannot write in {folder}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            produce(fh)
            fh.flush()
            os.fsync(fh.fileno())
        if not private:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
