"""Counters shared between real processes: fork, unrelated processes, races, hostile files."""

from __future__ import annotations

import os
import stat
import struct
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

import raindrops
from raindrops import Raindrops
from testsupport import processes

SHM_DIR = Path("/dev/shm")
MAGIC = 0x504F_5244_4E49_4152  # "RAINDROP", from zig/shm.zig
HEADER = struct.Struct("<QIIQQiI")  # magic, layout version, stride, capacity, size, pid, reserved


def fork_all(workers: int, work: Callable[[int], None]) -> None:
    """Runs work(k) in `workers` forked children and fails unless every one exits 0."""
    pids = []
    for worker in range(workers):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                work(worker)
            except BaseException:
                code = 1
            os._exit(code)
        pids.append(pid)
    statuses = [os.waitpid(pid, 0)[1] for pid in pids]
    assert all(os.waitstatus_to_exitcode(status) == 0 for status in statuses), statuses


def run_python(code: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    """Runs code in a fresh, unrelated interpreter."""
    return processes.run(
        [sys.executable, "-c", textwrap.dedent(code)], timeout=timeout_s, text=True
    )


def test_eight_processes_250k_increments_sum_exactly() -> None:
    with Raindrops(2) as rd:

        def work(_: int) -> None:
            for _ in range(250_000):
                rd.incr(0)

        fork_all(8, work)
        assert rd[0] == 2_000_000
        assert rd[1] == 0


def test_incr_and_decr_from_parent_and_child_sum_exactly() -> None:
    with Raindrops(1) as rd:
        rd[0] = 1_000_000
        pid = os.fork()
        if pid == 0:
            for _ in range(100_000):
                rd.incr(0, 3)
                rd.decr(0)
            os._exit(0)
        for _ in range(100_000):
            rd.decr(0, 2)
            rd.incr(0)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
        assert rd[0] == 1_000_000 + 100_000 * 2 - 100_000


def test_struct_shared_across_fork() -> None:
    Stats = raindrops.Struct("Stats", "calling writing")
    with Stats() as stats:

        def work(worker: int) -> None:
            for _ in range(50_000):
                stats.incr_calling()
                stats.incr_writing(worker + 1)

        fork_all(4, work)
        assert stats.to_dict() == {"calling": 200_000, "writing": 50_000 * (1 + 2 + 3 + 4)}


def test_close_in_child_leaves_the_parent_working() -> None:
    with Raindrops(1) as rd:
        fork_all(1, lambda _: (rd.incr(0), rd.close()))
        assert rd.incr(0) == 2


def test_child_forked_after_growth_shares_the_new_counters() -> None:
    with Raindrops(2) as rd:
        rd.size = rd.capa * 4
        last = rd.size - 1
        fork_all(2, lambda _: [rd.incr(last) for _ in range(1000)])
        assert rd[last] == 2000


def test_child_forked_before_growth_sees_the_new_counters() -> None:
    with Raindrops(1) as rd:
        reader, writer = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(writer)
            os.read(reader, 1)
            rd.incr(rd.size - 1, 7)
            os._exit(0 if len(rd) == 500 else 1)
        os.close(reader)
        rd.size = 500
        os.write(writer, b"x")
        os.close(writer)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
        assert rd[499] == 7


def test_named_segment_is_mode_0600_and_shared_with_an_unrelated_process(
    shm_name: Callable[[], str],
) -> None:
    name = shm_name()
    with Raindrops(3, name=name) as rd:
        info = (SHM_DIR / name[1:]).stat()
        assert stat.S_IMODE(info.st_mode) == 0o600
        rd[2] = 40
        result = run_python(
            f"""
            from raindrops import Raindrops
            rd = Raindrops.open({name!r})
            for _ in range(100_000):
                rd.incr(2)
            print(rd.size, rd[2])
            """
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == ["3", "100040"]
        assert rd[2] == 100_040


def test_attaching_with_a_larger_size_grows_the_segment_for_everyone(
    shm_name: Callable[[], str],
) -> None:
    name = shm_name()
    with Raindrops(2, name=name) as small:
        small[1] = 5
        with Raindrops(300, name=name) as large:
            assert large.size == 300 and large[1] == 5
            large.incr(299)
        assert small.size == 300
        assert small[299] == 1
        with Raindrops(1, name=name) as attached:
            assert attached.size == 300, "attaching never shrinks a segment"


def test_four_processes_racing_to_create_share_one_segment(shm_name: Callable[[], str]) -> None:
    name = shm_name()
    code = f"""
        import os, sys
        from raindrops import Raindrops
        go = sys.stdin.read(1)
        rd = Raindrops(4, name={name!r})
        for _ in range(20_000):
            rd.incr(1)
        print(os.fstat(rd._segment.fd).st_ino)
        """
    command = [sys.executable, "-c", textwrap.dedent(code)]
    children = [
        processes.spawn(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    try:
        for child in children:
            child.stdin.write("x")  # type: ignore[union-attr]
        for child in children:
            child.stdin.close()  # type: ignore[union-attr]
        inodes = {child.stdout.read().strip() for child in children}  # type: ignore[union-attr]
        assert all(child.wait(timeout=60) == 0 for child in children)
    finally:
        for child in children:
            processes.stop(child)
    assert len(inodes) == 1
    with Raindrops.open(name) as rd:
        assert rd[1] == 80_000
        assert str(os.fstat(rd._segment.fd).st_ino) in inodes
    leftovers = [path.name for path in SHM_DIR.glob(".raindrops-*")]
    assert not [
        leftover
        for leftover in leftovers
        if leftover.split("-")[1] in {str(c.pid) for c in children}
    ]


def test_unlink_removes_the_name_but_mappings_live_on(shm_name: Callable[[], str]) -> None:
    name = shm_name()
    with Raindrops(1, name=name) as rd:
        rd.unlink()
        assert not (SHM_DIR / name[1:]).exists()
        assert rd.incr(0) == 1
        with pytest.raises(FileNotFoundError):
            Raindrops.open(name)
        with pytest.raises(FileNotFoundError):
            rd.unlink()


def header(
    *, magic: int = MAGIC, version: int = 1, stride: int = 64, capacity: int = 63, size: int = 1
) -> bytes:
    return HEADER.pack(magic, version, stride, capacity, size, 1, 0)


HOSTILE_SEGMENTS: dict[str, tuple[bytes, str]] = {
    "empty": (b"", "is not a raindrops segment"),
    "random bytes": (bytes(range(256)) * 16, "is not a raindrops segment"),
    "text": (b"hello world\n", "is not a raindrops segment"),
    "magic only": (struct.pack("<Q", MAGIC), "is truncated"),
    "header only": (header(), "is truncated"),
    "half a page": (header().ljust(2048, b"\0"), "is truncated"),
    "capacity beyond file": (header(capacity=1000).ljust(4096, b"\0"), "is truncated"),
    "other layout version": (header(version=2).ljust(4096, b"\0"), "of another layout version"),
    "bad stride": (header(stride=48).ljust(4096, b"\0"), "has a corrupt header"),
    "size beyond capacity": (header(size=64).ljust(4096, b"\0"), "has a corrupt header"),
    "size zero": (header(size=0).ljust(4096, b"\0"), "has a corrupt header"),
    "absurd capacity": (header(capacity=2**60).ljust(4096, b"\0"), "has a corrupt header"),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE_SEGMENTS))
def test_hostile_segment_gives_value_error_and_the_process_survives(
    kind: str, shm_name: Callable[[], str]
) -> None:
    content, message = HOSTILE_SEGMENTS[kind]
    name = shm_name()
    path = SHM_DIR / name[1:]
    path.write_bytes(content)
    path.chmod(0o600)
    result = run_python(
        f"""
        from raindrops import Raindrops
        for attach in (lambda: Raindrops.open({name!r}), lambda: Raindrops(1, name={name!r})):
            try:
                attach()
            except ValueError as error:
                print(error)
            else:
                raise SystemExit("attached to a hostile segment")
        print("survived")
        """
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "survived"
    assert all(name in line and message in line for line in lines[:2]), lines
    assert path.read_bytes() == content, "a hostile file is never modified"


def test_directory_and_symlink_are_refused(shm_name: Callable[[], str], tmp_path: Path) -> None:
    directory = shm_name()
    (SHM_DIR / directory[1:]).mkdir()
    try:
        with pytest.raises(OSError):
            Raindrops.open(directory)
    finally:
        (SHM_DIR / directory[1:]).rmdir()
    link = shm_name()
    target = tmp_path / "target"
    target.write_bytes(b"")
    (SHM_DIR / link[1:]).symlink_to(target)
    with pytest.raises(OSError):
        Raindrops.open(link)
