"""Runs a module in a child process under resource limits: where untrusted media is parsed.

    parent: run(module, args, limits)
      -> python -E -s -B -m common.sandbox CPU MEMORY MODULE ARGS...
         (no environment, stdin closed, no inherited fds, its own process group)
    child:  main() sets its limits first, then runs MODULE as __main__,
            which prints one JSON value on stdout
    parent: that value, or SandboxFailed (killed by a limit or a signal, crashed, past
            the wall clock, or no JSON answer)

The child sets its limits itself, before it imports anything else: ``preexec_fn``
would do it between fork and exec, which is unsafe in a parent with threads (the API's
worker runs a thread pool). This module imports the standard library only, so nothing
it imports runs before the limits hold.

Limits: CPU seconds (SIGXCPU, then SIGKILL a second later), address space (allocations
past it fail), no core dumps, no file writes, few open files, and a wall clock past
which the parent kills the child's whole process group. The answer is read through a
pipe, at most ``MAX_ANSWER`` bytes of it, so a child gone wrong cannot fill the
parent's memory either.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import runpy
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The directory holding the ``common`` package: the child's working directory, which
# ``-m`` puts first on its path (the Docker image runs from there without installing).
CODE_ROOT = Path(__file__).resolve().parent.parent
# Bytes of the child's stdout kept (its answer) and of its stderr (the tail, for the log).
MAX_ANSWER = 1 << 20
MAX_STDERR = 4096
# File descriptors the child may hold open: its stdio, the file it reads, the imports.
MAX_FILES = 64


@dataclass(frozen=True)
class Limits:
    cpu_seconds: int
    memory_bytes: int  # address space
    timeout_seconds: float  # wall clock, from start to answer


class SandboxFailed(Exception):
    """The child gave no answer: ``str()`` says how it ended, for the log (not the client)."""


def run(module: str, args: Sequence[str], limits: Limits) -> Any:
    """Run ``module`` as ``__main__`` in a limited child; the JSON value it printed.

    Raises ``SandboxFailed`` when the child is killed (a limit, a signal, the wall
    clock), exits non-zero, or prints no JSON.
    """
    command = [
        sys.executable,
        "-E",  # -I would also drop the working directory (CODE_ROOT) from the path
        "-s",
        "-B",
        "-m",
        __name__,
        str(limits.cpu_seconds),
        str(limits.memory_bytes),
        module,
        *args,
    ]
    child = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={},  # no CV_* settings, no credentials, no FFREPORT
        cwd=CODE_ROOT,
        close_fds=True,
        process_group=0,  # its own group: the kill reaches anything it started
    )
    try:
        answer, errors = _collect(child, time.monotonic() + limits.timeout_seconds)
    except subprocess.TimeoutExpired:
        _kill(child)
        raise SandboxFailed(f"killed past its wall clock of {limits.timeout_seconds} s") from None
    except BaseException:
        _kill(child)
        raise
    finally:
        for pipe in (child.stdout, child.stderr):
            if pipe is not None:
                pipe.close()
    code = child.returncode
    tail = errors.decode("utf-8", "replace").strip()
    if code < 0:
        raise SandboxFailed(f"killed by {_signal_name(-code)}: {tail}")
    if code > 0:
        raise SandboxFailed(f"exited with status {code}: {tail}")
    try:
        return json.loads(answer)
    except ValueError:
        raise SandboxFailed(f"answered no JSON ({len(answer)} bytes): {tail}") from None


def _collect(child: subprocess.Popen[bytes], deadline: float) -> tuple[bytes, bytes]:
    """The child's stdout (at most ``MAX_ANSWER`` bytes) and the tail of its stderr, once
    it has exited; ``TimeoutExpired`` past ``deadline``."""
    assert child.stdout is not None and child.stderr is not None
    kept = {child.stdout.fileno(): bytearray(), child.stderr.fileno(): bytearray()}
    out = child.stdout.fileno()
    with selectors.DefaultSelector() as selector:
        for fd in kept:
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired(child.args, 0)
            for key, _ in selector.select(left):
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    selector.unregister(key.fd)
                    continue
                buffer = kept[key.fd]
                if key.fd == out:
                    buffer += chunk[: MAX_ANSWER + 1 - len(buffer)]  # one more: too long
                else:
                    buffer += chunk
                    del buffer[:-MAX_STDERR]
    child.wait(max(0.0, deadline - time.monotonic()))  # TimeoutExpired if it lingers
    return bytes(kept[out]), bytes(kept[child.stderr.fileno()])


def _kill(child: subprocess.Popen[bytes]) -> None:
    """Kill the child's process group (it is not reaped yet, so the group still exists)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGKILL)
    child.wait()


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


# --- the child -----------------------------------------------------------------------


def confine(cpu_seconds: int, memory_bytes: int) -> None:
    """Limit this process (and what it starts): CPU, address space, files, core dumps."""
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))  # Python ignores SIGXFSZ: EFBIG
    resource.setrlimit(resource.RLIMIT_NOFILE, (MAX_FILES, MAX_FILES))


def main(argv: Sequence[str]) -> None:
    """``CPU MEMORY MODULE ARGS...``: confine this process, then run MODULE as __main__."""
    cpu_seconds, memory_bytes, module, *args = argv
    confine(int(cpu_seconds), int(memory_bytes))
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
