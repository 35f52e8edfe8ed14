"""The package as users install it: a wheel with its configs, and imports from any folder."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile

import pytest
from conftest import REPO


@pytest.mark.skipif(importlib.util.find_spec("setuptools") is None, reason="needs setuptools to build the wheel")
def test_wheel_holds_the_package_and_its_configs(tmp_path):
    """`pip install .` installs what `pip wheel .` builds: every module and config, no tests."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    (wheel,) = tmp_path.glob("rcca-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {
        path.relative_to(REPO).as_posix() for path in (REPO / "rcca").rglob("*") if path.suffix in (".py", ".yaml")
    }
    assert sources and sources <= names, sorted(sources - names)
    assert "rcca/configs/experiment/quickstart.yaml" in names
    assert not any(name.startswith(("tests/", "scripts/")) for name in names)


def test_config_composes_from_any_folder(tmp_path):
    """The configs are package data: composing needs no checkout as the working folder."""
    code = "from rcca.config import compose_config; print(compose_config(['module=nl']).module.positions)"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "['conv4_5']"
