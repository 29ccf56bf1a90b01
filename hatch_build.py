"""Hatchling build hook: compiles libraindrops.so with the pinned Zig from PyPI.

A wheel gets the library inside the `raindrops` package; an editable install
gets it copied next to the sources, where `raindrops._native` looks for it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

LIBRARY = "libraindrops.so"


class CustomBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        root = Path(self.root)
        staging = Path(tempfile.mkdtemp(prefix="raindrops-build-"))
        subprocess.check_call(
            [sys.executable, "-m", "ziglang", "build", "-Doptimize=ReleaseFast", "--prefix", str(staging)],
            cwd=root,
        )
        built = staging / "lib" / LIBRARY
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        if version == "editable":
            # A new file renamed into place: processes that loaded the old one keep it intact.
            staged = root / "raindrops" / f".{LIBRARY}.tmp"
            shutil.copy2(built, staged)
            os.replace(staged, root / "raindrops" / LIBRARY)
        else:
            build_data["force_include"][str(built)] = f"raindrops/{LIBRARY}"
