"""prometheus_client's helpers, each a context manager and a decorator (coroutines included):
time(), track_inprogress() and count_exceptions()."""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])
_clock = time.perf_counter


class _Decorator:
    """Wraps a function (or a coroutine function) in `with self._fresh():` on every call."""

    def _fresh(self) -> Any:
        raise NotImplementedError

    def __call__(self, function: F) -> F:
        if inspect.iscoroutinefunction(function):

            @functools.wraps(function)
            async def awaited(*args: Any, **kwargs: Any) -> Any:
                with self._fresh():
                    return await function(*args, **kwargs)

            return awaited  # type: ignore[return-value]

        @functools.wraps(function)
        def called(*args: Any, **kwargs: Any) -> Any:
            with self._fresh():
                return function(*args, **kwargs)

        return called  # type: ignore[return-value]


class Timer(_Decorator):
    """Records the seconds a block or a call took (Histogram.observe, Gauge.set)."""

    def __init__(self, record: Callable[[float], None]) -> None:
        self._record = record
        self._started = 0.0

    def _fresh(self) -> Timer:
        return Timer(self._record)

    def __enter__(self) -> Timer:
        self._started = _clock()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._record(max(_clock() - self._started, 0.0))


class InProgress(_Decorator):
    """inc() on entry, dec() on exit: a Gauge of what is running."""

    def __init__(self, inc: Callable[[], None], dec: Callable[[], None]) -> None:
        self._inc = inc
        self._dec = dec

    def _fresh(self) -> InProgress:
        return self

    def __enter__(self) -> InProgress:
        self._inc()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._dec()


class ExceptionCounter(_Decorator):
    """inc() when an exception of `exception` leaves the block; the exception goes on."""

    def __init__(
        self,
        inc: Callable[[], None],
        exception: type[BaseException] | tuple[type[BaseException], ...],
    ) -> None:
        self._inc = inc
        self._exception = exception

    def _fresh(self) -> ExceptionCounter:
        return self

    def __enter__(self) -> ExceptionCounter:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if kind is not None and issubclass(kind, self._exception):
            self._inc()
