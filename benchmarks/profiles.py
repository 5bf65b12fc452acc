"""Where a service process spends its CPU under load: py-spy's samples, summarised as text.

`Recording` runs `py-spy record --subprocesses --format raw` on a process tree until stopped
(py-spy is not a dependency: `pip install py-spy`; the benchmark profiles only when asked, see
`bench_ingest`). `summary()` reads the collapsed stacks and answers what dominates: self time
(the innermost frame) by package and by function, and inclusive time (on the stack at all) by
package and by the service's own functions. Idle time (the event loop waiting) is not sampled;
time in uvloop's C code shows as self time of `Runner.run`, or as a sample without a Python
frame. SQLAlchemy's async execution runs in greenlets, whose stacks py-spy shows apart from the
coroutine awaiting them: the inclusive time of the service's functions leaves out the SQLAlchemy
work they cause, so read the packages' self time for where the CPU goes.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<function>.*) \((?P<path>[^()]*?)(?::\d+)?\)$")


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Recording:
    def __init__(self, pid: int, *, out: Path, rate: int = 200) -> None:
        executable = py_spy()
        if executable is None:
            raise SystemExit("BENCH_PROFILE needs py-spy (pip install py-spy)")
        self.out = out
        command = [executable, "record", "--pid", str(pid), "--subprocesses", "--rate", str(rate)]
        command += ["--full-filenames", "--format", "raw", "--output", str(out)]
        self._log = out.with_suffix(".log").open("wb")
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)

    def stop(self) -> str:
        """Stop sampling; answer the summary of what was recorded."""
        self.process.send_signal(signal.SIGINT)
        self.process.wait(timeout=60)
        self._log.close()
        return summary(self.out.read_text(errors="replace"))


def _frames(stack: str) -> list[tuple[str, str]]:
    frames = []
    for frame in stack.split(";"):
        if (found := _FRAME.match(frame)) is not None:
            frames.append((found["function"], found["path"]))
    return frames


def package(path: str) -> str:
    """`sqlalchemy`, `service/ingest.py`, `asyncio` (stdlib), ... for a frame's file."""
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    if "/service/" in path:
        return "service/" + path.split("/service/", 1)[1]
    if "/lib/python" in path:
        rest = path.split("/lib/python", 1)[1].split("/", 1)[-1]
        return rest.split("/", 1)[0].removesuffix(".py") + " (stdlib)"
    return path


def _short(function: str, path: str) -> str:
    return f"{function} ({package(path)})"


def summary(raw: str, *, top: int = 15) -> str:
    by_package: Counter[str] = Counter()
    by_self: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames, count = _frames(stack), int(count_text)
        total += count
        if not frames:
            by_package["(no Python frame)"] += count
            continue
        by_package[package(frames[-1][1])] += count
        by_self[_short(*frames[-1])] += count
        for name in {package(path) for _, path in frames}:
            packages[name] += count
        for name in {_short(*f) for f in frames if package(f[1]).startswith("service/")}:
            ours[name] += count
    lines = [f"{total:,} samples (CPU-active stacks only)", ""]
    lines += ["self time by package:", *_ranked(by_package, total, top), ""]
    lines += ["self time by function:", *_ranked(by_self, total, top * 2), ""]
    lines += ["inclusive time by package:", *_ranked(packages, total, top), ""]
    lines += ["inclusive time by the service's functions:", *_ranked(ours, total, top * 2)]
    return "\n".join(lines) + "\n"


def _ranked(counts: Counter[str], total: int, top: int) -> list[str]:
    return [f"  {100 * n / max(total, 1):5.1f}%  {name}" for name, n in counts.most_common(top)]
