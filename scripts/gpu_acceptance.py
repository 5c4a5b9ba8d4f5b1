"""GPU acceptance run: Triton kernel correctness (fp32 and bf16, lengths 1..4096, every bias combination, outputs
and all gradients), attention speed (triton vs eager vs torch.compile, bf16, ~64k tokens, TFLOP/s, ms, peak memory)
and one ml-1m-hstu epoch through `accelerate launch --mixed_precision bf16`, in one time budget (default 420 s).

Prints the JSON report on stdout (and to `--output FILE`) and a short table on stderr; exits 0 when everything
passed, 1 on any failure (a failed, crashed or skipped-for-time case), 2 without CUDA. See `hf_hstu.acceptance`.

    python scripts/gpu_acceptance.py                   # the full run (one H100/H200, under 8 minutes)
    python scripts/gpu_acceptance.py --quick           # fewer cases
    python scripts/gpu_acceptance.py --cpu_smoke       # same code paths, tiny shapes, CPU, Triton interpreter
    python scripts/gpu_acceptance.py --sections correctness speed --output acceptance.json

On the project's GPU machine (no network, no `datasets`/`evaluate`): first, here, `python
scripts/prepare_gpu_bundle.py` (wheels into `.whl/`), then run there, in the repository root, with `.whl` carried:

    start=$SECONDS; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site && echo "install: $((SECONDS-start)) s" && export PYTHONUNBUFFERED=1 && python3 scripts/gpu_acceptance.py --output $OUT/gpu_acceptance.json 2>&1 | tee $OUT/gpu_acceptance.log; exit ${PIPESTATUS[0]}
"""

from __future__ import annotations

import os
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser  # does not import triton: TRITON_INTERPRET can still be set below

CHECKOUT = Path(__file__).resolve().parent.parent
NO_CUDA_MESSAGE = (
    "gpu_acceptance.py needs a CUDA GPU (torch.cuda.is_available() is False). Use --cpu_smoke to run the same code "
    "paths on tiny shapes on the CPU in the Triton interpreter."
)


@dataclass
class AcceptanceArguments:
    quick: bool = field(default=False, metadata={"help": "Fewer cases (a few minutes less)."})
    cpu_smoke: bool = field(
        default=False, metadata={"help": "Tiny shapes on the CPU in the Triton interpreter (tests the script)."}
    )
    dry_run: bool = field(default=False, metadata={"help": "The same as --cpu_smoke."})
    output: str | None = field(default=None, metadata={"help": "Also write the JSON report to this file."})
    time_budget_s: float | None = field(
        default=None, metadata={"help": "Global budget in seconds (default 420; 900 with --cpu_smoke)."}
    )
    sections: list[str] = field(
        default_factory=lambda: ["correctness", "speed", "training"], metadata={"help": "Sections to run."}
    )
    train_num_users: int | None = field(
        default=None, metadata={"help": "Users of the synthetic ML-1M-shaped data (default 6040; quick 1000)."}
    )


def main(argv: list[str] | None = None) -> int:
    (args,) = HfArgumentParser(AcceptanceArguments).parse_args_into_dataclasses(args=argv)
    smoke = args.cpu_smoke or args.dry_run
    import torch

    if smoke:
        if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
            print("--cpu_smoke needs TRITON_INTERPRET=1 before triton is imported", file=sys.stderr)
            return 2
        os.environ["TRITON_INTERPRET"] = "1"  # read by triton when it is first imported (by hf_hstu below)
    elif not torch.cuda.is_available():
        print(NO_CUDA_MESSAGE, file=sys.stderr)
        return 2

    from hf_hstu.acceptance import report_json, run_acceptance, summary_table

    mode = "cpu-smoke" if smoke else "quick" if args.quick else "full"
    try:
        report = run_acceptance(
            mode,
            CHECKOUT,
            sections=tuple(args.sections),
            time_budget_s=args.time_budget_s,
            train_num_users=args.train_num_users,
        )
    except Exception as error:  # noqa: BLE001 - a crash of the run itself is still a JSON report, and exit code 1
        report = {"mode": mode, "ok": False, "failures": [f"crash: {error!r}"], "traceback": traceback.format_exc()}
    text = report_json(report)
    print(text, flush=True)
    if args.output:
        Path(args.output).write_text(text + "\n")
    print(summary_table(report), file=sys.stderr, flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
