"""Segments that no other user can break or poison, and no crash from any race (issue 11).

Every victim runs in a process of its own, so that a crash shows as a signal
exit instead of killing the test run; hostile users are a real second uid.
"""

from __future__ import annotations

import contextlib
import os
import stat
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from raindrops import Raindrops
from testsupport import processes, users

SHM_DIR = Path("/dev/shm")
NOBODY = users.NOBODY
# Offsets of the Header fields in zig/shm.zig: magic u64, layout_version u32,
# stride u32, capacity u64, size u64, creator_pid i32, reserved u32.
CAPACITY_OFFSET = 16
SIZE_OFFSET = 24


def python(code: str, *arguments: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code), *arguments]


def run_python(
    code: str, *arguments: str, timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    """Runs code in a fresh, unrelated interpreter."""
    return processes.run(python(code, *arguments), timeout=timeout_s, text=True)


def as_nobody() -> list[str]:
    """The command prefix that runs a command as uid/gid 65534: another local user."""
    return users.prefix()


def run_as_nobody(code: str, *arguments: str) -> subprocess.CompletedProcess[str]:
    command = [*users.python(), "-c", textwrap.dedent(code), *arguments]
    return processes.run(command, timeout=60, text=True)


def steered(command: list[str]) -> contextlib.AbstractContextManager[subprocess.Popen[str]]:
    """A child driven line by line through its stdin and stdout; ended however the test ends."""
    return processes.running(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def read_line(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    return process.stdout.readline().strip()


@pytest.fixture
def shm_base(shm_name: Callable[[], str]) -> Iterator[str]:
    """A name prefix for tests that make many segments; all of them are unlinked afterwards."""
    base = shm_name()
    yield base
    for path in SHM_DIR.glob(f"{base[1:]}-*"):
        path.unlink(missing_ok=True)


def steer(process: subprocess.Popen[str], line: str = "go") -> str:
    """Sends `line` to a steered child and returns the next line it prints."""
    assert process.stdin is not None
    process.stdin.write(line + "\n")
    process.stdin.flush()
    return read_line(process)


def finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    """Sends the last "go" line and waits for the child's end: its exit code and output."""
    stdout, stderr = process.communicate("go\n", timeout=60)
    return process.returncode, stdout, stderr


# 2. Another user's segment is attached.


def test_a_segment_of_another_user_is_refused(shm_name: Callable[[], str]) -> None:
    name = shm_name()
    made = run_as_nobody(
        f"""
        import os
        from raindrops import Raindrops
        rd = Raindrops(3, name={name!r})
        rd[0] = 7
        os.chmod("/dev/shm/" + {name[1:]!r}, 0o666)
        """
    )
    assert made.returncode == 0, made.stderr
    path = SHM_DIR / name[1:]
    assert path.stat().st_uid == NOBODY
    content = path.read_bytes()
    attaches: list[Callable[[], object]] = [
        lambda: Raindrops.open(name),
        lambda: Raindrops(1, name=name),
        lambda: Raindrops(500, name=name),
    ]
    for attach in attaches:
        with pytest.raises(PermissionError) as caught:
            attach()
        assert name in str(caught.value)
        assert f"owner uid {NOBODY} is not you" in str(caught.value)
    assert path.read_bytes() == content, "a refused segment is never modified"


@pytest.mark.parametrize("mode", [0o666, 0o620, 0o602, 0o622], ids=oct)
def test_a_segment_that_others_can_write_is_refused(mode: int, shm_name: Callable[[], str]) -> None:
    name = shm_name()
    with Raindrops(2, name=name):
        pass
    path = SHM_DIR / name[1:]
    path.chmod(mode)
    content = path.read_bytes()
    for attach in (lambda: Raindrops.open(name), lambda: Raindrops(9, name=name)):
        with pytest.raises(PermissionError) as caught:
            attach()
        assert name in str(caught.value)
        assert f"mode {mode:#o} lets others write" in str(caught.value)
    assert path.read_bytes() == content


NOT_REGULAR = {
    "fifo": 'umask 0; mkfifo "$1"',
    "directory": 'umask 0; mkdir "$1"',
    "symlink": 'ln -s /dev/null "$1"',
    "socket": 'umask 0; exec "$2" -c '
    '"import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])" "$1"',
}


def plant(kind: str, path: Path, owner: str) -> None:
    """Makes a file of `kind` (not a regular file) at `path` as `owner` (us, or uid 65534)."""
    prefix = [] if owner == "us" else users.prefix()
    interpreter = sys.executable if owner == "us" else users.interpreter()
    made = processes.run(
        [*prefix, "sh", "-c", NOT_REGULAR[kind], "sh", str(path), interpreter], timeout=60
    )
    assert made.returncode == 0, made.stderr
    assert path.lstat().st_uid == (os.geteuid() if owner == "us" else NOBODY)


@pytest.mark.parametrize("owner", ["us", "nobody"])
@pytest.mark.parametrize("kind", sorted(NOT_REGULAR))
def test_a_name_that_is_not_a_regular_file_is_refused_by_name(
    kind: str, owner: str, shm_name: Callable[[], str]
) -> None:
    """Ours: ValueError ("not a raindrops segment"), another user's: PermissionError, like any
    file of theirs. Never an OSError of the open or the read (ELOOP, EISDIR, ESPIPE, ENXIO), and
    a FIFO never blocks."""
    name = shm_name()
    path = SHM_DIR / name[1:]
    plant(kind, path, owner)
    try:
        for attach in (lambda: Raindrops.open(name), lambda: Raindrops(3, name=name)):
            if owner == "us":
                with pytest.raises(ValueError, match=f"{name}' is not a raindrops segment"):
                    attach()
            else:
                with pytest.raises(PermissionError, match=f"{name}'.*owner uid {NOBODY} is not"):
                    attach()
        assert stat.S_IFMT(path.lstat().st_mode) != stat.S_IFREG, "left as it was"
    finally:
        if path.is_dir() and not path.is_symlink():
            path.rmdir()


@pytest.mark.parametrize("mode", [0o666, 0o660, 0o606, 0o622, 0o611, 0o4600], ids=oct)
def test_the_creating_mode_may_not_grant_write_to_others(
    mode: int, shm_name: Callable[[], str]
) -> None:
    name = shm_name()
    with pytest.raises(ValueError, match=f"mode {mode:#o}"):
        Raindrops(1, name=name, mode=mode)
    assert not (SHM_DIR / name[1:]).exists()


OWNER_CANNOT_USE = [0o400, 0o000, 0o200, 0o100, 0o500, 0o440, 0o244]

CREATE_WITH_MODE = """
    import os, sys
    from raindrops import Raindrops
    name, mode = sys.argv[1], int(sys.argv[2], 8)
    try:
        Raindrops(1, name=name, mode=mode)
    except Exception as error:
        print(type(error).__name__, error)
    print(os.path.exists("/dev/shm" + name))
    """


@pytest.mark.parametrize("user", ["us", "nobody"])
@pytest.mark.parametrize("mode", OWNER_CANNOT_USE, ids=oct)
def test_a_creating_mode_without_owner_read_and_write_is_refused_first(
    mode: int, user: str, shm_name: Callable[[], str]
) -> None:
    """Such a segment could not be attached by its own creator (without root's override): it
    used to be created, then refused with PermissionError, and left behind."""
    name = shm_name()
    run = run_python if user == "us" else run_as_nobody
    result = run(CREATE_WITH_MODE, name, f"{mode:o}")
    assert result.returncode == 0, result.stderr
    refusal, exists = result.stdout.splitlines()
    assert refusal.startswith(f"ValueError mode {mode:#o}"), refusal
    assert "owner" in refusal and "read and write" in refusal, refusal
    assert exists == "False", "nothing is created"


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o644, 0o604], ids=oct)
def test_the_creating_mode_may_let_others_read(mode: int, shm_name: Callable[[], str]) -> None:
    umask = os.umask(0o022)
    os.umask(umask)
    name = shm_name()
    with Raindrops(1, name=name, mode=mode) as rd:
        assert stat.S_IMODE((SHM_DIR / name[1:]).stat().st_mode) == mode & ~umask
        with Raindrops.open(name) as attached:
            attached.incr(0)
        assert rd[0] == 1


HOLD_THE_LOCK = """
    import fcntl, sys
    with open(sys.argv[1], "rb") as segment:
        fcntl.flock(segment, fcntl.LOCK_EX)
        print("locked", flush=True)
        sys.stdin.readline()
    """


def test_a_reader_holding_the_lock_delays_a_resize_by_seconds_at_most(
    shm_name: Callable[[], str],
) -> None:
    """Anyone who may read a segment (mode 0o644) can flock it: resizing gives up, counting goes
    on."""
    name = shm_name()
    path = SHM_DIR / name[1:]
    with Raindrops(3, name=name, mode=0o644) as rd:
        path.chmod(0o644)
        command = [*users.python(), "-c", textwrap.dedent(HOLD_THE_LOCK), str(path)]
        with steered(command) as reader:
            assert read_line(reader) == "locked"
            started = time.monotonic()
            with pytest.raises(BlockingIOError, match=f"{name}.*held its lock"):
                rd.size = 100
            assert time.monotonic() - started < 10
            assert rd.incr(2) == 1 and rd.size == 3
            finish(reader)
        rd.size = 100
        assert rd.size == 100


# 3. The header is trusted after attach.

POISONED_HEADERS: dict[str, tuple[dict[int, int], str]] = {
    "size past capacity": ({SIZE_OFFSET: 1000}, "has a corrupt header"),
    "size zero": ({SIZE_OFFSET: 0}, "has a corrupt header"),
    "size and capacity past the file": (
        {CAPACITY_OFFSET: 100_000, SIZE_OFFSET: 100_000},
        "is truncated",
    ),
    "absurd size and capacity": ({CAPACITY_OFFSET: 2**60, SIZE_OFFSET: 2**40}, "corrupt header"),
}

VICTIM = """
    import sys
    from raindrops import Raindrops
    name = sys.argv[1]
    rd = Raindrops.open(name)
    rd.incr(0)
    print("attached", flush=True)
    sys.stdin.readline()
    operations = {
        "len": lambda: len(rd),
        "size": lambda: rd.size,
        "capa": lambda: rd.capa,
        "to_list": rd.to_list,
        "get": lambda: rd[999],
        "incr": lambda: rd.incr(500, 2),
        "set": lambda: rd.__setitem__(700, 1),
        "grow": lambda: setattr(rd, "size", 70),
        "attach again": lambda: Raindrops.open(name),
    }
    for what, operation in operations.items():
        try:
            operation()
        except ValueError as error:
            print(what, "ValueError", error, flush=True)
        else:
            print(what, "no error", flush=True)
    print("survived", flush=True)
    """


@pytest.mark.parametrize("kind", sorted(POISONED_HEADERS))
def test_a_header_poisoned_after_attach_gives_value_error(
    kind: str, shm_name: Callable[[], str]
) -> None:
    fields, message = POISONED_HEADERS[kind]
    name = shm_name()
    with Raindrops(3, name=name):
        pass
    with steered(python(VICTIM, name)) as victim:
        assert read_line(victim) == "attached"
        with open(SHM_DIR / name[1:], "r+b") as segment:
            for offset, value in fields.items():
                segment.seek(offset)
                segment.write(struct.pack("<Q", value))
        code, stdout, stderr = finish(victim)
    assert code == 0, f"the victim died: {code} {stderr}"
    lines = stdout.splitlines()
    assert lines[-1] == "survived", lines
    for line in lines[:-1]:
        assert " ValueError " in line and name in line, line
        assert "corrupt header" in line or "truncated" in line, line
    assert message in lines[0], lines[0]


# 4. The documented maximum breaks segments.

MAXIMUM = 1 << 24

ATTACH_AND_COUNT = """
    import sys
    from raindrops import Raindrops
    with Raindrops.open(sys.argv[1]) as rd:
        print(rd.size, rd.incr(rd.size - 1))
    """


def test_a_segment_of_the_maximum_size_is_valid_for_every_process(
    shm_name: Callable[[], str],
) -> None:
    name = shm_name()
    with Raindrops(MAXIMUM, name=name) as rd:
        assert rd.size == MAXIMUM and rd.capa >= MAXIMUM
        result = run_python(ATTACH_AND_COUNT, name)
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == [str(MAXIMUM), "1"]
        assert rd[MAXIMUM - 1] == 1


def test_growing_to_the_maximum_leaves_the_segment_valid(shm_name: Callable[[], str]) -> None:
    name = shm_name()
    with Raindrops(1, name=name) as rd:
        rd.size = MAXIMUM
        result = run_python(ATTACH_AND_COUNT, name)
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == [str(MAXIMUM), "1"]
        with Raindrops(3, name=name) as again:
            assert again.size == MAXIMUM
        with pytest.raises(ValueError, match=str(MAXIMUM + 1)):
            rd.size = MAXIMUM + 1
        assert rd.size == MAXIMUM


# 5. Attach races.

RACING_CREATES = """
    import os, sys, time, traceback
    from raindrops import Raindrops
    base, rounds = sys.argv[1], int(sys.argv[2])
    sizes = (1000, 500)
    gate = Raindrops(2)  # [0]: arrivals at the start line, [1]: a racer failed
    seen = Raindrops(2 * rounds)
    for round in range(0, rounds, 2):  # half of the races attach to an existing small segment
        Raindrops(1, name=f"{base}-{round}").close()
    def race(racer):
        for round in range(rounds):
            gate.incr(0)
            while gate[0] < 2 * (round + 1) and not gate[1]:
                pass
            with Raindrops(sizes[racer], name=f"{base}-{round}") as rd:
                seen[2 * round + racer] = rd.size
    pids = []
    for racer in range(2):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                race(racer)
                code = 0
            except BaseException:
                traceback.print_exc()
                gate[1] = 1
            finally:
                os._exit(code)
        pids.append(pid)
    codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
    final = []
    for round in range(rounds):
        try:
            with Raindrops.open(f"{base}-{round}") as rd:
                final.append(rd.size)
                rd.unlink()
        except (OSError, ValueError) as error:
            final.append(repr(error))
    values = seen.to_list()
    print(codes, sorted(set(values[0::2])), sorted(set(values[1::2])), sorted(set(final)))
    """


def test_racing_creates_of_two_sizes_never_shrink(shm_base: str) -> None:
    rounds = 1000
    result = run_python(RACING_CREATES, shm_base, str(rounds))
    assert result.returncode == 0, result.stderr
    codes, large, small, final = result.stdout.strip().split("] [")
    assert codes == "[0, 0", result.stdout
    assert large == "1000", f"the 1000-counter racer saw other sizes: {result.stdout}"
    assert set(small.split(", ")) <= {"500", "1000"}, result.stdout
    assert final == "1000]", f"a segment was left smaller than asked: {result.stdout}"


ATTACH_WHILE_GROWING = """
    import os, sys, time
    from raindrops import Raindrops
    base, seconds = sys.argv[1], float(sys.argv[2])
    shared = Raindrops(4)  # [0]: current segment number, [1]: grower done, [2]: attaches
    def grow():
        deadline = time.monotonic() + seconds
        number = 0
        while time.monotonic() < deadline:
            with Raindrops(1 << 16, name=f"{base}-{number}") as rd:
                shared[0] = number
                while rd.capa < 1 << 18:
                    rd.size = rd.capa + 1
                rd.unlink()
            number += 1
        shared[1] = 1
    def attach():
        errors = []
        while not shared[1]:
            try:
                rd = Raindrops.open(f"{base}-{shared[0]}")
            except FileNotFoundError:
                continue
            except Exception as error:
                errors.append(f"{type(error).__name__}: {error}")
                continue
            if not 1 <= len(rd) <= rd.capa:
                errors.append(f"size {len(rd)} capa {rd.capa}")
            rd.close()
            shared.incr(2)
        print(len(errors), sorted(set(errors))[:5], flush=True)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            grow()
            code = 0
        finally:
            os._exit(code)
    attach()
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), shared[2])
    """


def test_attaching_while_another_process_grows_never_fails(shm_base: str) -> None:
    result = run_python(ATTACH_WHILE_GROWING, shm_base, "3")
    assert result.returncode == 0, result.stderr
    errors, grower = result.stdout.splitlines()
    assert errors == "0 []", errors
    grower_code, attaches = grower.split()
    assert grower_code == "0" and int(attaches) > 100, grower


# 6. close() racing other threads.

CLOSE_RACE = """
    import random, sys, threading, time
    from raindrops import Raindrops
    sys.setswitchinterval(1e-6)
    deadline = time.monotonic() + float(sys.argv[1])
    unexpected = []
    iterations = 0
    def hammer(operation, started):
        started.wait()
        for _ in range(1_000_000):
            try:
                operation()
            except ValueError as error:
                if "closed" not in str(error):
                    unexpected.append(repr(error))
                return
            except BaseException as error:
                unexpected.append(repr(error))
                return
    while time.monotonic() < deadline:
        rd = Raindrops(300, name=None if iterations % 2 else sys.argv[2])
        if iterations % 2 == 0:
            rd.unlink()
        operations = [
            rd.to_list,
            lambda: rd.incr(7),
            lambda: rd.incr(299, 2**40),
            lambda: rd[150],
            lambda: rd.__setitem__(3, 2**35),
            lambda: rd.size,
            lambda: len(rd),
            lambda: setattr(rd, "size", 300 + random.randrange(5000)),
        ]
        started = threading.Barrier(len(operations) + 1)
        threads = [threading.Thread(target=hammer, args=(op, started)) for op in operations]
        for thread in threads:
            thread.start()
        started.wait()
        time.sleep(random.random() / 1000)
        rd.close()
        for thread in threads:
            thread.join()
        iterations += 1
    print(iterations, unexpected[:5])
    """


def test_close_racing_every_operation_never_crashes(shm_name: Callable[[], str]) -> None:
    result = run_python(CLOSE_RACE, "5", shm_name(), timeout_s=120)
    assert result.returncode == 0, f"died with {result.returncode}: {result.stderr[-2000:]}"
    iterations, unexpected = result.stdout.split(maxsplit=1)
    assert unexpected.strip() == "[]", unexpected
    assert int(iterations) > 10


def test_close_unmaps_once_nothing_can_use_the_views(shm_name: Callable[[], str]) -> None:
    name = shm_name()

    def mapped() -> bool:
        return f"/dev/shm{name}" in Path("/proc/self/maps").read_text()

    rd = Raindrops(3, name=name)
    rd.size = 5000
    assert mapped()
    rd.close()
    assert mapped(), "another thread may still be inside an operation"
    with pytest.raises(ValueError, match="closed"):
        rd.incr(0)
    del rd
    assert not mapped()


# 8. Temporary-name squatting.

SQUAT = """
    import sys
    for index in range(64):
        open(f"/dev/shm/.raindrops-{sys.argv[1]}-{index}", "x").close()
    """

CREATE_WHEN_TOLD = """
    import os, sys
    from raindrops import Raindrops
    print(os.getpid(), flush=True)
    sys.stdin.readline()
    with Raindrops(2, name=sys.argv[1]) as rd:
        print(rd.size, rd.incr(1), flush=True)
    """


@pytest.mark.parametrize("squatter", ["root", "nobody"])
def test_squatted_temporary_names_do_not_block_creation(
    squatter: str, shm_name: Callable[[], str]
) -> None:
    name = shm_name()
    with steered(python(CREATE_WHEN_TOLD, name)) as victim:
        pid = read_line(victim)
        squatted = [SHM_DIR / f".raindrops-{pid}-{index}" for index in range(64)]
        try:
            squat = (run_as_nobody if squatter == "nobody" else run_python)(SQUAT, pid)
            assert squat.returncode == 0, squat.stderr
            code, stdout, stderr = finish(victim)
        finally:
            for path in squatted:
                path.unlink(missing_ok=True)
    assert code == 0, stderr
    assert stdout.split() == ["2", "1"]


# 9. Shrink, then regrow.

STALE_COUNTER = """
    import sys
    from raindrops import Raindrops
    rd = Raindrops.open(sys.argv[1])
    print(rd.size, flush=True)
    sys.stdin.readline()
    for _ in range(100):
        rd.incr(7)  # through the view prepared for 10 counters: stale after the shrink
    print("counted", flush=True)
    sys.stdin.readline()
    """


def test_a_counter_regrown_after_a_shrink_starts_at_zero(shm_name: Callable[[], str]) -> None:
    name = shm_name()
    with Raindrops(10, name=name) as rd:
        for index in range(10):
            rd[index] = 100 + index
        with steered(python(STALE_COUNTER, name)) as other:
            assert read_line(other) == "10"
            rd.size = 5
            assert steer(other) == "counted"
            rd.size = 10
            assert rd.to_list() == [100, 101, 102, 103, 104, 0, 0, 0, 0, 0]
            code, _, stderr = finish(other)
        assert code == 0, stderr


FULL_AFTER_A_SHRINK = """
    import os, subprocess, sys
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", "/dev/shm"], check=True)
    from raindrops import Raindrops

    def fill():
        # Another user takes every free page of /dev/shm.
        with open(f"/dev/shm/filler-{os.urandom(4).hex()}", "xb", buffering=0) as filler:
            try:
                while True:
                    filler.write(b"x" * 4096)
            except OSError:
                pass

    def attempt(what, operation):
        try:
            print(what, operation(), flush=True)
        except MemoryError as error:
            print(what, "MemoryError", error, flush=True)

    shrinker = Raindrops(2000, name="/victim")
    stale = Raindrops.open("/victim")  # a view prepared for 2000 counters
    for index in range(2000):
        stale.incr(index)
    fill()
    shrinker.size = 1
    fill()  # whatever the shrink gave back is taken at once
    attempt("stale incr", lambda: stale.incr(1000))
    attempt("stale get", lambda: stale[1999])
    attempt("regrow", lambda: setattr(shrinker, "size", 2000) or shrinker.size)
    attempt("regrown", lambda: (shrinker[1000], shrinker[1999]))
    for name in os.listdir("/dev/shm"):
        if name.startswith("filler-"):
            os.unlink("/dev/shm/" + name)
    small = Raindrops(1, name="/small")  # one page: room for 63 counters
    fill()
    attempt("grow small", lambda: setattr(small, "size", 100) or small.size)
    attempt("small after", lambda: (len(small), small.incr(0)))
    print("survived", flush=True)
    """


def test_a_full_dev_shm_after_a_shrink_never_crashes_a_stale_view() -> None:
    """A shrink must not give pages back: another user can take them, and a process still
    counting through its view of the old size would then die of SIGBUS. Growing on a full
    /dev/shm is a MemoryError before any counter is touched. A tiny tmpfs over /dev/shm in a
    private mount namespace: nothing else sees it."""
    command = ["unshare", "--mount", *python(FULL_AFTER_A_SHRINK)]
    result = processes.run(command, timeout=120, text=True)
    if result.returncode != 0 and "unshare failed" in result.stderr:
        pytest.skip(f"the kernel refuses a mount namespace: {result.stderr.strip()}")
    assert result.returncode == 0, f"died with {result.returncode}: {result.stdout}{result.stderr}"
    lines = result.stdout.splitlines()
    assert lines[:4] == ["stale incr 1", "stale get 0", "regrow 2000", "regrown (0, 0)"], lines
    assert lines[4].startswith("grow small MemoryError") and "/small" in lines[4], lines
    assert lines[5:] == ["small after (1, 1)", "survived"], lines


# 10. Old views are never unmapped.

MANY_GROWTHS = """
    import sys, time
    from raindrops import Raindrops
    def mappings():
        with open("/proc/self/maps") as maps:
            return sum(1 for _ in maps)
    rd = Raindrops(1, name=None if sys.argv[1] == "-" else sys.argv[1])
    before = mappings()
    deadline = time.monotonic() + 30
    for _ in range(65_000):
        rd.size += 1
        if time.monotonic() > deadline:
            break
    print(rd.size, mappings() - before, rd[rd.size - 1])
    """


@pytest.mark.parametrize("named", [False, True], ids=["anonymous", "named"])
def test_65000_growths_keep_the_mappings_bounded(named: bool, shm_name: Callable[[], str]) -> None:
    result = run_python(MANY_GROWTHS, shm_name() if named else "-", timeout_s=120)
    assert result.returncode == 0, result.stderr[-2000:]
    size, added, last = result.stdout.split()
    assert size == "65001" and last == "0"
    assert int(added) < 100, f"{added} mappings added by 65,000 growths"


# Namespaces: /dev/shm shared with another PID namespace, and a mount namespace without /proc
# (creation then links a randomly named file into place and the resize lock uses the segment's
# own descriptor).

NAMESPACED = """
    import sys
    from raindrops import Raindrops
    with Raindrops(3, name=sys.argv[1]) as rd:
        rd.size = 5000
        for _ in range(1000):
            rd.incr(4999)
    """

NAMESPACES = {
    "pid": ["unshare", "--pid", "--fork"],
    "no /proc": [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        'umount -l /proc && exec "$0" "$@"',
    ],
}


@pytest.mark.parametrize("namespace", sorted(NAMESPACES))
def test_segments_shared_with_another_namespace(
    namespace: str, shm_name: Callable[[], str]
) -> None:
    if os.geteuid() != 0:
        pytest.skip("unshare needs root (the tests run as root in CI)")
    name = shm_name()
    with Raindrops(2, name=name) as rd:
        rd.incr(1)
        command = [*NAMESPACES[namespace], *python(NAMESPACED, name)]
        result = processes.run(command, timeout=60, text=True)
        if result.returncode != 0 and "unshare failed" in result.stderr:
            pytest.skip(f"the kernel refuses the namespace: {result.stderr.strip()}")
        assert result.returncode == 0, result.stderr
        assert rd.size == 5000 and rd[4999] == 1000 and rd[1] == 1
    assert not list(SHM_DIR.glob(".raindrops-*")), "a temporary name was left behind"
