"""Shared fixtures: unique shm names that are removed after each test."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest

SHM_DIR = Path("/dev/shm")


@pytest.fixture
def shm_name() -> Iterator[Callable[[], str]]:
    """Makes fresh segment names; every file they name is unlinked afterwards."""
    made: list[str] = []

    def make() -> str:
        name = f"/raindrops-test-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        made.append(name)
        return name

    yield make
    for name in made:
        (SHM_DIR / name[1:]).unlink(missing_ok=True)
