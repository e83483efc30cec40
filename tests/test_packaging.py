"""What a plain `pip install .` ships: every package of the source tree and the configs. The
editable install the README uses reads the tree itself, so only this test sees a package left
out of pyproject's list (mgrl and fdrl were, and `import mmsa_iidaf` failed from a wheel)."""
from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_lists_every_package_of_the_tree():
    tomllib = pytest.importorskip("tomllib")
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    tree = {".".join(init.parent.relative_to(ROOT).parts)
            for init in (ROOT / "mmsa_iidaf").rglob("__init__.py")}
    assert tree - listed == set(), "packages missing from pyproject.toml's list"
    assert listed - tree == {"mmsa_iidaf.configs"}


@pytest.mark.filterwarnings("ignore::Warning")  # setuptools' own deprecations of the table
def test_the_wheel_holds_every_module_and_the_configs(tmp_path, monkeypatch):
    build_meta = pytest.importorskip("setuptools.build_meta")
    source = tmp_path / "source"  # a copy: the build writes build/ and egg-info beside it
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for folder in ("mmsa_iidaf", "configs"):
        shutil.copytree(ROOT / folder, source / folder,
                        ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.chdir(source)
    wheel = build_meta.build_wheel(str(tmp_path))
    names = set(zipfile.ZipFile(tmp_path / wheel).namelist())
    sources = {str(path.relative_to(ROOT)) for path in (ROOT / "mmsa_iidaf").rglob("*.py")}
    assert sources - names == set()
    configs = {f"mmsa_iidaf/configs/{path.name}" for path in (ROOT / "configs").glob("*.json")}
    assert configs and configs <= names

