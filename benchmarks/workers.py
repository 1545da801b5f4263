"""`dramatiq` worker subprocesses: start, wait for readiness, and always clean up."""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
READY_LINE = "Worker process is ready for action."

# Every worker still running; the atexit hook is the last line of defence against leaks.
_live: set[subprocess.Popen] = set()


class WorkerDied(RuntimeError):
    pass


def dramatiq_command(module: str, processes: int, threads: int) -> list[str]:
    executable = Path(sys.executable).with_name("dramatiq")
    program = [str(executable)] if executable.exists() else [sys.executable, "-m", "dramatiq"]
    return [*program, "--processes", str(processes), "--threads", str(threads), module]


def worker_env(extra: dict[str, str]) -> dict[str, str]:
    env = {**os.environ, **extra}
    # The app modules import `benchmarks.*`, which lives at the repository root.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def stop(proc: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM the CLI parent (it stops its children gracefully), then SIGKILL the group."""
    if proc.poll() is None:
        # Only the parent: it forwards SIGTERM itself, and a second SIGTERM would make
        # the children exit abruptly.
        proc.send_signal(signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
    # The group also catches children orphaned by a parent that already died.
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    _live.discard(proc)


def stop_all() -> None:
    for proc in list(_live):
        stop(proc, grace=5.0)


atexit.register(stop_all)


def exit_on_termination_signals() -> None:
    """Turn SIGTERM/SIGHUP into SystemExit, so `with` blocks stop workers and clean up."""

    def terminate(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)


class WorkerProcess:
    """One `dramatiq --processes P --threads T module` run, logging to a temporary file."""

    def __init__(self, module: str, processes: int, threads: int, env: dict[str, str]) -> None:
        self.processes = processes
        self.log = Path(tempfile.mkstemp(prefix="zbench-worker-", suffix=".log")[1])
        with self.log.open("wb") as sink:
            # A new session makes the CLI and its children one process group to kill.
            self.proc = subprocess.Popen(
                dramatiq_command(module, processes, threads),
                cwd=REPO,
                env=worker_env(env),
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _live.add(self.proc)
        self.started = time.time()
        self.keep_log = False

    def alive(self) -> bool:
        return self.proc.poll() is None

    def why(self) -> str:
        """The worker's last critical/error log line, to explain a failure in one line."""
        # Keep the log of a failed run: it is the only full trace of what went wrong.
        self.keep_log = True
        lines = self.log.read_text(errors="replace").splitlines()
        for level in ("[CRITICAL]", "[ERROR]"):
            found = [line.split(level, 1)[1].strip() for line in lines if level in line]
            if found:
                return f" (worker log: {found[-1][:100]}; see {self.log})"
        return f" (see {self.log})"

    def wait_ready(self, timeout: float = 60.0) -> float:
        """Wait until every worker process logged readiness; returns seconds since spawn."""
        deadline = time.monotonic() + timeout
        while self.log.read_text(errors="replace").count(READY_LINE) < self.processes:
            if not self.alive():
                raise WorkerDied(f"worker exited with {self.proc.returncode}{self.why()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker not ready after {timeout:.0f}s{self.why()}")
            time.sleep(0.02)
        return time.time() - self.started

    def stop(self) -> None:
        stop(self.proc)
        if not self.keep_log:
            self.log.unlink(missing_ok=True)


@contextmanager
def running(
    module: str, processes: int, threads: int, env: dict[str, str]
) -> Iterator[WorkerProcess]:
    worker = WorkerProcess(module, processes, threads, env)
    try:
        yield worker
    finally:
        worker.stop()
