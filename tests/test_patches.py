"""patches/: one upstream diff per runtime fix, applying exactly to MMSA 2.2.1's sources."""
from __future__ import annotations

import importlib.util
import py_compile
import shutil
import subprocess
from pathlib import Path

import pytest

from mmsa_iidaf import compat

PATCH_DIR = Path(__file__).resolve().parents[1] / "patches"
# The installed package's folder, found without importing it.
MMSA_DIR = Path(importlib.util.find_spec("MMSA").origin).parent

# Diffs whose context is a line an earlier diff changed (B10's next line is B2's): "alone" means
# on top of those.
BUILDS_ON = {"B10": ["B2"]}

needs_patch = pytest.mark.skipif(shutil.which("patch") is None,
                                 reason="the `patch` program is not installed")


def patch_files() -> list[Path]:
    return sorted(PATCH_DIR.glob("*.diff"))


def patch_for(defect: str) -> Path:
    matches = [p for p in patch_files() if p.name.startswith(f"{defect}-")]
    assert len(matches) == 1, f"expected one patches/{defect}-*.diff, found {matches}"
    return matches[0]


def copy_mmsa_sources(destination: Path) -> Path:
    """The installed MMSA's .py and .json files under destination/MMSA (what the diffs touch)."""
    for source in MMSA_DIR.rglob("*"):
        if "__pycache__" in source.parts or source.suffix not in (".py", ".json"):
            continue
        target = destination / "MMSA" / source.relative_to(MMSA_DIR)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return destination


def apply(patch: Path, root: Path) -> list[str]:
    """Apply one patch in root; return patch's messages other than 'patching file ...'."""
    result = subprocess.run(["patch", "-p1", "--forward", "--batch", "-i", str(patch)],
                            cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, f"{patch.name} failed:\n{result.stdout}{result.stderr}"
    return [line for line in result.stdout.splitlines() if not line.startswith("patching file ")]


def test_every_fix_has_one_patch_and_every_patch_a_fix():
    for defect in compat.FIXES:
        patch_for(defect)
    orphans = [p.name for p in patch_files() if p.name.split("-")[0] not in compat.FIXES]
    assert orphans == [], f"patches without a compat Fix: {orphans}"


def test_patches_are_upstream_ready():
    for patch in patch_files():
        text = patch.read_text()
        assert "mmsa_iidaf" not in text, f"{patch.name} refers to the plugin"
        assert "--- a/MMSA/" in text and "+++ b/MMSA/" in text, f"{patch.name}: not -p1 paths"


@needs_patch
def test_patches_apply_exactly_in_sequence_and_compile(tmp_path):
    root = copy_mmsa_sources(tmp_path)
    for defect in compat.FIXES:
        messages = apply(patch_for(defect), root)
        # Each diff was made against the sources with the ones before it applied: no offsets.
        assert messages == [], f"{patch_for(defect).name} did not apply exactly: {messages}"
    assert not list(root.rglob("*.rej")) and not list(root.rglob("*.orig"))
    for source in (root / "MMSA").rglob("*.py"):
        py_compile.compile(str(source), cfile=str(tmp_path / "compiled.pyc"), doraise=True)


@needs_patch
@pytest.mark.parametrize("defect", list(compat.FIXES))
def test_each_patch_also_applies_alone(tmp_path, defect):
    root = copy_mmsa_sources(tmp_path)
    for earlier in BUILDS_ON.get(defect, []):
        apply(patch_for(earlier), root)
    messages = apply(patch_for(defect), root)
    # Alone, a later diff may land some lines away from where it was made; never fuzzily.
    assert all(m.startswith("Hunk #") and "offset" in m and "fuzz" not in m for m in messages), \
        messages
