"""Run a `zart-dramatiq` command under yappi; write its CPU profile when it exits.

    python -m benchmarks.profiled OUT -- --broker app:broker serve --port 8000

``OUT.pstat`` (pstats format, every thread) and ``OUT.txt`` (the functions with the most
CPU of their own, then the most CPU including callees, then CPU per thread) are written
when the command returns, e.g. after SIGTERM has stopped the server. CPU clock: time a
thread spends waiting (on the database, on a socket) is not counted.
"""

from __future__ import annotations

import io
import signal
import sys
from pathlib import Path

import yappi

#: Rows per table of the text report.
TOP = 45
REPO = Path(__file__).resolve().parent.parent


def package(module: str) -> str:
    """The distribution or standard-library module a function's file belongs to."""
    parts = Path(module).parts
    for marker in ("site-packages", "dist-packages"):
        if marker in parts[:-1]:
            return parts[parts.index(marker) + 1].removesuffix(".py")
    for i, part in enumerate(parts[:-1]):
        if part.startswith("python3"):
            return parts[i + 1].removesuffix(".py")
    if module.startswith("<frozen"):
        return module.strip("<>").removeprefix("frozen ").split(".")[0].lstrip("_")
    if REPO in Path(module).parents:
        return Path(module).relative_to(REPO).parts[0].removesuffix(".py")
    return module or "?"


def report(out: Path) -> None:
    stats = yappi.get_func_stats()
    stats.save(str(out.with_suffix(".pstat")), type="pstat")
    text = io.StringIO()
    total = sum(t.ttot for t in yappi.get_thread_stats())
    text.write(f"CPU seconds in all threads: {total:.2f}\n\n-- own CPU by package --\n")
    packages: dict[str, float] = {}
    for entry in stats:
        name = package(entry.module)
        packages[name] = packages.get(name, 0.0) + entry.tsub
    for name, own in sorted(packages.items(), key=lambda item: -item[1]):
        text.write(f"{own:8.2f}s {100 * own / max(total, 1e-9):5.1f}%  {name}\n")
    text.write("\n")
    for key, title in (("tsub", "own CPU"), ("ttot", "CPU including callees")):
        text.write(f"-- by {title} --\n")
        stats.sort(key, "desc")
        for entry in list(stats)[:TOP]:
            where = f"{Path(entry.module).name}:{entry.lineno} {entry.name}"
            share = entry.tsub if key == "tsub" else entry.ttot
            pct = 100 * share / max(total, 1e-9)
            text.write(f"{share:8.2f}s {pct:5.1f}%  {entry.ncall:>9,}  {where}\n")
        text.write("\n")
    text.write("-- threads --\n")
    for thread in sorted(yappi.get_thread_stats(), key=lambda t: -t.ttot):
        text.write(f"{thread.ttot:8.2f}s  {thread.name} ({thread.sched_count} switches)\n")
    out.with_suffix(".txt").write_text(text.getvalue())


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    out, command = Path(argv[0]), argv[2:]
    from zart_dramatiq.cli import main as zart_dramatiq

    # uvicorn re-raises the SIGTERM it caught once it has shut down: with the default
    # handler that would end the process before the profile is written.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    yappi.set_clock_type("cpu")
    yappi.start(builtins=False, profile_threads=True)
    try:
        return zart_dramatiq(command)
    finally:
        yappi.stop()
        report(out)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
