"""The wheel carries the native library and the package finds it from anywhere."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_ships_the_library_and_imports_from_any_directory(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(ROOT)],
        check=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("raindrops_stats-*.whl")
    assert "linux_x86_64" in wheel.name or "linux_aarch64" in wheel.name, "a native wheel needs a platform tag"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        archive.extractall(tmp_path / "site")
    assert {"raindrops/libraindrops.so", "raindrops/py.typed", "raindrops/_native.py"} <= names
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run(
        [sys.executable, "-s", "-c", "import raindrops; r = raindrops.Raindrops(1); print(raindrops.__file__, r.incr(0))"],
        cwd=elsewhere,
        env={"PYTHONPATH": str(tmp_path / "site")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    location, value = result.stdout.split()
    assert location.startswith(str(tmp_path / "site")) and value == "1"


def test_library_is_built_for_a_baseline_cpu() -> None:
    """The wheel must run on CPUs older than the builder's: no AVX-512 or AVX2-only code."""
    library = ROOT / "raindrops" / "libraindrops.so"
    disassembly = subprocess.run(["objdump", "-d", str(library)], capture_output=True, text=True, check=True).stdout
    assert "zmm" not in disassembly and "ymm" not in disassembly
