"""The import layers of setup.cfg's [importlinter] contracts hold, and every module is in a layer.

`make lint` runs `lint-imports` too; this test keeps the contract enforced by `make test` / CI and
makes a new top-level module that nobody placed in a layer fail loudly.
"""

from __future__ import annotations

import configparser
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def layered_modules() -> set[str]:
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    layers = config["importlinter:contract:layers"]["layers"]
    return {name.strip() for line in layers.splitlines() for name in line.split("|") if name.strip()}


def test_every_top_level_module_has_a_layer():
    package = REPO / "retrofit"
    modules = {f"retrofit.{path.stem}" for path in package.glob("*.py") if path.stem != "__init__"}
    modules |= {f"retrofit.{path.parent.name}" for path in package.glob("*/__init__.py")}
    missing = sorted(modules - layered_modules())
    assert not missing, f"add these modules to a layer in setup.cfg [importlinter:contract:layers]: {missing}"


def test_import_contracts_are_kept():
    linter = Path(sys.executable).with_name("lint-imports")
    if not linter.exists():
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    result = subprocess.run([str(linter), "--config", str(REPO / "setup.cfg")], cwd=REPO,
                            capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert re.search(r"Contracts: \d+ kept, 0 broken", result.stdout)
