"""The GPU acceptance run behind `scripts/gpu_acceptance.py`: correctness of the Triton kernels, attention speed, and
one training epoch through `accelerate launch`, under one time budget, as a JSON report.

Sections (each a list of cases; a case that fails, errors or is skipped for lack of time fails the run):

- ``correctness``: ``hstu_attention_jagged`` (the fused kernels, forward and backward) against
  :func:`hf_hstu.benchmarks.jagged_reference_attention` computed in float64 from the same (rounded) inputs, on ragged
  batches of lengths 1..4096, for every combination of the position and time biases, in fp32 and bf16 (fp16 in the
  CPU smoke run: bf16 arithmetic is broken in the Triton interpreter). Compared: the output and the gradients of q, k,
  v and of each bias table that is on. The error measure is ``max |kernel - reference| / max |reference|`` per tensor
  (:data:`TOLERANCES`).
- ``speed``: forward and forward+backward of the kernels ("triton"), the padded PyTorch reference ("eager") and
  ``torch.compile`` of it ("compile"), bf16, about 64k tokens a batch: ms (median of CUDA-event timings), TFLOP/s over
  the causal half, peak memory and first-call (compilation) seconds. The goal reported against is a kernel forward of
  at least 200 TFLOP/s at N = 2048 with 4 heads of 128 on an H100 (:data:`SPEED_GOAL`); missing it is reported, it
  does not fail the run.
- ``training``: one epoch of the ``ml-1m-hstu`` preset on ML-1M-shaped synthetic ratings (6,040 users, 3,706 items,
  about 1M events, written as a ``ratings.dat``) through ``accelerate launch --mixed_precision bf16
  scripts/train.py``: wall time, the loop's reported training seconds and test metrics, and the peak GPU memory in use
  on the device while it ran (sampled).

Before them a warm-up runs the same kernel calls in parallel processes (Triton and inductor compile every
specialisation once, into their on-disk caches), and the correctness section picks autotuning configs without timing
them. The budget is split: warm-up up to 25 %, correctness up to 45 % (both from the start), speed until the
training's reserve (150 s; 100 s with ``--quick``), training until the end; a section stops starting cases at its
deadline and each case left is reported as skipped, which fails the run.

Call :func:`run_acceptance` after ``TRITON_INTERPRET`` is decided (this module imports triton through ``hf_hstu``).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import itertools
import json
import math
import os
import platform
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

import hf_hstu
from hf_hstu.benchmarks import attention_inputs, attention_runner, jagged_reference_attention, measure_attention
from hf_hstu.modeling import triton_hstu_attention

SECTIONS = ("correctness", "speed", "training")
MODES = ("full", "quick", "cpu-smoke")
# max |kernel - reference| / max |reference| allowed per tensor, against a float64 reference on the same inputs
TOLERANCES = {torch.float32: 1e-4, torch.bfloat16: 1e-2, torch.float16: 2e-3}
SPEED_GOAL = {"seq_len": 2048, "num_heads": 4, "head_dim": 128, "forward_tflops": 200.0, "stated_for": "H100"}
NUM_BUCKETS = 128  # the model's default: the kernels compiled for these checks are the model's
BUCKET_DIVISOR = 0.301
SPEED_TOKENS = 65536
# versions whose declared requirements are checked against what is installed (reported, not failures)
CHECKED_DISTRIBUTIONS = ("hf_hstu", "datasets", "evaluate", "multiprocess", "transformers", "accelerate")
REPORTED_DISTRIBUTIONS = (
    "torch",
    "triton",
    "transformers",
    "accelerate",
    "huggingface_hub",
    "datasets",
    "evaluate",
    "safetensors",
    "pyarrow",
    "pandas",
    "numpy",
    "fsspec",
    "dill",
    "multiprocess",
    "xxhash",
)


@dataclass(frozen=True)
class CorrectnessCase:
    batch: str
    lengths: tuple[int, ...]
    num_heads: int
    dqk: int
    dv: int
    dtype: torch.dtype
    use_position_bias: bool
    use_time_bias: bool
    weights_dtype: torch.dtype | None = None  # the bias tables' dtype when not ``dtype`` (the model under autocast)

    @property
    def name(self) -> str:
        biases = "+".join(name for name, on in (("pos", self.use_position_bias), ("time", self.use_time_bias)) if on)
        dtype = str(self.dtype).removeprefix("torch.")
        if self.weights_dtype is not None:
            dtype += f" ({str(self.weights_dtype).removeprefix('torch.')} tables)"
        return f"{dtype} {biases or 'no-bias'} {self.num_heads}x{self.dqk}/{self.dv} {self.batch}"


@dataclass(frozen=True)
class SpeedCase:
    name: str
    seq_len: int
    num_heads: int
    head_dim: int
    tokens: int


@dataclass
class Plan:
    """What a mode runs."""

    mode: str
    device: torch.device
    correctness: list[CorrectnessCase]
    speed: list[SpeedCase]
    speed_dtype: torch.dtype
    backends: tuple[str, ...]
    compile_backend: str
    train_num_users: int
    train_num_items: int
    train_lengths: tuple[int, int]
    time_budget_s: float
    training_reserve_s: float
    correctness_share: float = 0.45
    warm_up_workers: int = 16  # processes compiling the kernels in parallel before the sections (0: none)
    warm_up_share: float = 0.25
    notes: list[str] = field(default_factory=list)


def _correctness_cases(
    batches: dict[str, list[int]],
    dtypes: tuple[torch.dtype, ...],
    main_shape: tuple[int, int, int],
    preset_shape: tuple[int, int, int],
    preset_batches: tuple[str, ...],
) -> list[CorrectnessCase]:
    """Every bias combination on every batch for the main head shape; both biases for the preset's head shape, and,
    in half precision, also with float32 tables (as the model runs under autocast)."""
    cases = []
    for dtype in dtypes:
        for (position, time_bias), (batch, lengths) in itertools.product(
            [(True, True), (True, False), (False, True), (False, False)], batches.items()
        ):
            cases.append(CorrectnessCase(batch, tuple(lengths), *main_shape, dtype, position, time_bias))
        for batch in preset_batches:
            cases.append(CorrectnessCase(batch, tuple(batches[batch]), *preset_shape, dtype, True, True))
            if dtype != torch.float32:
                cases.append(replace(cases[-1], weights_dtype=torch.float32))
    return cases


def make_plan(mode: str, time_budget_s: float | None = None, train_num_users: int | None = None) -> Plan:
    """The cases of a mode: ``full`` (the acceptance run, a GPU), ``quick`` (fewer cases, a GPU) or ``cpu-smoke``
    (the same code paths on tiny shapes in the Triton interpreter)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose among {MODES}")
    if mode == "cpu-smoke":
        correctness = _correctness_cases(
            {"tiny": [1, 5, 16, 17, 33]}, (torch.float32, torch.float16), (2, 16, 8), (1, 12, 12), ("tiny",)
        )
        return Plan(
            mode=mode,
            device=torch.device("cpu"),
            correctness=correctness,
            speed=[SpeedCase("tiny", 32, 1, 16, 64)],
            speed_dtype=torch.float32,
            backends=("triton", "eager", "compile"),
            compile_backend="aot_eager",  # the same dynamo + autograd path without a C++ compiler's minutes
            train_num_users=train_num_users or 60,
            train_num_items=200,
            train_lengths=(20, 40),
            time_budget_s=time_budget_s or 900.0,
            training_reserve_s=300.0,
            correctness_share=0.4,
            warm_up_workers=2,
            notes=[
                "cpu-smoke: Triton interpreter, fp16 stands in for bf16 (broken in the interpreter), compile uses "
                "the aot_eager backend, tiny shapes: this checks the script, not the kernels' speed"
            ],
        )
    short = [1, 2, 3, 7, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 127, 128, 129, 200, 255, 256, 257]
    ml1m = SpeedCase("ml-1m preset", 200, 1, 50, SPEED_TOKENS)
    goal = SpeedCase("goal", 2048, 4, 128, SPEED_TOKENS)
    if mode == "quick":
        batches = {"short": short, "mixed": [1, 2, 17, 64, 129, 200, 1025, 2049, 4096]}
        speed = [ml1m, goal]
        reserve, default_users = 100.0, 1000
    else:
        batches = {
            "short": short,
            "medium": [1, 300, 511, 512, 513, 777, 1023, 1024, 1025],
            "long": [1, 1500, 2047, 2048, 2049, 3001, 4095, 4096],
        }
        speed = [ml1m, goal, *(SpeedCase(f"N={n}", n, 4, 128, SPEED_TOKENS) for n in (256, 1024, 4096))]
        reserve, default_users = 150.0, 6040
    return Plan(
        mode=mode,
        device=torch.device("cuda"),
        correctness=_correctness_cases(
            batches, (torch.float32, torch.bfloat16), (2, 128, 128), (1, 50, 50), ("short",)
        ),
        speed=speed,
        speed_dtype=torch.bfloat16,
        backends=("triton", "eager", "compile"),
        compile_backend="inductor",
        train_num_users=train_num_users or default_users,
        train_num_items=3706,
        train_lengths=(20, 311),  # uniform: a mean of ~165 events, ML-1M's
        time_budget_s=time_budget_s or 420.0,  # 7 minutes: the run, install and start included, well within 8
        training_reserve_s=reserve,
    )


class Budget:
    """A global deadline and the section deadlines derived from it."""

    def __init__(self, total_s: float) -> None:
        self.start = time.monotonic()
        self.total_s = total_s

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def remaining(self, until_s: float | None = None) -> float:
        return (self.total_s if until_s is None else until_s) - self.elapsed()


# ----------------------------------------------------------------------------------------------------- correctness


def bucket_safe_timestamps(
    generator: torch.Generator, size: int = 64, margin: float = 1e-3, max_rounds: int = 10_000
) -> torch.Tensor:
    """``size`` sorted unix-second timestamps whose every pairwise gap lies at least ``margin`` (in bucket units)
    from a bucket boundary of ``floor(ln(gap) / divisor)``, up to the last bucket.

    The kernels and the reference compute that logarithm in float32 with different implementations: a gap within an
    ulp of a boundary may land in neighbouring buckets, which changes a score by a whole table entry. Drawing every
    timestamp from this pool keeps the comparison exact in that respect. The gaps between consecutive values are
    log-uniform from 1 s to ~15 years, and a few of ~3e9 years reach the clamp of the last bucket.
    """
    steps = torch.exp(20 * torch.rand(size, generator=generator)).long()
    steps[torch.randperm(size, generator=generator)[:2]] = 10**17
    values = 1_000_000_000 + steps.cumsum(0)
    for _ in range(max_rounds):
        gaps = (values[:, None] - values[None, :]).abs().clamp(min=1).double()
        position = gaps.log() / BUCKET_DIVISOR
        near = ((position - position.round()).abs() < margin) & (position > 0.5) & (position < NUM_BUCKETS + 0.5)
        if not near.any():
            return values.sort().values
        index = int(near.nonzero()[0, 0])
        values[index] += int(torch.randint(1, 1000, (1,), generator=generator))  # nudge one end of the pair
    raise RuntimeError(f"no bucket-safe timestamps after {max_rounds} rounds")


def _jagged_inputs(case: CorrectnessCase, device: torch.device, seed: int) -> dict:
    """Ragged random inputs of ``hstu_attention_jagged``; timestamps from :func:`bucket_safe_timestamps` (keys
    in time order within a sequence, queries anywhere in the pool: gaps of both signs)."""
    generator = torch.Generator().manual_seed(seed)
    total, max_len = sum(case.lengths), max(case.lengths)

    def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (scale * torch.randn(*shape, generator=generator)).to(device=device, dtype=case.dtype)

    pool = bucket_safe_timestamps(generator)
    key_timestamps = torch.cat(
        [pool[torch.randint(0, len(pool), (length,), generator=generator)].sort().values for length in case.lengths]
    )
    query_timestamps = pool[torch.randint(0, len(pool), (total,), generator=generator)]
    offsets = torch.tensor([0, *itertools.accumulate(case.lengths)])
    return {
        "query": randn(total, case.num_heads, case.dqk, scale=0.5),
        "key": randn(total, case.num_heads, case.dqk, scale=0.5),
        "value": randn(total, case.num_heads, case.dv),
        "seq_offsets": offsets.to(device),
        "max_seq_len": max_len,
        "position_weights": randn(2 * (max_len + 3) - 1, scale=0.5) if case.use_position_bias else None,
        "time_weights": randn(NUM_BUCKETS + 1, scale=0.5) if case.use_time_bias else None,
        "query_timestamps": query_timestamps.to(device),
        "key_timestamps": key_timestamps.to(device),
        "grad_output": randn(total, case.num_heads, case.dv),
    }


def _output_and_gradients(
    attention: Callable, inputs: dict, dtype: torch.dtype, weights_dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """The output and the gradients of <output, grad_output> with respect to q, k, v and the tables that are on
    (q, k, v in ``dtype``, the tables in ``weights_dtype``, by default ``dtype`` too)."""
    differentiable = {
        name: inputs[name].detach().to(dtype if name in ("query", "key", "value") else weights_dtype or dtype)
        for name in ("query", "key", "value", "position_weights", "time_weights")
        if inputs[name] is not None
    }
    differentiable = {name: tensor.requires_grad_() for name, tensor in differentiable.items()}
    arguments = {name: inputs[name] for name in ("query_timestamps", "key_timestamps")}
    output = attention(
        differentiable["query"],
        differentiable["key"],
        differentiable["value"],
        inputs["seq_offsets"],
        inputs["max_seq_len"],
        normalization=float(inputs["max_seq_len"]),
        position_weights=differentiable.get("position_weights"),
        time_weights=differentiable.get("time_weights"),
        num_buckets=NUM_BUCKETS,
        bucket_divisor=BUCKET_DIVISOR,
        **arguments,
    )
    gradients = torch.autograd.grad(output, list(differentiable.values()), inputs["grad_output"].to(output.dtype))
    return {"output": output.detach(), **{f"d_{name}": g for name, g in zip(differentiable, gradients, strict=True)}}


def compare(actual: torch.Tensor, expected: torch.Tensor) -> dict:
    """max |actual - expected| / max |expected| (``scaled_max_error``), the relative L2 error, and finiteness."""
    difference = (actual.double() - expected.double()).abs()
    scale = expected.abs().max().item() if expected.numel() else 0.0
    max_error = difference.max().item() if difference.numel() else 0.0
    norm = expected.double().norm().item()
    return {
        "scaled_max_error": max_error / scale if scale > 0 else (0.0 if max_error == 0 else math.inf),
        "relative_l2_error": difference.norm().item() / norm if norm > 0 else (0.0 if max_error == 0 else math.inf),
        "finite": bool(torch.isfinite(actual).all().item()),
        "shape_ok": tuple(actual.shape) == tuple(expected.shape),
    }


def check_correctness_case(case: CorrectnessCase, device: torch.device, seed: int = 0) -> dict:
    """One case: the kernels (in the case's dtype) against the float64 reference on the same rounded inputs."""
    inputs = _jagged_inputs(case, device, seed)
    # looked up at call time, so that a test can substitute a faulty kernel
    kernel = triton_hstu_attention.hstu_attention_jagged
    actual = _output_and_gradients(kernel, inputs, case.dtype, case.weights_dtype)
    expected = _output_and_gradients(jagged_reference_attention, inputs, torch.float64)
    tolerance = TOLERANCES[case.dtype]
    tensors = {name: compare(actual[name], expected[name]) for name in expected}
    ok = all(t["finite"] and t["shape_ok"] and t["scaled_max_error"] <= tolerance for t in tensors.values())
    worst = max(tensors, key=lambda name: tensors[name]["scaled_max_error"])
    return {
        "case": case.name,
        "ok": ok,
        "dtype": str(case.dtype).removeprefix("torch."),
        "weights_dtype": str(case.weights_dtype or case.dtype).removeprefix("torch."),
        "lengths": list(case.lengths),
        "num_heads": case.num_heads,
        "dqk": case.dqk,
        "dv": case.dv,
        "position_bias": case.use_position_bias,
        "time_bias": case.use_time_bias,
        "tolerance": tolerance,
        "worst_tensor": worst,
        "worst_scaled_max_error": tensors[worst]["scaled_max_error"],
        "tensors": tensors,
    }


def _autotuners() -> list:
    """The autotuned kernels of the Triton backend (whatever their names)."""
    from triton.runtime.autotuner import Autotuner

    return [value for value in vars(triton_hstu_attention).values() if isinstance(value, Autotuner)]


class _ArbitraryConfigChoice:
    """A stand-in for an autotuner's benchmark: runs the kernel once (compiling it) and reports a seeded random time,
    so that each tuning key settles on some config at once, and different keys on different configs."""

    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)

    def __call__(self, kernel_call: Callable[[], None], quantiles=None) -> list[float]:
        kernel_call()
        value = self.random.random()
        return [value, value, value]


@contextlib.contextmanager
def arbitrary_autotuning(seed: int = 0):
    """Autotune without timing inside the block (correctness does not care which config is fastest, and timing
    every config at every key costs minutes); the choices are forgotten on leaving, so timings made later tune."""
    missing = object()
    tuners = _autotuners()
    saved = [vars(tuner).get("do_bench", missing) for tuner in tuners]
    chooser = _ArbitraryConfigChoice(seed)
    for tuner in tuners:
        vars(tuner)["do_bench"] = chooser  # do_bench is a cached_property (or a plain attribute) of the instance
    try:
        yield
    finally:
        for tuner, previous in zip(tuners, saved, strict=True):
            if previous is missing:
                vars(tuner).pop("do_bench", None)
            else:
                vars(tuner)["do_bench"] = previous
            tuner.cache.clear()


def _chosen_configs() -> dict[str, str]:
    return {
        getattr(tuner, "base_fn", tuner).__name__: str(getattr(tuner, "best_config", None)) for tuner in _autotuners()
    }


# ------------------------------------------------------------------------------------------------- kernel warm-up
# Triton compiles each autotuning config of each kernel for every specialisation (dtypes, bias flags, head sizes,
# integers equal to 1 or divisible by 16) on first use, one after the other: minutes for the cases here. Worker
# processes make the same calls first, in parallel, filling Triton's on-disk cache that the run then loads from.


def _warm_up_tasks(plan: Plan) -> list[dict]:
    """One task per kernel specialisation that the sections will meet, the longest (with inductor) first."""
    tasks = []
    for case in plan.speed:
        tasks.append({"kind": "speed", "seq_len": case.seq_len, "num_heads": case.num_heads, "head_dim": case.head_dim})
        tasks[-1] |= {"tokens": case.tokens, "dtype": str(plan.speed_dtype).removeprefix("torch.")}
        tasks[-1] |= {"backends": [b for b in plan.backends if b != "eager"], "compile_backend": plan.compile_backend}
    if plan.device.type == "cuda":
        # the training run: bf16 q, k, v with fp32 tables under autocast (fp32 where evaluation runs outside it),
        # 1 head of 50, batches whose longest sequence is or is not a multiple of 16
        for dtype, lengths in itertools.product((torch.bfloat16, torch.float32), ((200, 150, 37), (192, 100))):
            training = CorrectnessCase("training", lengths, 1, 50, 50, dtype, True, True, torch.float32)
            tasks.append({"kind": "correctness", "case": _case_fields(training)})
    seen = set()
    for case in plan.correctness:
        longest = max(case.lengths)
        key = (case.dtype, case.weights_dtype, case.num_heads == 1, case.dqk, case.dv)
        key += (case.use_position_bias, case.use_time_bias)
        key += (longest % 16 == 0, (longest + 3) % 16 == 0)  # Triton specialises integers divisible by 16
        if key not in seen:
            seen.add(key)
            tasks.append({"kind": "correctness", "case": _case_fields(case)})
    return tasks


def _case_fields(case: CorrectnessCase) -> dict:
    return {
        "batch": case.batch,
        "lengths": list(case.lengths),
        "num_heads": case.num_heads,
        "dqk": case.dqk,
        "dv": case.dv,
        "dtype": str(case.dtype).removeprefix("torch."),
        "use_position_bias": case.use_position_bias,
        "use_time_bias": case.use_time_bias,
        "weights_dtype": None if case.weights_dtype is None else str(case.weights_dtype).removeprefix("torch."),
    }


def run_warm_up_task(task: dict, device: str) -> None:
    """One warm-up call: the kernels forward and backward on the inputs of a case (in a worker process)."""
    device = torch.device(device)
    with arbitrary_autotuning():
        if task["kind"] == "correctness":
            fields = task["case"]
            weights_dtype = fields["weights_dtype"] and getattr(torch, fields["weights_dtype"])
            case = CorrectnessCase(
                **fields | {"lengths": tuple(fields["lengths"]), "dtype": getattr(torch, fields["dtype"])},
            )
            case = replace(case, weights_dtype=weights_dtype)
            inputs = _jagged_inputs(case, device, seed=0)
            _output_and_gradients(triton_hstu_attention.hstu_attention_jagged, inputs, case.dtype, case.weights_dtype)
        else:
            batch_size = max(task["tokens"] // task["seq_len"], 1)
            dtype = getattr(torch, task["dtype"])
            inputs = attention_inputs(
                batch_size, task["seq_len"], task["num_heads"], task["head_dim"], NUM_BUCKETS, device, dtype
            )
            # the same calls as measure_attention: inference, then training; "compile" fills inductor's caches
            for backend in task["backends"]:
                run, differentiable = attention_runner(backend, inputs, NUM_BUCKETS, task["compile_backend"])
                with torch.no_grad():
                    run()
                output = run()
                torch.autograd.grad(output, differentiable, torch.ones_like(output))
                del output
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _warm_up_worker_main() -> None:
    """Entry point of a warm-up process: ``python -c '...' DEVICE TASK_JSON``."""
    run_warm_up_task(json.loads(sys.argv[2]), sys.argv[1])


def run_warm_up(plan: Plan, budget: Budget, deadline_s: float, log: Callable[[str], None]) -> dict:
    """Run the warm-up tasks in up to ``plan.warm_up_workers`` processes at once until done or the deadline (then
    they are killed: the run goes on, slower). Not a correctness check: its errors are reported, not failures."""
    start = budget.elapsed()
    tasks = _warm_up_tasks(plan)
    if plan.device.type != "cuda":
        tasks = tasks[: plan.warm_up_workers]  # the interpreter compiles nothing: the code path alone
    workers = min(plan.warm_up_workers, len(tasks), os.cpu_count() or 1)
    # the workers import the hf_hstu this process runs (not one that their working directory would shadow it with)
    package_parent = str(Path(hf_hstu.__file__).resolve().parent.parent)
    code = (
        f"import sys; sys.path.insert(0, {package_parent!r}); import hf_hstu.acceptance as a; a._warm_up_worker_main()"
    )
    pending, running, finished, errors = list(tasks), [], 0, []
    while (pending or running) and budget.remaining(deadline_s) > 0:
        while pending and len(running) < workers:
            task, log_file = pending.pop(0), tempfile.TemporaryFile()  # a file: a full pipe would block a worker
            command = [sys.executable, "-c", code, str(plan.device), json.dumps(task)]
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log_file)
            running.append((task, process, log_file))
        time.sleep(0.1)
        for entry in list(running):
            task, process, log_file = entry
            if process.poll() is not None:
                running.remove(entry)
                finished += 1
                if process.returncode:
                    log_file.seek(0)
                    errors.append({"task": task, "stderr_tail": log_file.read().decode(errors="replace")[-2000:]})
                log_file.close()
    for _, process, log_file in running:  # out of time
        process.kill()
        process.wait()
        log_file.close()
    result = {
        "tasks": len(tasks),
        "workers": workers,
        "finished": finished,
        "killed_for_time": len(running),
        "not_started": len(pending),
        "errors": errors,
        "seconds": budget.elapsed() - start,
    }
    log(f"warm-up: {finished}/{len(tasks)} tasks in {result['seconds']:.1f} s with {workers} processes")
    return result


def run_correctness(plan: Plan, budget: Budget, deadline_s: float, log: Callable[[str], None]) -> dict:
    start = budget.elapsed()
    cases, skipped = [], []
    for index, case in enumerate(plan.correctness):
        if budget.remaining(deadline_s) <= 0:
            skipped = [c.name for c in plan.correctness[index:]]
            break
        case_start = time.monotonic()
        try:
            with arbitrary_autotuning(seed=index):
                result = check_correctness_case(case, plan.device, seed=index)
                result["kernel_configs"] = _chosen_configs()
        except Exception as error:  # noqa: BLE001 - a crash is a failed case, reported with the others
            result = {"case": case.name, "ok": False, "error": f"{type(error).__name__}: {error}"}
        result["seconds"] = time.monotonic() - case_start
        cases.append(result)
        log(
            f"correctness {case.name}: {'ok' if result['ok'] else 'FAILED'}"
            + (
                f" (worst {result['worst_tensor']} {result['worst_scaled_max_error']:.2e})"
                if "worst_tensor" in result
                else ""
            )
        )
        if plan.device.type == "cuda":
            torch.cuda.empty_cache()
    return {
        "ok": bool(cases) and all(c["ok"] for c in cases) and not skipped,
        "seconds": budget.elapsed() - start,
        "tolerances": {str(dtype).removeprefix("torch."): tol for dtype, tol in TOLERANCES.items()},
        "error_measure": "max |kernel - reference| / max |reference| per tensor; float64 reference, same inputs",
        "cases": cases,
        "skipped_for_time": skipped,
    }


# ----------------------------------------------------------------------------------------------------------- speed


def run_speed(plan: Plan, budget: Budget, deadline_s: float, log: Callable[[str], None]) -> dict:
    start = budget.elapsed()
    rows, skipped, errors = [], [], []
    cpu = plan.device.type != "cuda"
    for case in plan.speed:
        batch_size = max(case.tokens // case.seq_len, 1)
        inputs = None
        for backend in plan.backends:
            label = f"{case.name} {backend}"
            if budget.remaining(deadline_s) <= 0:
                skipped.append(label)
                continue
            if inputs is None:
                inputs = attention_inputs(
                    batch_size, case.seq_len, case.num_heads, case.head_dim, NUM_BUCKETS, plan.device, plan.speed_dtype
                )
            row = {
                "case": case.name,
                "backend": backend,
                "seq_len": case.seq_len,
                "batch_size": batch_size,
                "num_heads": case.num_heads,
                "head_dim": case.head_dim,
            }
            try:
                row.update(
                    measure_attention(
                        backend,
                        inputs,
                        NUM_BUCKETS,
                        compile_backend=plan.compile_backend,
                        repeat_ms=20.0 if cpu else 100.0,
                        min_repeats=2 if cpu else 5,
                    )
                )
            except Exception as error:  # noqa: BLE001 - reported, and fails the section
                row["error"] = f"{type(error).__name__}: {error}"
            # the kernels must run; the reference running out of memory is a measurement, not a failure
            if "error" in row or (backend == "triton" and any(key.endswith("_error") for key in row)):
                errors.append(label)
            rows.append(row)
            log(
                f"speed {label}: "
                + ", ".join(
                    f"{part} {row[f'{part}_ms']:.3f} ms {row[f'{part}_tflops']:.1f} TFLOP/s"
                    for part in ("forward", "forward_backward")
                    if f"{part}_ms" in row
                )
            )
        del inputs
        if not cpu:
            torch.cuda.empty_cache()
    goal_row = next(
        (
            r
            for r in rows
            if r["backend"] == "triton"
            and (r["seq_len"], r["num_heads"], r["head_dim"])
            == (SPEED_GOAL["seq_len"], SPEED_GOAL["num_heads"], SPEED_GOAL["head_dim"])
        ),
        None,
    )
    measured = goal_row.get("forward_tflops") if goal_row else None
    return {
        "ok": not skipped and not errors,
        "seconds": budget.elapsed() - start,
        "dtype": str(plan.speed_dtype).removeprefix("torch."),
        "timing": "median of CUDA-event timings after a warm-up, L2 flushed between calls (wall clock on a CPU)",
        "flops": "causal half: forward 2 * B * H * N^2 * d, forward+backward 3.5 times that",
        "eager": "hf_hstu.benchmarks.padded_reference_attention (the model's eager operations), all tokens real",
        "compile_backend": plan.compile_backend,
        "goal": {
            **SPEED_GOAL,
            "measured_forward_tflops": measured,
            "met": None if measured is None else measured >= SPEED_GOAL["forward_tflops"],
        },
        "results": rows,
        "errors": errors,
        "skipped_for_time": skipped,
    }


# -------------------------------------------------------------------------------------------------------- training


def write_ml1m_shaped_ratings(
    directory: Path, num_users: int, num_items: int, lengths: tuple[int, int], seed: int = 0
) -> dict:
    """A ``ratings.dat`` in ML-1M's format (``UserID::MovieID::Rating::Timestamp``) from the seeded synthetic
    interaction generator; returns its shape."""
    from hf_hstu.data.synthetic import make_synthetic_interactions

    frame = make_synthetic_interactions(
        num_users=num_users,
        num_items=num_items,
        num_clusters=min(20, num_items),
        min_length=lengths[0],
        max_length=lengths[1],
        seed=seed,
    )
    directory.mkdir(parents=True, exist_ok=True)
    columns = frame[["user_id", "item_id", "rating", "timestamp"]].to_numpy(dtype=np.int64)
    np.savetxt(directory / "ratings.dat", columns, fmt="%d::%d::%d::%d")
    return {"users": int(frame["user_id"].nunique()), "items": int(frame["item_id"].nunique()), "events": len(frame)}


class _DeviceMemorySampler:
    """Samples the memory in use on the GPU (every process) from a thread; ``peak_mib`` is above the start."""

    def __init__(self, device: torch.device, interval_s: float = 0.2) -> None:
        self.device, self.interval_s = device, interval_s
        self.peak_mib: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _used(self) -> int:
        free, total = torch.cuda.mem_get_info(self.device)
        return total - free

    def _run(self) -> None:
        baseline = peak = self._used()
        while not self._stop.wait(self.interval_s):
            peak = max(peak, self._used())
        self.peak_mib = (peak - baseline) / 2**20

    def __enter__(self) -> _DeviceMemorySampler:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self._stop.set()
            self._thread.join()


def training_command(
    train_script: Path, raw_dir: Path, output_dir: Path, cpu: bool, python: str = sys.executable
) -> list[str]:
    """``accelerate launch --mixed_precision bf16 scripts/train.py`` for one epoch of the ml-1m-hstu preset."""
    launcher = [python, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1"]
    launcher += ["--mixed_precision", "bf16", "--dynamo_backend", "no", *(["--cpu"] if cpu else [])]
    return [
        *launcher,
        str(train_script),
        *("--preset", "ml-1m-hstu", "--dataset", "ml-1m", "--raw_dir", str(raw_dir)),
        *("--num_epochs", "1", "--output_dir", str(output_dir), "--overwrite_output_dir", "true"),
        *("--report_to", "none", "--seed", "0"),
    ]


def run_training(plan: Plan, budget: Budget, train_script: Path, work_dir: Path, log: Callable[[str], None]) -> dict:
    start = budget.elapsed()
    timeout = budget.remaining() - 5
    result: dict = {"ok": False, "preset": "ml-1m-hstu"}
    if timeout < 10:
        return {**result, "seconds": 0.0, "skipped_for_time": ["training"]}
    raw_dir, output_dir = work_dir / "ml-1m-shaped", work_dir / "train_output"
    result["data"] = write_ml1m_shaped_ratings(raw_dir, plan.train_num_users, plan.train_num_items, plan.train_lengths)
    command = training_command(train_script, raw_dir, output_dir, cpu=plan.device.type != "cuda")
    result["command"] = " ".join(command)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(work_dir / "hf_home")}
    env.setdefault("PYTHONUNBUFFERED", "1")
    log(f"training: {result['data']['users']} users, {result['data']['events']} events; {result['command']}")
    wall_start = time.monotonic()
    with _DeviceMemorySampler(plan.device) as sampler:
        try:
            completed = subprocess.run(
                command, env=env, capture_output=True, text=True, timeout=timeout, cwd=train_script.parent.parent
            )
            result["returncode"], output = completed.returncode, completed.stdout + completed.stderr
        except subprocess.TimeoutExpired as error:
            result["returncode"] = None
            output = (
                (error.stdout or b"").decode(errors="replace")
                if isinstance(error.stdout, bytes)
                else (error.stdout or "")
            )
            result["error"] = f"killed after {timeout:.0f} s: over the time budget"
    result["wall_seconds"] = time.monotonic() - wall_start
    result["peak_gpu_memory_mib"] = sampler.peak_mib
    result["peak_gpu_memory_measure"] = "device memory in use, sampled every 0.2 s, above its level at the launch"
    results_file = output_dir / "results.json"
    if results_file.is_file():
        saved = json.loads(results_file.read_text())
        result["train_seconds"] = saved.get("train_seconds")
        result["best_epoch"] = saved.get("best_epoch")
        result["test_metrics"] = saved.get("test_metrics")
    metrics = result.get("test_metrics") or {}
    result["ok"] = (
        result["returncode"] == 0
        and bool(metrics)
        and all(isinstance(v, (int, float)) and math.isfinite(v) for v in metrics.values())
    )
    if not result["ok"]:
        result["output_tail"] = output[-4000:]
    result["seconds"] = budget.elapsed() - start
    log(f"training: {'ok' if result['ok'] else 'FAILED'} in {result['wall_seconds']:.1f} s")
    return result


# ------------------------------------------------------------------------------------------------------ environment


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def requirement_problems(distributions: tuple[str, ...] = CHECKED_DISTRIBUTIONS) -> list[str]:
    """Declared requirements (without extras) of ``distributions`` that the installed versions do not meet."""
    from packaging.requirements import Requirement

    problems = []
    for distribution in distributions:
        try:
            requirements = importlib.metadata.requires(distribution) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for text in requirements:
            requirement = Requirement(text)
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue
            installed = _version(requirement.name)
            if installed is None:
                problems.append(f"{distribution} needs {requirement}: not installed")
            elif requirement.specifier and not requirement.specifier.contains(installed, prereleases=True):
                problems.append(f"{distribution} needs {requirement}: {installed} installed")
    return problems


def _file_digests(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*.py"))
        if "__pycache__" not in path.parts
    }


def package_matches_checkout(checkout: Path) -> tuple[bool, list[str]]:
    """Whether the imported ``hf_hstu`` has the checkout's Python files (a stale installed wheel does not)."""
    imported = Path(hf_hstu.__file__).resolve().parent
    source = checkout / "hf_hstu"
    if not source.is_dir() or imported == source.resolve():
        return True, []
    wanted, found = _file_digests(source), _file_digests(imported)
    return not (
        differing := sorted(n for n in wanted.keys() | found.keys() if wanted.get(n) != found.get(n))
    ), differing


def environment(plan: Plan, checkout: Path) -> dict:
    matches, differing = package_matches_checkout(checkout)
    info = {
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in REPORTED_DISTRIBUTIONS},
        "hf_hstu_path": str(Path(hf_hstu.__file__).resolve().parent),
        "hf_hstu_matches_checkout": matches,
        "hf_hstu_differing_files": differing[:20],
        "requirement_problems": requirement_problems(),
        "triton_interpreter": triton_hstu_attention.INTERPRET,
    }
    if plan.device.type == "cuda":
        properties = torch.cuda.get_device_properties(plan.device)
        info |= {
            "device": torch.cuda.get_device_name(plan.device),
            "capability": ".".join(map(str, torch.cuda.get_device_capability(plan.device))),
            "gpu_memory_gib": round(properties.total_memory / 2**30, 1),
            "cuda": torch.version.cuda,
        }
    else:
        info["device"] = "cpu (Triton interpreter)"
    return info


# ------------------------------------------------------------------------------------------------------------- run


def run_acceptance(
    mode: str,
    checkout: Path,
    *,
    sections: tuple[str, ...] = SECTIONS,
    time_budget_s: float | None = None,
    train_num_users: int | None = None,
    work_dir: Path | None = None,
    log: Callable[[str], None] = lambda message: print(message, file=sys.stderr, flush=True),
) -> dict:
    """Run the sections of ``mode``; the report's ``ok`` is False on any failed, crashed or skipped case."""
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise ValueError(f"unknown sections {sorted(unknown)}; choose among {SECTIONS}")
    plan = make_plan(mode, time_budget_s, train_num_users)
    budget = Budget(plan.time_budget_s)
    report: dict = {"mode": mode, "time_budget_s": plan.time_budget_s, "notes": plan.notes}
    report["environment"] = environment(plan, checkout)
    failures = []
    if not report["environment"]["hf_hstu_matches_checkout"]:
        failures.append(
            "environment: the imported hf_hstu differs from the checkout (a stale wheel?): rebuild the bundle with "
            "scripts/prepare_gpu_bundle.py"
        )
    training_reserve = plan.training_reserve_s if "training" in sections else 0.0
    results: dict = {}
    if plan.warm_up_workers and {"correctness", "speed"} & set(sections):
        report["warm_up"] = run_warm_up(plan, budget, plan.time_budget_s * plan.warm_up_share, log)
    if "correctness" in sections:
        share = plan.correctness_share if "speed" in sections else 1.0
        deadline = min(plan.time_budget_s * share, plan.time_budget_s - training_reserve)
        results["correctness"] = run_correctness(plan, budget, deadline, log)
    if "speed" in sections:
        results["speed"] = run_speed(plan, budget, plan.time_budget_s - training_reserve, log)
    if "training" in sections:
        with tempfile.TemporaryDirectory(prefix="hstu_acceptance_", dir=work_dir) as directory:
            results["training"] = run_training(plan, budget, checkout / "scripts" / "train.py", Path(directory), log)
    for name, section in results.items():
        if not section["ok"]:
            failed = [c["case"] for c in section.get("cases", []) if not c["ok"]]
            failed += section.get("errors", [])
            skipped = section.get("skipped_for_time", [])
            failures.append(
                f"{name}: "
                + "; ".join(
                    part
                    for part in (
                        f"failed {failed}" if failed else "",
                        f"skipped for lack of time {skipped}" if skipped else "",
                        section.get("error", ""),
                    )
                    if part
                )
                or f"{name}: failed"
            )
    report["sections"] = results
    report["elapsed_s"] = budget.elapsed()
    if report["elapsed_s"] > plan.time_budget_s:
        failures.append(f"over the time budget: {report['elapsed_s']:.0f} s > {plan.time_budget_s:.0f} s")
    report["failures"] = failures
    report["ok"] = not failures
    return report


def summary_table(report: dict) -> str:
    """A short plain-text table of a report."""
    lines = [f"{'section':<12} {'case':<44} result"]
    warm_up = report.get("warm_up")
    if warm_up:
        lines.append(
            f"{'warm-up':<12} {'kernel compilation, parallel processes':<44} "
            f"{warm_up['finished']}/{warm_up['tasks']} tasks in {warm_up['seconds']:.0f} s "
            f"({warm_up['killed_for_time']} killed, {len(warm_up['errors'])} errors)"
        )
    sections = report.get("sections", {})
    for section_name in ("correctness",):
        section = sections.get(section_name)
        if not section:
            continue
        by_dtype: dict[str, list[dict]] = {}
        for case in section["cases"]:
            by_dtype.setdefault(case.get("dtype", "?"), []).append(case)
        for dtype, cases in by_dtype.items():
            passed = sum(c["ok"] for c in cases)
            worst = max((c.get("worst_scaled_max_error", math.inf) for c in cases), default=math.nan)
            tolerance = cases[0].get("tolerance", math.nan)
            lines.append(
                f"{'correctness':<12} {dtype + ' (all cases)':<44} {passed}/{len(cases)} ok, worst error "
                f"{worst:.2e} (tolerance {tolerance:.0e})"
            )
        if section["skipped_for_time"]:
            lines.append(f"{'correctness':<12} {'skipped for lack of time':<44} {len(section['skipped_for_time'])}")
    speed = sections.get("speed")
    if speed:
        for row in speed["results"]:
            shape = f"B={row['batch_size']} N={row['seq_len']} {row['num_heads']}x{row['head_dim']}"
            label = f"{row['case']} {shape} {row['backend']}"
            cells = []
            for part, short in (("forward", "fwd"), ("forward_backward", "fwd+bwd")):
                if f"{part}_ms" in row:
                    memory = row.get(f"{part}_peak_memory_mib")
                    cells.append(
                        f"{short} {row[f'{part}_ms']:.3f} ms {row[f'{part}_tflops']:.1f} TF"
                        + (f" {memory:.0f} MiB" if memory is not None else "")
                    )
                else:
                    cells.append(f"{short} {row.get(f'{part}_error', row.get('error', 'n/a'))}")
            lines.append(f"{'speed':<12} {label:<44} {' | '.join(cells)}")
        goal = speed["goal"]
        lines.append(
            f"{'speed':<12} {'goal: fwd >= 200 TF, N=2048 4x128 (H100)':<44} measured "
            f"{goal['measured_forward_tflops']}, met {goal['met']}"
        )
        if speed["skipped_for_time"]:
            lines.append(f"{'speed':<12} {'skipped for lack of time':<44} {speed['skipped_for_time']}")
    training = sections.get("training")
    if training:
        memory, train_seconds = training.get("peak_gpu_memory_mib"), training.get("train_seconds")
        memory_text = "n/a" if memory is None else f"{memory:.0f} MiB"
        train_text = "n/a" if train_seconds is None else f"{train_seconds:.1f} s"
        lines.append(
            f"{'training':<12} {'ml-1m-hstu, 1 epoch, bf16, accelerate':<44} "
            f"{'ok' if training['ok'] else 'FAILED'}, {training.get('wall_seconds', 0):.1f} s wall, "
            f"train {train_text}, peak {memory_text}"
        )
    verdict = "OK" if report.get("ok") else "FAILED"
    lines.append(f"{'total':<12} {report.get('mode', ''):<44} {verdict} in {report.get('elapsed_s', 0):.0f} s")
    for failure in report.get("failures", []):
        lines.append(f"FAILURE: {failure}")
    return "\n".join(lines)


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def report_json(report: dict) -> str:
    """The report as strict JSON (non-finite numbers as strings)."""
    return json.dumps(_jsonable(report), indent=1, allow_nan=False)
