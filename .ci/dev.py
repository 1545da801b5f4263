"""Developer entry points that need nothing but Python 3.11+.

    python3 .ci/dev.py test   # ruff, mypy, then the test suite against a real PostgreSQL
    python3 .ci/dev.py demo   # the order-fulfilment demo through a real dramatiq worker

Both create ./.venv on first use and install the project into it. Without
DATABASE_URL, the tests use the local server on 127.0.0.1:5432 when it answers,
else an embedded PostgreSQL; the demo always falls back to the embedded one.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
PYTHON = VENV / "bin" / "python"


def ensure_environment() -> None:
    """Create the virtualenv and (re)install the project when pyproject.toml changed."""
    if not PYTHON.exists():
        venv.EnvBuilder(with_pip=True).create(VENV)
    stamp = VENV / ".zart-installed"
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest:
        return
    pip = [str(PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "-e", f"{ROOT}[dev,embedded]"], check=True)
    stamp.write_text(digest)


def main(argv: list[str]) -> int:
    command, rest = (argv[0], argv[1:]) if argv else ("", [])
    if command not in {"test", "demo"}:
        print(__doc__)
        return 2
    ensure_environment()
    if command == "test":
        for check in (["ruff", "check", "."], ["ruff", "format", "--check", "."], ["mypy"]):
            if code := subprocess.run([str(PYTHON), "-m", *check], cwd=ROOT).returncode:
                return code
        return subprocess.run([str(PYTHON), "-m", "pytest", *rest], cwd=ROOT).returncode
    return subprocess.run([str(PYTHON), "-m", "examples.demo", *rest], cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
