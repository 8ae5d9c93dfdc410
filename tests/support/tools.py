"""Where the real command-line tools are: helm is installed beside the venv's python by `make test`."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def helm_path() -> str | None:
    beside_python = Path(sys.executable).parent / "helm"
    return str(beside_python) if beside_python.exists() else shutil.which("helm")
