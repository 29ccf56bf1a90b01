"""The one per-process rule (raindrops/_process.py) holds for the metrics too, however the
worker was forked: a lock that another thread held at the fork must not lock the child out.

uWSGI forks its workers in C (no os.register_at_fork hook runs there) and calls
uwsgi.post_fork_hook in each instead, so both paths are tested: os.fork, and a
real uWSGI that loads the app in its master.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from servers import ROOT
from test_server_segments import python

from testsupport import processes
from testsupport.gunicorn import answers, free_port, remove_segments, request, wait_ready

ANSWER_SECONDS = 10  # a worker stuck on a lock answers never; a healthy one at once
UWSGI = str(Path(sys.executable).parent / "uwsgi")

# Made at import, then another thread takes every lock a metric or a registry has, and keeps
# them; work() then needs each of them. `here()` is the lock of this process (older code had a
# plain threading.Lock).
METRICS = """
import os, threading
from raindrops import metrics

registry = metrics.Registry()
counter = metrics.Counter("c", "help", ["k"], registry=registry)
gauge = metrics.Gauge("g", "help", ["k"], registry=registry)
histogram = metrics.Histogram("h", "help", ["k"], registry=registry)
gauge.labels("before").set(1)
_held = threading.Event()


def _lock(holder):
    return getattr(holder._lock, "here", lambda: holder._lock)()


def _hold():
    with _lock(counter), _lock(gauge), _lock(histogram), _lock(registry):
        _held.set()
        threading.Event().wait()


threading.Thread(target=_hold, daemon=True).start()
_held.wait()
_made = []


def work():
    counter.labels("after").inc()
    gauge.labels("before").set(2)
    gauge.labels("after").inc()
    histogram.labels("after").observe(0.5)
    if not _made:
        _made.append(metrics.Counter("made_after_fork", "help", registry=registry))
    _made[0].inc()
    return registry.prometheus()
"""


def test_locks_held_at_os_fork_do_not_lock_the_child_out() -> None:
    """Failed before the fix: the registry's lock was never made anew in a child (faulthandler
    ended the child stuck on it)."""
    code = f"""
        import faulthandler, os, sys
        exec({METRICS!r})
        pid = os.fork()
        if pid == 0:
            faulthandler.dump_traceback_later({ANSWER_SECONDS}, exit=True)
            print('c_total{{k="after"}} 1.0' in work(), flush=True)
            os._exit(0)
        sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    """
    done = processes.run(python(code), timeout=ANSWER_SECONDS * 3, cwd=ROOT, text=True)
    assert (done.returncode, done.stdout) == (0, "True\n"), done.stderr


UWSGI_APP = (
    METRICS
    + """

def application(environ, start_response):
    body = b"up" if environ["PATH_INFO"] == "/up" else work().encode()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]
"""
)


def test_locks_held_in_the_uwsgi_master_do_not_lock_its_workers_out(tmp_path: Path) -> None:
    """The app (and raindrops) loaded in uWSGI's master, which forks two workers in C.

    Failed before the fix: the metrics made their locks anew in an os.register_at_fork hook of
    their own, which uWSGI's fork never runs, and the registry's never: each worker's first
    request waited for good."""
    if not os.path.exists(UWSGI):
        pytest.skip("pyuwsgi is not installed")
    (tmp_path / "held_app.py").write_text(UWSGI_APP)
    port = free_port()
    log = tmp_path / "uwsgi.log"
    command = [UWSGI, "--http-socket", f"127.0.0.1:{port}", "--pythonpath", str(tmp_path)]
    command += ["--module", "held_app:application", "--master", "--processes", "2"]
    command += ["--enable-threads", "--die-on-term", "--need-app", "--disable-logging"]
    environment = {key: value for key, value in os.environ.items() if "RAINDROPS" not in key}
    environment.update(PYTHONPATH=str(ROOT))
    with processes.running(command, log=log, cwd=ROOT, env=environment) as process:
        try:
            assert wait_ready(process, lambda: answers(port, "/up"), "uWSGI", log)
            for _ in range(4):  # both workers, most likely
                response = request(port, "/", timeout=ANSWER_SECONDS)
                assert response.status == 200 and 'c_total{k="after"}' in response.text
        finally:
            processes.stop(process)
            remove_segments(process.pid)


def test_counter_and_listener_locks_held_at_os_fork_do_not_lock_the_child_out() -> None:
    """A thread inside Raindrops.to_list()/resize or a listener query at the fork held a plain
    lock that the child then waited for forever."""
    code = f"""
        import faulthandler, os, sys, threading
        import raindrops
        from raindrops import linux

        rd = raindrops.Raindrops(4)
        sock = linux.InetDiagSocket()
        held = threading.Event()

        def hold():
            with rd._lock.here(), sock._lock.here():
                held.set()
                threading.Event().wait()

        threading.Thread(target=hold, daemon=True).start()
        held.wait()
        pid = os.fork()
        if pid == 0:
            faulthandler.dump_traceback_later({ANSWER_SECONDS}, exit=True)
            rd.size = 8
            linux.tcp_listener_stats(["127.0.0.1:1"], sock)
            print(rd.to_list() == [0] * 8, flush=True)
            os._exit(0)
        sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    """
    done = processes.run(python(code), timeout=ANSWER_SECONDS * 3, cwd=ROOT, text=True)
    assert (done.returncode, done.stdout) == (0, "True\n"), done.stderr
