"""The ctypes boundary: one module touches ctypes, and what Python copies from the library must
match it, or the package refuses to import (a stale libraindrops.so from another build)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from servers import ROOT
from test_server_segments import python

from raindrops import _native
from testsupport import processes

PACKAGE = ROOT / "raindrops"
BOUNDARY = PACKAGE / "_native.py"


def _ctypes_imports(path: Path) -> list[str]:
    """`file:line` of every import of ctypes (or _ctypes) in a source file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            continue
        if any(name.split(".")[0] in ("ctypes", "_ctypes") for name in names):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_only_the_native_module_imports_ctypes() -> None:
    """Failed before series.py and metrics/family.py built their C arrays through _native."""
    sources = sorted(PACKAGE.rglob("*.py"))
    assert BOUNDARY in sources and _ctypes_imports(BOUNDARY)
    outside = [found for path in sources if path != BOUNDARY for found in _ctypes_imports(path)]
    assert outside == []


def test_native_arrays_hold_their_values_at_their_address() -> None:
    words = _native.u64_array([1, 2**64 - 1])
    floats = _native.f64_array([0.5, -2.0])
    assert list(words) == [1, 2**64 - 1] and list(floats) == [0.5, -2.0]
    assert _native.address_of(words) != _native.address_of(floats)
    first = _native.CounterPointer(_native.address_of(words) + 8)
    assert _native.load(first) == 2**64 - 1


def _import_changed(module: str, old: str, new: str) -> tuple[int, str]:
    """Imports a copy of `module` whose source has `old` replaced by `new` (beside the real one,
    so it loads the same library), in a fresh interpreter: (exit code, the ImportError)."""
    code = f"""
        import importlib.util, sys, types
        spec = importlib.util.find_spec({module!r})
        source = open(spec.origin).read()
        assert source.count({old!r}) == 1, "the test's text is not in {module}"
        copy = types.ModuleType("changed_copy")
        copy.__file__ = spec.origin
        sys.modules["changed_copy"] = copy
        try:
            exec(compile(source.replace({old!r}, {new!r}), spec.origin, "exec"), copy.__dict__)
        except ImportError as error:
            print(error)
            sys.exit(3)
    """
    done = processes.run(python(code), timeout=60, cwd=ROOT, text=True)
    assert done.returncode in (0, 3), done.stderr
    return done.returncode, done.stdout


def test_the_unchanged_copies_import() -> None:
    """The harness itself: a copy with a no-op change imports (so a failure below is the check)."""
    assert _import_changed("raindrops._native", "_TRUNCATED = -4003", "_TRUNCATED = -4003") == (
        0,
        "",
    )


def test_a_status_code_other_than_the_librarys_fails_the_import() -> None:
    status, message = _import_changed(
        "raindrops._native", "_TRUNCATED = -4003", "_TRUNCATED = -4013"
    )
    assert status == 3
    assert "status code 2 is -4013 here but -4003 in the library" in message


def test_a_status_table_longer_than_the_librarys_fails_the_import() -> None:
    status, message = _import_changed(
        "raindrops._native",
        "    _WRITABLE_BY_OTHERS,\n)",
        "    _WRITABLE_BY_OTHERS,\n    -4007,\n)",
    )
    assert status == 3
    assert "status code 6 is -4007 here but 0 in the library" in message


@pytest.mark.parametrize(
    ("module", "old", "new", "name"),
    [
        (
            "raindrops.counters",
            '_native.mirrored("mode_allowed", 0o744)',
            '_native.mirrored("mode_allowed", 0o764)',
            "mode_allowed",
        ),
        (
            "raindrops.histogram",
            '_native.mirrored("fields_before_buckets", 5)',
            '_native.mirrored("fields_before_buckets", 4)',
            "fields_before_buckets",
        ),
    ],
)
def test_a_constant_copied_from_zig_that_differs_fails_the_import(
    module: str, old: str, new: str, name: str
) -> None:
    status, message = _import_changed(module, old, new)
    assert status == 3
    assert f"constant {name} is " in message and "in the library" in message


def test_the_copied_constants_are_the_librarys() -> None:
    from raindrops import counters, histogram

    assert counters._MODE_ALLOWED == 0o744 and histogram.FIELDS_BEFORE_BUCKETS == 5
    with pytest.raises(ImportError, match="raindrops_no_such_constant"):
        _native.mirrored("no_such_constant", 1)
