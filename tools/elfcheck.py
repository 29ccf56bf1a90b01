"""Checks that libraindrops.so needs nothing from the system it is loaded into.

The wheels claim the lowest manylinux and musllinux policies, which is only
true of a library that has no DT_NEEDED entry (no libc, no libpython) and no
undefined dynamic symbol: such a library runs wherever its CPU architecture
and a Linux kernel do, whatever the C library and the Python version. This is
a small reader of 64-bit little-endian ELF files, with no dependencies, used
by the build hook (hatch_build.py) before it tags a wheel, by `make dist` and
by the tests.

    python tools/elfcheck.py [--arch ARCH] FILE_OR_WHEEL...

A wheel is checked for the architecture its platform tag names, a library
for this machine's unless --arch says otherwise.
"""

from __future__ import annotations

import argparse
import platform
import struct
import sys
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

LIBRARY = "libraindrops.so"
LIBRARY_IN_WHEEL = f"raindrops/{LIBRARY}"


@dataclass(frozen=True)
class Target:
    machine: int
    """e_machine of the ELF header."""
    page_size_max: int
    """Largest page size of a Linux kernel for the architecture: PT_LOAD segments must be aligned
    to it."""
    platform_tag: str
    """The wheel's compressed platform tag: the lowest manylinux and musllinux policies of the
    architecture."""


TARGETS = {
    "x86_64": Target(62, 0x1000, "manylinux_2_5_x86_64.manylinux1_x86_64.musllinux_1_1_x86_64"),
    "aarch64": Target(
        183, 0x10000, "manylinux_2_17_aarch64.manylinux2014_aarch64.musllinux_1_1_aarch64"
    ),
}
ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}
MACHINE_NAMES = {target.machine: arch for arch, target in TARGETS.items()} | {
    3: "i386",
    40: "arm",
    243: "riscv64",
}

ET_DYN = 3
PT_LOAD = 1
SHT_DYNAMIC = 6
SHT_DYNSYM = 11
DT_NULL = 0
DT_NEEDED = 1
SHN_UNDEF = 0


class ElfError(Exception):
    """The file is not a well-formed ELF shared object, or not one that may go in the wheel."""


@dataclass(frozen=True)
class ElfInfo:
    machine: int
    file_type: int
    needed: tuple[str, ...]
    undefined: tuple[str, ...]
    load_alignments: tuple[int, ...]

    @property
    def arch(self) -> str:
        return MACHINE_NAMES.get(self.machine, f"e_machine {self.machine}")


def target_arch(name: str) -> str:
    """The architecture of TARGETS that `name` means; ValueError naming the supported ones
    otherwise."""
    arch = ALIASES.get(name, name)
    if arch not in TARGETS:
        supported = ", ".join(TARGETS)
        raise ValueError(
            f"unsupported target architecture {name!r}: raindrops builds wheels for {supported}"
        )
    return arch


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def unpack(self, layout: str, offset: int, what: str) -> tuple[int, ...]:
        size = struct.calcsize(layout)
        if offset < 0 or offset + size > len(self.data):
            raise ElfError(
                f"truncated: {what} at byte {offset} ends past the end of the file "
                f"({len(self.data)} bytes)"
            )
        return struct.unpack_from(layout, self.data, offset)

    def string(self, table_offset: int, table_size: int, index: int) -> str:
        if index >= table_size or table_offset + table_size > len(self.data):
            raise ElfError(f"string index {index} is outside its table")
        end = self.data.find(b"\0", table_offset + index, table_offset + table_size)
        if end < 0:
            raise ElfError("unterminated string in a string table")
        return self.data[table_offset + index : end].decode("utf-8", "replace")


def read_elf(data: bytes) -> ElfInfo:
    """Reads the header, the program headers, the dynamic section and the dynamic symbols."""
    if len(data) < 4 or data[:4] != b"\x7fELF":
        raise ElfError("not an ELF file (no \\x7fELF magic)")
    reader = _Reader(data)
    elf_class, encoding = reader.unpack("<BB", 4, "e_ident")
    if elf_class != 2 or encoding != 1:
        raise ElfError(
            f"not a 64-bit little-endian ELF file (EI_CLASS {elf_class}, EI_DATA {encoding})"
        )
    (file_type, machine, _, _, phoff, shoff, _, _, phentsize, phnum, shentsize, shnum, _) = (
        reader.unpack("<HHIQQQIHHHHHH", 16, "ELF header")
    )
    loads = []
    for index in range(phnum):
        p_type, _, _, _, _, _, _, p_align = reader.unpack(
            "<IIQQQQQQ", phoff + index * phentsize, "program header"
        )
        if p_type == PT_LOAD:
            loads.append(p_align)
    if shnum == 0:
        raise ElfError("no section headers: cannot find the dynamic section")
    sections = [
        reader.unpack("<IIQQQQIIQQ", shoff + index * shentsize, "section header")
        for index in range(shnum)
    ]
    needed: list[str] = []
    undefined: list[str] = []
    for _, sh_type, _, _, offset, size, link, _, _, entsize in sections:
        if sh_type not in (SHT_DYNAMIC, SHT_DYNSYM):
            continue
        if link >= shnum:
            raise ElfError(f"section links to string table {link}, but there are {shnum} sections")
        strings_offset, strings_size = sections[link][4], sections[link][5]
        if sh_type == SHT_DYNAMIC:
            for entry in range(size // 16):
                tag, value = reader.unpack("<qQ", offset + entry * 16, "dynamic entry")
                if tag == DT_NULL:
                    break
                if tag == DT_NEEDED:
                    needed.append(reader.string(strings_offset, strings_size, value))
        else:
            for entry in range(1, size // (entsize or 24)):  # entry 0 is the reserved null symbol
                name, _, _, shndx, _, _ = reader.unpack(
                    "<IBBHQQ", offset + entry * 24, "dynamic symbol"
                )
                if shndx == SHN_UNDEF:
                    undefined.append(reader.string(strings_offset, strings_size, name))
    return ElfInfo(machine, file_type, tuple(needed), tuple(undefined), tuple(loads))


def _listing(names: Sequence[str], shown: int = 8) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def problems(info: ElfInfo, arch: str) -> list[str]:
    """Why a library with `info` may not go in a wheel for `arch`; empty when it may."""
    target = TARGETS[target_arch(arch)]
    found = []
    if info.machine != target.machine:
        found.append(f"built for {info.arch}, not {arch}")
    if info.file_type != ET_DYN:
        found.append(f"not a shared object (e_type {info.file_type})")
    if info.needed:
        found.append(f"needs shared libraries (DT_NEEDED): {_listing(info.needed)}")
    if info.undefined:
        found.append(f"has undefined dynamic symbols: {_listing(sorted(info.undefined))}")
    small = sorted({align for align in info.load_alignments if align < target.page_size_max})
    if small:
        found.append(
            f"PT_LOAD segments aligned to {small}, "
            f"below the {target.page_size_max}-byte pages of {arch} kernels"
        )
    if not info.load_alignments:
        found.append("no PT_LOAD segment")
    return found


def check_library(data: bytes, arch: str, where: str) -> ElfInfo:
    """Raises ElfError saying what is wrong with the library read from `where`."""
    try:
        info = read_elf(data)
    except ElfError as error:
        raise ElfError(f"{where}: {error}") from None
    found = problems(info, arch)
    if found:
        raise ElfError(
            f"{where}: cannot go in a py3-none-{TARGETS[target_arch(arch)].platform_tag} wheel: "
            + "; ".join(found)
        )
    return info


def wheel_arch(wheel: Path) -> str:
    """The architecture a wheel's platform tag names
    (raindrops_stats-0.1.0-py3-none-PLATFORM.whl)."""
    platform = wheel.name.removesuffix(".whl").rsplit("-", 1)[-1]
    for arch, target in TARGETS.items():
        if platform == target.platform_tag:
            return arch
    raise ElfError(
        f"{wheel.name}: platform tag {platform!r} is none of: "
        f"{', '.join(t.platform_tag for t in TARGETS.values())}"
    )


def check_path(path: Path, arch: str | None) -> str:
    """Checks a library or the library inside a wheel; returns a one-line report."""
    if path.suffix == ".whl":
        arch = arch or wheel_arch(path)
        try:
            with zipfile.ZipFile(path) as archive:
                data = archive.read(LIBRARY_IN_WHEEL)
        except (KeyError, zipfile.BadZipFile, OSError) as error:
            raise ElfError(f"{path}: no readable {LIBRARY_IN_WHEEL}: {error}") from None
        where = f"{path}!{LIBRARY_IN_WHEEL}"
    else:
        try:
            data = path.read_bytes()
        except OSError as error:
            raise ElfError(f"{path}: {error.strerror}") from None
        where = str(path)
    arch = target_arch(arch or platform.machine())
    check_library(data, arch, where)
    return f"{where}: ok: {arch} shared object, no DT_NEEDED, no undefined dynamic symbols"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Check libraindrops.so (or the one in a wheel) needs nothing from the system."
    )
    parser.add_argument(
        "--arch",
        help=(
            f"expected architecture ({', '.join(TARGETS)}); "
            "default: a wheel's tag, else this machine's"
        ),
    )
    parser.add_argument("paths", nargs="+", type=Path, metavar="FILE_OR_WHEEL")
    options = parser.parse_args(argv)
    failed = False
    for path in options.paths:
        try:
            print(check_path(path, options.arch))
        except (ElfError, ValueError) as error:
            print(f"elfcheck: {error}", file=sys.stderr)
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
