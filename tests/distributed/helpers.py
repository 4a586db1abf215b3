"""Launching ``sae-audit`` under torchrun (the venv's torch, loopback only) and comparing results documents."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
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
