"""Every Triton kernel compiles for the GPUs it targets, without register spills: checked on a CPU-only machine.

The interpreter that runs the kernels in the other tests executes plain Python and accepts code that the compiler
rejects, so each kernel (forward, backward dk/dv, backward dq) is also compiled, for each of its autotune configs, to
a cubin for sm_90 and sm_80 (heads of 64, and of 128 in a slow test) by ``scripts/triton_compile_report.py`` with triton's compiler and the ``ptxas`` and
``cuobjdump`` that ship with triton: no driver or GPU needed. A kernel fails on a compile error, on any register
spill (stack frame or local memory > 0 bytes per thread) and on shared memory above the architecture's per-block
maximum. The script runs in a subprocess without TRITON_INTERPRET (which this test session sets, and which turns the
kernels into interpreter objects), with a fresh triton cache.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton", reason="the hstu_triton attention backend needs triton")

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "triton_compile_report.py"
PTXAS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"

pytestmark = pytest.mark.skipif(not PTXAS.exists(), reason=f"triton ships no ptxas here ({PTXAS})")


def _compile_and_check(tmp_path: Path, *arguments: str, allow_spills: bool = False) -> None:
    """Compiles the matrix `arguments` select (2 processes), prints its table, fails on any failing kernel."""
    environment = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    process = subprocess.run(
        [sys.executable, str(SCRIPT), "--table", "--workers", "2", "--cache_dir", str(tmp_path), *arguments],
        env=environment,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert process.stdout, process.stderr
    records = json.loads(process.stdout)
    table = process.stderr[process.stderr.index("kernel ") :]
    print(f"\n{' '.join(arguments)}\n{table}")
    failed = [
        r for r in records if r["error"] is not None or r["shared_over_limit"] or (r["spills"] and not allow_spills)
    ]
    assert not failed, f"{len(failed)} of {len(records)} kernels fail:\n" + "\n".join(
        line for line in table.splitlines() if not line.endswith(" ok")
    )
    assert {r["kernel"] for r in records} == {"fwd", "bwd_dkdv", "bwd_dq"}


def test_autotuning_prunes_to_the_candidates_of_the_inputs() -> None:
    """Each autotuner holds the candidates of every dtype and head size and, at a launch (every argument by keyword),
    keeps those `autotune_configs` lists for its inputs: the configs the compile tests check."""
    code = """
import torch
from hf_hstu.modeling import triton_hstu_attention as attention
for name in ("fwd", "bwd_dkdv", "bwd_dq"):
    kernel = getattr(attention, "_hstu_attn_" + name)
    kernel.nargs = {}
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for block_dqk, block_dv in ((16, 32), (64, 64), (32, 128), (128, 128)):
            arguments = {"Q": torch.empty(0, dtype=dtype), "BLOCK_DQK": block_dqk, "BLOCK_DV": block_dv}
            kept = [attention._config_key(config) for config in kernel.prune_configs(arguments)]
            shipped = attention.autotune_configs(name, dtype, max(block_dqk, block_dv))
            assert sorted(kept) == sorted(map(attention._config_key, shipped)), (name, dtype, block_dqk, block_dv)
print("ok")
"""
    environment = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    process = subprocess.run(
        [sys.executable, "-c", code],
        cwd=SCRIPT.parents[1],
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert process.stdout.strip() == "ok", process.stderr


def test_kernels_compile_without_spills_quick(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Every kernel and config in bf16 and fp32 with both biases, for sm_90."""
    with capsys.disabled():
        _compile_and_check(tmp_path, "--dtypes", "bf16", "fp32", "--biases", "11", "--archs", "90")


@pytest.mark.slow
def test_kernels_compile_without_spills_full_matrix(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Every kernel, config, dtype (fp32 exact and TF32, bf16, fp16), bias combination and architecture (sm_90,
    sm_80), with heads of 64."""
    with capsys.disabled():
        _compile_and_check(tmp_path)


@pytest.mark.slow
def test_kernels_compile_without_spills_full_matrix_large_heads(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The same for heads of 128 (their own candidates)."""
    with capsys.disabled():
        _compile_and_check(tmp_path, "--head_dim", "128")


@pytest.mark.slow
def test_kernels_compile_with_int64_timestamps(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Timestamps spanning 2^31 or more stay int64: a separate specialisation with the time bias on, rare (68 years of
    seconds, 25 days of milliseconds), whose 64-bit gaps may spill a few bytes in some configs: it must compile."""
    with capsys.disabled():
        _compile_and_check(tmp_path, "--timestamps", "i64", "--biases", "11", "01", allow_spills=True)
