"""Run a snippet of Python in a fresh process, with a timeout and a memory ceiling.

Tests of hangs (a FIFO that never gets a writer, ``/dev/zero``) and of memory
bombs (a config that claims a huge SAE) must not hang or exhaust the machine
when they regress: the snippet runs in a child process that is killed after
``timeout`` seconds and whose address space is capped at ``extra_mb`` above
what it holds after its imports. The snippet prints one JSON line; the child's
peak resident memory growth (``ru_maxrss``, MB) is added to it as ``peak_mb``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_PRELUDE = """
import json, resource, sys
{imports}
def _vm_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmSize:"):
            return int(line.split()[1])
    return 0
if {extra_mb} and _vm_kb():
    cap = (_vm_kb() + {extra_mb} * 1024) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
def report(**kw):
    kw["peak_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - _before) / 1024
    print("RESULT " + json.dumps(kw), flush=True)
"""


def run_isolated(code: str, *, imports: str = "", timeout: float = 60, extra_mb: int = 1500,
                 env: dict[str, str] | None = None) -> dict:
    """Run ``code`` (which calls ``report(**values)`` once) in a child Python; return the values it reported.

    Args:
        imports: statements run before the memory ceiling is set (heavy imports).
        timeout: seconds before the child is killed; a hang fails the test with
            ``subprocess.TimeoutExpired`` instead of hanging the suite.
        extra_mb: address-space ceiling above the post-import size (0: none).
        env: extra environment variables.
    Raises:
        AssertionError: the child reported nothing (it crashed); its stderr is shown.
    """
    program = _PRELUDE.format(imports=textwrap.dedent(imports), extra_mb=int(extra_mb)) + textwrap.dedent(code)
    child_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    proc = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=timeout,
                          cwd=str(ROOT), env=child_env)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise AssertionError(f"child process reported nothing (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
