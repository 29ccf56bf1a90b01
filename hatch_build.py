"""Hatchling build hook: compiles libraindrops.so with the pinned Zig from PyPI.

A wheel gets the library inside the `raindrops` package and the tag
py3-none-<lowest manylinux and musllinux policies of the architecture>: the
library links no libc and touches no CPython ABI, which tools/elfcheck.py
verifies before the wheel is tagged. RAINDROPS_TARGET picks the architecture
(x86_64 or aarch64; default: this machine's); Zig cross-compiles, so one
machine builds both wheels.

An editable install gets the library, built for this machine, copied next to
the sources, where `raindrops._native` looks for it.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

LIBRARY = "libraindrops.so"
TARGET_VARIABLE = "RAINDROPS_TARGET"


def load_elfcheck(root: Path) -> ModuleType:
    """tools/elfcheck.py, which is no package: loaded by path (the sdist ships it)."""
    spec = importlib.util.spec_from_file_location(
        "raindrops_elfcheck", root / "tools" / "elfcheck.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


class CustomBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        root = Path(self.root)
        elfcheck = load_elfcheck(root)
        host = platform.machine()
        if sys.platform != "linux" and (
            version == "editable" or not os.environ.get(TARGET_VARIABLE)
        ):
            self.app.abort(  # exits
                f"raindrops: runs on Linux only, not {sys.platform}; set {TARGET_VARIABLE}="
                "x86_64 or aarch64 to build a Linux wheel here"
            )
            return
        requested = os.environ.get(TARGET_VARIABLE) or host
        try:
            arch = elfcheck.target_arch(requested)
        except ValueError as error:
            self.app.abort(f"raindrops: {TARGET_VARIABLE}={requested}: {error}")  # exits
            return
        if version == "editable" and arch != elfcheck.ALIASES.get(host, host):
            self.app.abort(
                f"raindrops: an editable install runs on this {host} machine, "
                f"not {TARGET_VARIABLE}={requested}"
            )

        zig_version = importlib.metadata.version("ziglang")
        self.app.display_info(
            f"raindrops: compiling {LIBRARY} for {arch} with Zig {zig_version} "
            "(the first build on a machine takes about 2 minutes; later builds take seconds)"
        )
        self._staging = Path(tempfile.mkdtemp(prefix="raindrops-build-"))
        command = [
            sys.executable,
            "-m",
            "ziglang",
            "build",
            "-Doptimize=ReleaseFast",
            "--prefix",
            str(self._staging),
        ]
        if version != "editable":
            command[4:4] = [f"-Dtarget={arch}-linux", "-Dcpu=baseline"]
        subprocess.check_call(command, cwd=root)
        built = self._staging / "lib" / LIBRARY
        try:
            elfcheck.check_library(built.read_bytes(), arch, f"the freshly built {LIBRARY}")
        except elfcheck.ElfError as error:
            self.app.abort(f"raindrops: {error}")

        build_data["pure_python"] = False
        if version == "editable":
            # A new file renamed into place: processes that loaded the old one keep it intact.
            staged = root / "raindrops" / f".{LIBRARY}.tmp"
            shutil.copy2(built, staged)
            os.replace(staged, root / "raindrops" / LIBRARY)
        else:
            build_data["tag"] = f"py3-none-{elfcheck.TARGETS[arch].platform_tag}"
            build_data["force_include"][str(built)] = f"raindrops/{LIBRARY}"

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        staging = getattr(self, "_staging", None)
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
