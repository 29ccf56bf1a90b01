"""Wheels that install anywhere they can run.

The wheel is py3-none-<lowest manylinux and musllinux policies>: the library
links no libc and no CPython ABI, which tools/elfcheck.py checks (and must
refuse anything else). The wheel for this machine (x86_64 here) is installed
into a fresh venv of every CPython minor version of this machine and used from
there; the aarch64 wheel is cross-built and checked.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

from testsupport import processes, programs

ROOT = Path(__file__).resolve().parent.parent
WHEEL_TAGS = {
    "x86_64": "py3-none-manylinux_2_5_x86_64.manylinux1_x86_64.musllinux_1_1_x86_64",
    "aarch64": "py3-none-manylinux_2_17_aarch64.manylinux2014_aarch64.musllinux_1_1_aarch64",
}
HOST = platform.machine()


def _load_elfcheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "raindrops_elfcheck", ROOT / "tools" / "elfcheck.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


elfcheck = _load_elfcheck()


@dataclass(frozen=True)
class Built:
    wheel: Path
    output: str
    """What `pip wheel -v` printed."""


def _build_wheel(out: Path, arch: str | None) -> Built:
    """`pip wheel` for `arch`, or with no RAINDROPS_TARGET (this machine's architecture)."""
    env = {name: value for name, value in os.environ.items() if name != "RAINDROPS_TARGET"}
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation"]
    result = processes.run(
        [*pip_wheel, "--disable-pip-version-check", "-w", str(out), str(ROOT)],
        env=env if arch is None else {**env, "RAINDROPS_TARGET": arch},
        timeout=300,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = out.glob("raindrops_stats-*.whl")
    return Built(wheel, result.stdout + result.stderr)


@pytest.fixture(scope="module")
def host_wheel(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return _build_wheel(tmp_path_factory.mktemp("wheel-host"), None)


def test_host_wheel_is_tagged_for_any_python_and_libc(host_wheel: Built) -> None:
    assert host_wheel.wheel.name == f"raindrops_stats-0.1.0-{WHEEL_TAGS[HOST]}.whl"
    with zipfile.ZipFile(host_wheel.wheel) as archive:
        names = set(archive.namelist())
        wheel_file = archive.read("raindrops_stats-0.1.0.dist-info/WHEEL").decode()
    assert {"raindrops/libraindrops.so", "raindrops/py.typed", "raindrops/_native.py"} <= names
    assert "Root-Is-Purelib: false" in wheel_file
    assert sorted(
        line.removeprefix("Tag: ") for line in wheel_file.splitlines() if line.startswith("Tag: ")
    ) == sorted(
        f"py3-none-{platform_tag}" for platform_tag in WHEEL_TAGS[HOST].split("-")[-1].split(".")
    )
    # One line before the compile says what happens and how long it takes (shown by `pip -v`).
    announced = [
        line.strip() for line in host_wheel.output.splitlines() if "raindrops: compiling" in line
    ]
    assert announced == [
        f"raindrops: compiling libraindrops.so for {HOST} with Zig 0.17.0 "
        "(the first build on a machine takes about 2 minutes; later builds take seconds)"
    ]


def test_elfcheck_accepts_the_wheel(host_wheel: Built) -> None:
    command = [sys.executable, str(ROOT / "tools" / "elfcheck.py"), str(host_wheel.wheel)]
    result = processes.run(command, timeout=60, text=True)
    assert result.returncode == 0, result.stderr
    assert f"ok: {HOST} shared object, no DT_NEEDED, no undefined dynamic symbols" in result.stdout


def test_aarch64_wheel_cross_builds(tmp_path: Path) -> None:
    """Zig cross-compiles: this machine also builds the aarch64 wheel, libc-free and 64 KiB-page
    aligned."""
    built = _build_wheel(tmp_path, "aarch64")
    assert built.wheel.name == f"raindrops_stats-0.1.0-{WHEEL_TAGS['aarch64']}.whl"
    with zipfile.ZipFile(built.wheel) as archive:
        info = elfcheck.check_library(
            archive.read("raindrops/libraindrops.so"), "aarch64", "aarch64 wheel"
        )
    assert (info.arch, info.needed, info.undefined) == ("aarch64", (), ())
    assert min(info.load_alignments) >= 0x10000


def test_unknown_target_fails_the_build_naming_the_supported_ones(tmp_path: Path) -> None:
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    result = processes.run(
        [*pip_wheel, "--disable-pip-version-check", "-w", str(tmp_path), str(ROOT)],
        env={**os.environ, "RAINDROPS_TARGET": "sparc64"},
        timeout=300,
        text=True,
    )
    assert result.returncode != 0
    assert (
        "RAINDROPS_TARGET=sparc64: unsupported target architecture 'sparc64'"
        in result.stdout + result.stderr
    )
    assert "x86_64, aarch64" in result.stdout + result.stderr
    assert not list(tmp_path.glob("*.whl"))


# The ELF checker: it must refuse whatever the tags would be a lie for.


@pytest.fixture(scope="module")
def library(host_wheel: Built) -> bytes:
    with zipfile.ZipFile(host_wheel.wheel) as archive:
        return archive.read("raindrops/libraindrops.so")


def test_elfcheck_reads_the_library(library: bytes) -> None:
    info = elfcheck.read_elf(library)
    assert (info.arch, info.file_type, info.needed, info.undefined) == (HOST, 3, (), ())
    assert elfcheck.problems(info, HOST) == []


def test_elfcheck_refuses_a_program_that_needs_libc(tmp_path: Path) -> None:
    ls = tmp_path / "ls"
    shutil.copy(shutil.which("ls") or "/bin/ls", ls)
    with pytest.raises(
        elfcheck.ElfError,
        match=r"needs shared libraries \(DT_NEEDED\): .*libc\.so\.6.*undefined dynamic symbols",
    ):
        elfcheck.check_library(ls.read_bytes(), HOST, str(ls))
    result = processes.run(
        [sys.executable, str(ROOT / "tools" / "elfcheck.py"), str(ls)], timeout=60, text=True
    )
    assert result.returncode == 1 and "DT_NEEDED" in result.stderr and not result.stdout


def test_elfcheck_refuses_another_architecture(library: bytes) -> None:
    other = "aarch64" if HOST == "x86_64" else "x86_64"
    with pytest.raises(elfcheck.ElfError, match=f"built for {HOST}, not {other}"):
        elfcheck.check_library(library, other, "lib")


@pytest.mark.parametrize("keep", [0, 3, 4, 20, 64, 100, 4096, -64, -1])
def test_elfcheck_refuses_a_truncated_file(library: bytes, keep: int) -> None:
    with pytest.raises(
        elfcheck.ElfError, match="truncated|not an ELF file|outside its table|unterminated"
    ):
        elfcheck.check_library(library[:keep], HOST, "lib")


def test_elfcheck_refuses_other_elf_kinds(library: bytes) -> None:
    with pytest.raises(elfcheck.ElfError, match="not a 64-bit little-endian ELF file"):
        elfcheck.read_elf(library[:4] + b"\x01" + library[5:])  # ELFCLASS32
    with pytest.raises(elfcheck.ElfError, match="not a 64-bit little-endian ELF file"):
        elfcheck.read_elf(library[:5] + b"\x02" + library[6:])  # big-endian
    executable = library[:16] + (2).to_bytes(2, "little") + library[18:]  # e_type ET_EXEC
    with pytest.raises(elfcheck.ElfError, match=r"not a shared object \(e_type 2\)"):
        elfcheck.check_library(executable, HOST, "lib")
    with pytest.raises(elfcheck.ElfError, match="not an ELF file"):
        elfcheck.read_elf(b"#!/bin/sh\n" + library)


def test_elfcheck_refuses_small_page_alignment_and_unknown_targets(library: bytes) -> None:
    info = elfcheck.read_elf(library)
    small = elfcheck.ElfInfo(elfcheck.TARGETS["aarch64"].machine, 3, (), (), (0x1000,))
    assert elfcheck.problems(small, "aarch64") == [
        "PT_LOAD segments aligned to [4096], below the 65536-byte pages of aarch64 kernels"
    ]
    with pytest.raises(
        ValueError,
        match=(
            "unsupported target architecture 'riscv64': raindrops builds wheels for x86_64, aarch64"
        ),
    ):
        elfcheck.problems(info, "riscv64")
    assert elfcheck.target_arch("arm64") == "aarch64" and elfcheck.target_arch("amd64") == "x86_64"


def test_elfcheck_refuses_a_wheel_without_the_library_or_with_another_tag(
    tmp_path: Path, host_wheel: Built
) -> None:
    empty = tmp_path / host_wheel.wheel.name
    with zipfile.ZipFile(empty, "w") as archive:
        archive.writestr("raindrops/__init__.py", "")
    with pytest.raises(elfcheck.ElfError, match="no readable raindrops/libraindrops.so"):
        elfcheck.check_path(empty, None)
    linux = tmp_path / "raindrops_stats-0.1.0-cp311-cp311-linux_x86_64.whl"
    shutil.copy(host_wheel.wheel, linux)
    with pytest.raises(elfcheck.ElfError, match="platform tag 'linux_x86_64' is none of"):
        elfcheck.check_path(linux, None)


# The wheel in a fresh venv of every CPython minor version on this machine.


def _pythons() -> dict[str, str]:
    """One interpreter per CPython minor version >= 3.10 found on PATH or in ~/.pyenv, plus this
    one."""
    candidates = [sys.executable]
    candidates += [path for minor in range(10, 15) if (path := shutil.which(f"python3.{minor}"))]
    candidates += sorted(str(path) for path in Path.home().glob(".pyenv/versions/3.*/bin/python3"))
    probe = "import sys; print(sys.implementation.name, *sys.version_info[:2])"
    found: dict[str, str] = {}
    for candidate in candidates:
        try:
            result = processes.run([candidate, "-I", "-c", probe], timeout=30, text=True)
        except OSError:
            continue
        fields = result.stdout.split()
        if (
            result.returncode != 0 or len(fields) != 3 or fields[0] != "cpython"
        ):  # e.g. a pyenv shim of no active version
            continue
        version = (int(fields[1]), int(fields[2]))
        if version >= (3, 10):
            found.setdefault(f"{version[0]}.{version[1]}", candidate)
    return dict(sorted(found.items(), key=lambda item: tuple(map(int, item[0].split(".")))))


PYTHONS = _pythons()

SMOKE = """
import os, socket, sys, threading, urllib.request, wsgiref.simple_server
import raindrops, raindrops.linux

venv = os.path.realpath(sys.argv[1])
assert os.path.realpath(raindrops.__file__).startswith(venv + os.sep), raindrops.__file__

counter = raindrops.Raindrops(1)
pid = os.fork()
if pid == 0:
    for _ in range(1000):
        counter.incr(0)
    os._exit(0)
_, status = os.waitpid(pid, 0)
assert status == 0 and counter[0] == 1000, (status, counter[0])

listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(16)
address = "127.0.0.1:%d" % listener.getsockname()[1]
clients = [socket.create_connection(listener.getsockname()) for _ in range(2)]
stats = raindrops.linux.tcp_listener_stats([address])
assert stats[address].queued == 2, stats

def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]

class QuietHandler(wsgiref.simple_server.WSGIRequestHandler):
    def log_message(self, *arguments):
        pass

server = wsgiref.simple_server.make_server(
    "127.0.0.1", 0, raindrops.Middleware(app), handler_class=QuietHandler
)
threading.Thread(target=server.serve_forever, daemon=True).start()
base = "http://127.0.0.1:%d" % server.server_port
try:
    assert urllib.request.urlopen(base + "/", timeout=30).read() == b"hello"
    body = urllib.request.urlopen(base + "/_raindrops", timeout=30).read()
finally:
    server.shutdown()
    server.server_close()
assert b"calling: 0" in body and address.encode() in body, body
print("ok", sys.version_info[0], sys.version_info[1], raindrops.__file__)
"""


def test_a_cpython_is_found() -> None:
    assert PYTHONS, "no CPython >= 3.10 found on PATH or in ~/.pyenv"


def test_the_wheel_is_tried_on_two_cpython_minor_versions() -> None:
    """One wheel claims every Python 3 (py3-none): at least two minor versions must prove it. A
    machine with one skips with a line saying how to get another; CI requires two."""
    if len(PYTHONS) >= 2:
        return
    reason = (
        f"the wheel is tried on CPython {', '.join(PYTHONS)} only: no other minor version on PATH "
        "or in ~/.pyenv (for example `pyenv install 3.12`)"
    )
    assert not programs.in_ci(), f"{reason}; CI=true requires two"
    pytest.skip(reason)


@pytest.mark.parametrize("version", list(PYTHONS))
def test_wheel_installs_and_works_in_a_fresh_venv(
    version: str, host_wheel: Built, tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    made = processes.run(
        [PYTHONS[version], "-m", "venv", "--without-pip", str(venv)], timeout=120, text=True
    )
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    pip_install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet"]
    install = processes.run(
        [
            *pip_install,
            "--disable-pip-version-check",
            "--no-index",
            "--no-deps",
            str(host_wheel.wheel),
        ],
        timeout=300,
        text=True,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "smoke.py").write_text(SMOKE)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}
    result = processes.run(
        [str(python), "-I", "smoke.py", str(venv)], cwd=elsewhere, env=env, timeout=120, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith(f"ok {version.replace('.', ' ')} ")
    cli = processes.run(
        [str(venv / "bin" / "raindrops"), "--version"],
        cwd=elsewhere,
        env=env,
        timeout=60,
        text=True,
    )
    assert (cli.returncode, cli.stdout) == (0, "raindrops 0.1.0\n"), cli.stderr


# `raindrops --version`.


def test_version_option_prints_the_distribution_version(tmp_path: Path) -> None:
    result = processes.run(
        [sys.executable, "-m", "raindrops", "--version"], cwd=tmp_path, timeout=60, text=True
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "raindrops 0.1.0\n", "")


def test_version_falls_back_to_the_package_without_metadata(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.metadata

    import raindrops
    from raindrops import cli

    def missing(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    assert cli._version() == raindrops.__version__ == "0.1.0"


def test_library_is_built_for_a_baseline_cpu() -> None:
    """The wheel must run on CPUs older than the builder's: no AVX-512 or AVX2-only code."""
    library = ROOT / "raindrops" / "libraindrops.so"
    result = processes.run([programs.require("objdump"), "-d", str(library)], timeout=60, text=True)
    assert result.returncode == 0, result.stderr
    disassembly = result.stdout
    assert "zmm" not in disassembly and "ymm" not in disassembly
