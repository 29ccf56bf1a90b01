"""Counters shared between real processes: fork, unrelated processes, races, hostile files."""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import raindrops
from raindrops import Raindrops
from testsupport import processes

SHM_DIR = Path("/dev/shm")
MAGIC = 0x504F_5244_4E49_4152  # "RAINDROP", from zig/shm.zig
HEADER = struct.Struct("<QIIQQiI")  # magic, layout version, stride, capacity, size, pid, reserved


@contextlib.contextmanager
def forked(workers: int, work: Callable[[int], None]) -> Iterator[None]:
    """Runs work(k) in `workers` forked children while the body runs, then waits for them and
    fails unless every one exits 0; a failing body kills them first."""
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
    try:
        yield
    except BaseException:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        raise
    finally:
        statuses = [os.waitpid(pid, 0)[1] for pid in pids]
    assert all(os.waitstatus_to_exitcode(status) == 0 for status in statuses), statuses


def fork_all(workers: int, work: Callable[[int], None]) -> None:
    """Runs work(k) in `workers` forked children and fails unless every one exits 0."""
    with forked(workers, work):
        pass


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
        with pytest.raises(ValueError, match="is not a raindrops segment"):
            Raindrops.open(directory)
    finally:
        (SHM_DIR / directory[1:]).rmdir()
    link = shm_name()
    target = tmp_path / "target"
    target.write_bytes(b"")
    (SHM_DIR / link[1:]).symlink_to(target)
    try:
        with pytest.raises(ValueError, match="is not a raindrops segment"):
            Raindrops.open(link)
    finally:
        (SHM_DIR / link[1:]).unlink()


def test_reads_never_see_half_of_a_store_from_another_process() -> None:
    """Each read is one atomic 8-byte load: while a child flips every bit of a counter, a reader
    sees the two values stored and never a mix of their halves."""
    low, high = 0x0123_4567_89AB_CDEF, 0xFEDC_BA98_7654_3210
    with Raindrops(2) as rd:
        rd[0] = low

        def flip(_: int) -> None:
            while rd[1] == 0:
                rd[0] = high
                rd[0] = low

        seen: set[int] = set()
        with forked(1, flip):
            try:
                deadline = time.monotonic() + 30
                reads = 0
                while (reads < 200_000 or len(seen) < 2) and time.monotonic() < deadline:
                    for _ in range(1000):
                        seen.add(rd[0])
                    reads += 1000
            finally:
                rd[1] = 1
        assert seen <= {low, high}, [hex(value) for value in seen - {low, high}]
        assert high in seen, "the reader never overlapped the writer"


def test_reads_of_a_counter_other_processes_increment_never_go_back() -> None:
    per_child = 100_000
    with Raindrops(1) as rd:

        def work(_: int) -> None:
            for _ in range(per_child):
                rd.incr(0)

        last = 0
        with forked(2, work):
            deadline = time.monotonic() + 60
            while last < 2 * per_child and time.monotonic() < deadline:
                value = rd[0]
                assert value >= last
                last = value
        assert rd[0] == 2 * per_child


def test_reads_follow_a_growth_made_by_an_unrelated_process(shm_name: Callable[[], str]) -> None:
    """A reader's first view maps the same file as the grown one, so it is never stale, and an
    index past the size it knows maps the new view before reading."""
    name = shm_name()
    with Raindrops(2, name=name) as rd:
        assert rd[1] == 0
        grown = rd.capa * 4
        result = run_python(
            f"""
            from raindrops import Raindrops
            with Raindrops.open({name!r}) as other:
                other.size = {grown}
                other[1] = 5
                other[{grown} - 1] = 7
            """
        )
        assert result.returncode == 0, result.stderr
        assert rd[1] == 5
        assert rd[grown - 1] == 7
        assert len(rd) == grown and rd[-1] == 7 and rd[-grown] == 0
        assert rd.incr(grown - 1) == 8 and rd[grown - 1] == 8


def test_update_slots_are_per_process_across_fork() -> None:
    """A child updates through the slots it inherited; freeing one and binding it again in the
    child never touches the parent's counters, whose slot keeps working."""
    with Raindrops(1) as rd:
        assert rd.incr(0) == 1

        def work(_: int) -> None:
            for _ in range(1000):
                rd.incr(0)
            rd._finalizer()  # what the child's last reference going would do: frees the slot
            with Raindrops(1) as other:
                for _ in range(5000):
                    other.incr(0)
                if other[0] != 5000 or not other._slots:
                    raise AssertionError(f"child counter {other[0]}, slots {other._slots}")

        fork_all(2, work)
        assert rd[0] == 2001
        assert rd.incr(0) == 2002 and rd.decr(0) == 2001
