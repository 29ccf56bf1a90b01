"""The README is a contract a new user copies from: its layout names every file in the
repository and nothing that is gone, and its Python examples import what they name."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from testsupport import processes

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
FILE_NAME = re.compile(r"[\w.-]+\.(?:py|zig|js|css|yml|json|typed)\b|\.ci/run|\.gitignore")


def _layout() -> str:
    section = README.split("## Layout of the repository", 1)[1]
    return section.split("```", 2)[1]


def _tracked() -> list[str]:
    listed = processes.run(["git", "ls-files"], cwd=ROOT, timeout=60, text=True)
    if listed.returncode != 0:
        pytest.skip(f"not a git checkout: {listed.stderr.strip()}")
    return listed.stdout.split()


def test_the_layout_names_every_tracked_file() -> None:
    named = set(FILE_NAME.findall(_layout())) | set(_layout().split())
    unnamed = [
        path
        for path in _tracked()
        if Path(path).name not in named and path not in named and not path.startswith(".ci/")
    ]
    assert not unnamed, f"README's layout does not name: {unnamed}"


def test_the_layout_names_no_file_that_is_gone() -> None:
    names = {Path(path).name for path in _tracked()} | {".ci/run"}
    gone = sorted(set(FILE_NAME.findall(_layout())) - names)
    assert not gone, f"README's layout names files that do not exist: {gone}"


def _python_imports() -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", README, re.DOTALL)
    return [
        line.split("#", 1)[0].strip()
        for block in blocks
        for line in block.splitlines()
        if re.match(r"(from raindrops\S* import |import raindrops)", line)
    ]


@pytest.mark.parametrize("line", sorted(set(_python_imports())))
def test_every_import_in_the_readme_works(line: str) -> None:
    module, _, names = line.removeprefix("from ").partition(" import ")
    if line.startswith("import "):
        importlib.import_module(line.removeprefix("import ").split(" as ")[0])
        return
    imported = importlib.import_module(module)
    for name in names.strip("()").split(","):
        assert hasattr(imported, name.split(" as ")[0].strip()), (module, name)
