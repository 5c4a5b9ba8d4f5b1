"""Running scripts and `accelerate launch` in subprocesses from tests: a free port, and a runner that kills the whole
process group on a timeout, so that no rank outlives a test."""

import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_in_process_group(command: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `command` on the CPU (ACCELERATE_USE_CPU=1, one thread per process: ranks share the cores) with this
    checkout importable, in its own process group; on a timeout kill the whole group and fail the test."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        "ACCELERATE_USE_CPU": "1",
        "OMP_NUM_THREADS": "1",
    }
    process = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        _, stderr = process.communicate()
        pytest.fail(f"{' '.join(command)} did not finish in {timeout} s (killed):\n{stderr[-5000:]}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def run_successfully(command: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """`run_in_process_group`, failing the test with the end of stderr when the command fails."""
    result = run_in_process_group(command, cwd, timeout)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stderr[-5000:]}"
    return result
