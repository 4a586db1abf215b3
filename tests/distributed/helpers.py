"""Launching ``sae-audit`` under torchrun (the venv's torch, loopback only) and comparing results documents."""

from __future__ import annotations

import math
import os
import socket
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(REPO), e.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    e["OMP_NUM_THREADS"] = "1"
    e["SAE_AUDIT_DIST_TIMEOUT"] = "600"  # a loaded 2-core CI machine can take minutes to start 3 ranks
    e["GLOO_SOCKET_IFNAME"] = "lo"
    e.pop("CUDA_VISIBLE_DEVICES", None)
    e["CUDA_VISIBLE_DEVICES"] = ""  # gloo on CPU, as in CI
    return e


def torchrun(args: list[str], nproc: int = 2, extra: list[str] | None = None, timeout: float = 900,
             **popen) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --standalone --nproc_per_node N -m sae_audit.cli ARGS``."""
    launch = extra if extra is not None else ["--standalone", "--rdzv-endpoint", f"127.0.0.1:{free_port()}"]
    cmd = [sys.executable, "-m", "torch.distributed.run", *launch, "--nproc_per_node", str(nproc),
           "-m", "sae_audit.cli", *map(str, args)]
    return subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=timeout, cwd=REPO, **popen)


def one_process(args: list[str], timeout: float = 900) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "sae_audit.cli", *map(str, args)]
    return subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=timeout, cwd=REPO)


#: Keys that legitimately differ between two runs (when and how the audit ran).
VOLATILE = {"provenance", "wall_seconds", "created", "command"}


def differences(a, b, path: str = "", rel: float = 1e-6, abs_: float = 1e-9) -> list[str]:
    """Where two JSON documents differ: exact for ints, strings, bools and structure; floats to ``rel``."""
    out: list[str] = []
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) - VOLATILE != set(b) - VOLATILE:
            return [f"{path}: keys {sorted(set(a) ^ set(b))}"]
        for k in a:
            if k not in VOLATILE:
                out += differences(a[k], b[k], f"{path}.{k}", rel, abs_)
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: lengths {len(a)} != {len(b)}"]
        for i, (x, y) in enumerate(zip(a, b)):
            out += differences(x, y, f"{path}[{i}]", rel, abs_)
        return out
    if isinstance(a, float) or isinstance(b, float):
        if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
            return [] if a == b else [f"{path}: {a!r} != {b!r}"]
        if math.isclose(float(a), float(b), rel_tol=rel, abs_tol=abs_):
            return []
        return [f"{path}: {a!r} != {b!r}"]
    return [] if a == b and type(a) is type(b) else [f"{path}: {a!r} != {b!r}"]


def worker_of_rank(launcher: int, rank: int) -> int:
    """The pid of torchrun ``launcher``'s worker with ``RANK=rank``."""
    for _ in range(500):
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                if ppid != launcher:
                    continue
                environ = (entry / "environ").read_bytes().split(b"\0")
            except (OSError, ValueError, IndexError):
                continue
            if f"RANK={rank}".encode() in environ:
                return int(entry.name)
        time.sleep(0.02)
    raise AssertionError(f"no worker of rank {rank} under {launcher}")


def kill_job(proc: subprocess.Popen, ranks=(0, 1)) -> None:
    """SIGKILL torchrun launcher ``proc`` and its workers of ``ranks`` (torchrun starts them in their own
    sessions, so killing the launcher alone leaves them running)."""
    workers = [worker_of_rank(proc.pid, r) for r in ranks]
    proc.kill()
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
