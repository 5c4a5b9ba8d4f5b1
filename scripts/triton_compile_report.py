"""Compile every HSTU Triton kernel for every autotune config to a cubin, without a GPU; report resource usage.

For each (kernel, config, dtype, bias combination, architecture) the kernel is compiled by triton's own compiler
for an explicit target (sm_80 or sm_90) with the ``ptxas`` that ships with triton, and ``cuobjdump -res-usage``
(shipped too) reads the registers, stack frame and local memory per thread of the cubin; the shared memory is
triton's metadata. Nothing needs a driver or a GPU. Prints one JSON document: a list of records, each with an
``error`` (the compile error, or None), ``spills`` (stack or local bytes > 0) and ``shared_over_limit``; --table
also prints them as a text table to stderr. Exits with status 1 when any kernel fails one of those checks.

    python scripts/triton_compile_report.py
    python scripts/triton_compile_report.py --archs 90 --dtypes bf16 fp32 --biases 11 --workers 2

The kernels must be compiled, not interpreted: TRITON_INTERPRET is removed from the environment before triton is
imported, and the triton cache lives in a fresh temporary folder (removed afterwards) unless --cache_dir is given,
so that no stale binary is reused.
"""

from __future__ import annotations

import os

# Before anything imports triton: TRITON_INTERPRET would turn the kernels into interpreter objects.
os.environ.pop("TRITON_INTERPRET", None)
# Triton 3.9's default (fused multiply-add on), stated to silence its warning that the default will change.
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402

# The kernels of the checkout this script belongs to, not of whichever hf_hstu is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KERNELS = ("fwd", "bwd_dkdv", "bwd_dq")
DTYPES = ("fp32", "tf32", "bf16", "fp16")  # tf32: fp32 inputs with allow_tf32
ARCHS = (90, 80)
BIASES = ("11", "10", "01", "00")  # position bias on/off, time bias on/off
# Most dynamic shared memory one block may use (cudaDevAttrMaxSharedMemoryPerBlockOptin).
SHARED_LIMITS = {80: 166912, 90: 232448}
_RESOURCE = re.compile(r"(REG|STACK|SHARED|LOCAL):(\d+)")


def _signature(kernel: str, dtype: str, position_bias: bool, time_bias: bool, head_dim: int, timestamps: str):
    """(signature, constexprs, attrs) of one kernel, as the runtime specialises a call with contiguous tensors.

    Pointers and strides are 16-divisible (the runtime's specialisation for allocated tensors and head sizes that
    are multiples of 16); a disabled bias passes None, which becomes a constexpr.
    """
    from hf_hstu.modeling import triton_hstu_attention as attention

    jit_fn = getattr(attention, f"_hstu_attn_{kernel}").fn
    pointer = "*fp32" if dtype == "tf32" else f"*{dtype}"
    types = {
        "Q": pointer,
        "K": pointer,
        "V": pointer,
        "OUT": pointer,
        "DOUT": pointer,
        "DK": pointer,
        "DV_OUT": pointer,
        "DQ": pointer,
        "DW_P": "*fp32" if position_bias else None,
        "DW_T_PARTIAL": "*fp32" if time_bias else None,
        "SEQ_OFFSETS": "*i64",
        "QUERY_TS": f"*{timestamps}" if time_bias else None,
        "KEY_TS": f"*{timestamps}" if time_bias else None,
        "W_P": pointer if position_bias else None,
        "W_T": pointer if time_bias else None,
    }
    constexprs = {
        "DQK": head_dim,
        "DV": head_dim,
        "BLOCK_DQK": head_dim,
        "BLOCK_DV": head_dim,
        "BLOCK_BUCKETS": 256,  # num_buckets = 128: 129 entries
        "HAS_POSITION_BIAS": position_bias,
        "HAS_TIME_BIAS": time_bias,
        "INPUT_PRECISION": "ieee" if dtype == "fp32" else "tf32",  # as hstu_attention_jagged chooses
    }
    signature, attrs = {}, {}
    for index, name in enumerate(jit_fn.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in types:
            if types[name] is None:
                signature[name], constexprs[name] = "constexpr", None
            else:
                signature[name] = types[name]
                attrs[(index,)] = [["tt.divisibility", 16]]
        elif name.startswith("stride_"):
            signature[name] = "i32"
            attrs[(index,)] = [["tt.divisibility", 16]]
        elif name in ("scale", "bucket_divisor"):
            signature[name] = "fp32"
        elif name in ("BLOCK_M", "BLOCK_N"):
            signature[name] = "constexpr"  # set per config
        else:
            signature[name] = "i32"
    return jit_fn, signature, {name: constexprs[name] for name in jit_fn.arg_names if name in constexprs}, attrs


def _resources(cubin: bytes, work_dir: str) -> dict[str, int]:
    """REG, STACK, SHARED and LOCAL of the one kernel of a cubin, from the shipped cuobjdump."""
    import triton

    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin", dir=work_dir, delete=False) as file:
        file.write(cubin)
    try:
        listing = subprocess.run(
            [str(cuobjdump), "-res-usage", file.name], check=True, capture_output=True, text=True
        ).stdout
    finally:
        os.remove(file.name)
    return {key: int(value) for key, value in _RESOURCE.findall(listing)}


def _configs(kernel: str, dtype: str, head_dim: int) -> list[dict]:
    """The autotune configs the module ships for this kernel, dtype and head size, as plain dicts."""
    from hf_hstu.modeling import triton_hstu_attention as attention

    return [
        {
            "BLOCK_M": c.kwargs["BLOCK_M"],
            "BLOCK_N": c.kwargs["BLOCK_N"],
            "num_warps": c.num_warps,
            "num_stages": c.num_stages,
        }
        for c in attention.autotune_configs(kernel, dtype, head_dim)
    ]


def compile_one(job: dict) -> dict:
    """Compiles one (kernel, config, dtype, biases, arch) job; the job dict plus its resources or its error."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    jit_fn, signature, constexprs, attrs = _signature(
        job["kernel"], job["dtype"], job["position_bias"], job["time_bias"], job["head_dim"], job["timestamps"]
    )
    constexprs = {**constexprs, "BLOCK_M": job["BLOCK_M"], "BLOCK_N": job["BLOCK_N"]}
    record = dict(job)
    try:
        compiled = triton.compile(
            ASTSource(fn=jit_fn, signature=signature, constexprs=constexprs, attrs=attrs),
            target=GPUTarget("cuda", job["arch"], 32),
            options={"num_warps": job["num_warps"], "num_stages": job["num_stages"]},
        )
        resources = _resources(compiled.asm["cubin"], os.environ["TRITON_CACHE_DIR"])
    except Exception as error:  # noqa: BLE001 - reported per job, the test fails on it
        record.update(error=f"{type(error).__name__}: {error}"[:2000])
        return record
    record.update(
        error=None,
        registers=resources.get("REG", 0),
        stack=resources.get("STACK", 0),
        local=resources.get("LOCAL", 0),
        shared=compiled.metadata.shared,
    )
    record["spills"] = record["stack"] > 0 or record["local"] > 0
    record["shared_over_limit"] = record["shared"] > SHARED_LIMITS[job["arch"]]
    return record


def jobs(kernels, dtypes, biases, archs, head_dim: int, timestamps: str) -> list[dict]:
    """Every (kernel, config, dtype, bias combination, arch) to compile."""
    return [
        {
            "kernel": kernel,
            **config,
            "dtype": dtype,
            "position_bias": bias[0] == "1",
            "time_bias": bias[1] == "1",
            "arch": arch,
            "head_dim": head_dim,
            "timestamps": timestamps,
        }
        for kernel in kernels
        for dtype in dtypes
        for config in _configs(kernel, dtype, head_dim)
        for bias in biases
        for arch in archs
    ]


def compile_all(
    kernels=KERNELS, dtypes=DTYPES, biases=BIASES, archs=ARCHS, head_dim=64, timestamps="i32", workers=2, cache_dir=None
):
    """Compiles the whole matrix in `workers` processes; returns the records in job order."""
    own_cache = cache_dir is None
    os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="triton_cache_") if own_cache else str(cache_dir)
    try:
        import hf_hstu.modeling.triton_hstu_attention  # noqa: F401 - imported once, before the workers fork

        todo = jobs(kernels, dtypes, biases, archs, head_dim, timestamps)
        # largest kernels first, so that the pool's last jobs are short
        order = sorted(range(len(todo)), key=lambda i: -(todo[i]["BLOCK_M"] * todo[i]["BLOCK_N"]))
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            done = dict(zip(order, pool.map(compile_one, [todo[i] for i in order]), strict=True))
        return [done[i] for i in range(len(todo))]
    finally:
        if own_cache:
            shutil.rmtree(os.environ["TRITON_CACHE_DIR"], ignore_errors=True)


def format_table(records: list[dict]) -> str:
    """The records as a fixed-width text table."""
    header = "kernel    BM  BN  w s dtype pos time sm  regs stack local  shared  status"
    lines = [header]
    for r in records:
        config = f"{r['kernel']:<8} {r['BLOCK_M']:>4}{r['BLOCK_N']:>4} {r['num_warps']} {r['num_stages']}"
        flags = f"{r['dtype']:<5} {int(r['position_bias']):>3} {int(r['time_bias']):>4} {r['arch']}"
        if r["error"] is not None:
            lines.append(f"{config} {flags}  ERROR {r['error'].splitlines()[0][:120]}")
            continue
        status = "SPILL" if r["spills"] else ("SHARED>MAX" if r["shared_over_limit"] else "ok")
        lines.append(f"{config} {flags} {r['registers']:>5} {r['stack']:>5} {r['local']:>5} {r['shared']:>7}  {status}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kernels", nargs="+", choices=KERNELS, default=list(KERNELS))
    parser.add_argument("--dtypes", nargs="+", choices=DTYPES, default=list(DTYPES))
    parser.add_argument("--biases", nargs="+", choices=BIASES, default=list(BIASES), help="position, time: 1 on")
    parser.add_argument("--archs", nargs="+", type=int, choices=ARCHS, default=list(ARCHS))
    parser.add_argument("--head_dim", type=int, default=64, help="d_qk = d_v (a power of 2)")
    parser.add_argument(
        "--timestamps",
        choices=("i32", "i64"),
        default="i32",
        help="timestamp dtype: i32 (rebased, the usual case) or i64 (timestamps spanning 2^31 or more)",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cache_dir", default=None, help="triton cache (default: a fresh temporary folder)")
    parser.add_argument("--table", action="store_true", help="also print a text table, to stderr")
    args = parser.parse_args()
    records = compile_all(
        args.kernels, args.dtypes, args.biases, args.archs, args.head_dim, args.timestamps, args.workers, args.cache_dir
    )
    print(json.dumps(records, indent=1))
    if args.table:
        print(format_table(records), file=sys.stderr)
    failed = [r for r in records if r["error"] is not None or r["spills"] or r["shared_over_limit"]]
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
