"""scripts/gpu_acceptance.py (hf_hstu.acceptance) and scripts/prepare_gpu_bundle.py (hf_hstu.gpu_bundle).

Without a GPU the acceptance run's `--cpu_smoke` mode runs its code paths on tiny shapes in the Triton interpreter;
the bundle tests need no network (pip is replaced by a fake).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # as tests/conftest.py: before triton is first imported

pytest.importorskip("triton", reason="the acceptance run checks the hstu_triton kernels, which need triton")

from hf_hstu import acceptance, gpu_bundle  # noqa: E402
from hf_hstu.benchmarks import Timing, jagged_reference_attention, time_function  # noqa: E402
from hf_hstu.modeling import triton_hstu_attention  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_acceptance.py"
NEEDS_INTERPRETER = pytest.mark.skipif(
    not torch.cuda.is_available() and not triton_hstu_attention.INTERPRET,
    reason="without CUDA the kernels need TRITON_INTERPRET=1 set before triton is imported",
)


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def two_case_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cpu-smoke plan cut to one fp32 and one fp16 correctness case (a few seconds in the interpreter)."""
    make_plan = acceptance.make_plan

    def small_plan(*args, **kwargs):
        plan = make_plan(*args, **kwargs)
        first = {case.dtype: case for case in reversed(plan.correctness)}
        return replace(plan, correctness=[first[torch.float32], first[torch.float16]], warm_up_workers=0)

    monkeypatch.setattr(acceptance, "make_plan", small_plan)


def _check_report_structure(report: dict) -> None:
    assert report["mode"] == "cpu-smoke"
    assert {"environment", "sections", "failures", "ok", "elapsed_s", "time_budget_s"} <= report.keys()
    assert report["environment"]["hf_hstu_matches_checkout"] is True
    assert report["environment"]["requirement_problems"] == []


@pytest.mark.slow
def test_cpu_smoke_end_to_end(tmp_path: Path) -> None:
    """The whole script in a subprocess: every section passes, the JSON on stdout is the one in --output."""
    output = tmp_path / "report.json"
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path)}
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--cpu_smoke", "--output", str(output)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=900,
    )
    assert completed.returncode == 0, completed.stderr[-5000:]
    report = json.loads(completed.stdout)
    assert report == json.loads(output.read_text())
    _check_report_structure(report)
    assert report["ok"] and report["failures"] == []
    sections = report["sections"]
    assert set(sections) == {"correctness", "speed", "training"}
    warm_up = report["warm_up"]
    assert warm_up["tasks"] == warm_up["finished"] == 2 and warm_up["errors"] == [], warm_up

    correctness = sections["correctness"]
    assert correctness["ok"] and correctness["skipped_for_time"] == []
    cases = correctness["cases"]
    assert len(cases) == len(acceptance.make_plan("cpu-smoke").correctness) == 11
    assert {(c["position_bias"], c["time_bias"]) for c in cases} == {(p, t) for p in (True, False) for t in (1, 0)}
    assert {(c["dtype"], c["weights_dtype"]) for c in cases} == {
        ("float32", "float32"),
        ("float16", "float16"),
        ("float16", "float32"),  # as the model runs under autocast
    }
    both = next(c for c in cases if c["position_bias"] and c["time_bias"])
    assert set(both["tensors"]) == {"output", "d_query", "d_key", "d_value", "d_position_weights", "d_time_weights"}
    neither = next(c for c in cases if not c["position_bias"] and not c["time_bias"])
    assert set(neither["tensors"]) == {"output", "d_query", "d_key", "d_value"}
    assert all(c["worst_scaled_max_error"] <= c["tolerance"] for c in cases)

    speed = sections["speed"]
    assert speed["ok"] and [row["backend"] for row in speed["results"]] == ["triton", "eager", "compile"]
    for row in speed["results"]:
        assert row["forward_ms"] > 0 and row["forward_backward_ms"] > 0 and row["forward_tflops"] > 0
    assert speed["goal"]["met"] is None  # the goal's shape is not among the tiny ones

    training = sections["training"]
    assert training["ok"] and training["returncode"] == 0
    assert "--mixed_precision bf16" in training["command"] and "ml-1m-hstu" in training["command"]
    assert training["data"]["users"] == 60 and training["best_epoch"] == 1
    assert 0.0 <= training["test_metrics"]["ndcg@10"] <= 1.0
    assert "peak_gpu_memory_mib" in training


@NEEDS_INTERPRETER
def test_correct_kernels_pass_in_process(two_case_plan, tmp_path: Path) -> None:
    output = tmp_path / "report.json"
    code = _load_script("gpu_acceptance").main(["--cpu_smoke", "--sections", "correctness", "--output", str(output)])
    report = json.loads(output.read_text())
    assert code == 0, report["failures"]
    _check_report_structure(report)
    assert [case["ok"] for case in report["sections"]["correctness"]["cases"]] == [True, True]


@NEEDS_INTERPRETER
def test_a_wrong_kernel_result_fails_the_run(two_case_plan, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """An output off by 1 % (5 times the fp16 tolerance, 100 times the fp32 one) fails every case: exit code 1."""
    kernel = triton_hstu_attention.hstu_attention_jagged
    monkeypatch.setattr(
        triton_hstu_attention, "hstu_attention_jagged", lambda *args, **kwargs: kernel(*args, **kwargs) * 1.01
    )
    output = tmp_path / "report.json"
    code = _load_script("gpu_acceptance").main(["--cpu_smoke", "--sections", "correctness", "--output", str(output)])
    report = json.loads(output.read_text())
    assert code == 1
    assert not report["ok"] and report["failures"][0].startswith("correctness: failed")
    cases = report["sections"]["correctness"]["cases"]
    assert [case["ok"] for case in cases] == [False, False]
    assert cases[0]["tensors"]["output"]["scaled_max_error"] > acceptance.TOLERANCES[torch.float32]


@NEEDS_INTERPRETER
def test_a_crashing_kernel_fails_the_case(two_case_plan, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(triton_hstu_attention, "hstu_attention_jagged", broken)
    report = acceptance.run_acceptance("cpu-smoke", ROOT, sections=("correctness",), log=lambda message: None)
    assert not report["ok"]
    assert all("RuntimeError: kernel exploded" in case["error"] for case in report["sections"]["correctness"]["cases"])


def test_over_the_time_budget_skips_and_fails(tmp_path: Path) -> None:
    output = tmp_path / "report.json"
    code = _load_script("gpu_acceptance").main(
        ["--cpu_smoke", "--sections", "correctness", "speed", "--time_budget_s", "0.001", "--output", str(output)]
    )
    report = json.loads(output.read_text())
    assert code == 1 and not report["ok"]
    assert report["sections"]["correctness"]["cases"] == []
    assert len(report["sections"]["correctness"]["skipped_for_time"]) == 11
    assert report["sections"]["speed"]["skipped_for_time"] == ["tiny triton", "tiny eager", "tiny compile"]
    assert any("skipped for lack of time" in failure for failure in report["failures"])


def test_without_cuda_exits_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _load_script("gpu_acceptance").main(["--quick"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_stale_package_is_detected(tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    (checkout / "hf_hstu").mkdir(parents=True)
    (checkout / "hf_hstu" / "__init__.py").write_text("# not the imported one\n")
    matches, differing = acceptance.package_matches_checkout(checkout)
    assert not matches and "__init__.py" in differing
    assert acceptance.package_matches_checkout(ROOT) == (True, [])


def test_report_json_is_strict() -> None:
    text = acceptance.report_json({"error": float("inf"), "nested": [{"value": float("nan")}], "path": ROOT})
    assert json.loads(text) == {"error": "inf", "nested": [{"value": "nan"}], "path": str(ROOT)}


def test_summary_table_names_every_section_and_failure() -> None:
    report = {
        "mode": "full",
        "ok": False,
        "warm_up": {"finished": 20, "tasks": 26, "seconds": 80.0, "killed_for_time": 6, "errors": []},
        "elapsed_s": 12.0,
        "failures": ["speed: skipped for lack of time ['N=4096 compile']"],
        "sections": {
            "correctness": {
                "cases": [
                    {"case": "x", "ok": True, "dtype": "bfloat16", "worst_scaled_max_error": 3e-3, "tolerance": 1e-2}
                ],
                "skipped_for_time": [],
            },
            "speed": {
                "results": [
                    {
                        "case": "goal",
                        "backend": "triton",
                        "batch_size": 32,
                        "seq_len": 2048,
                        "num_heads": 4,
                        "head_dim": 128,
                        "forward_ms": 1.0,
                        "forward_tflops": 210.0,
                        "forward_peak_memory_mib": 12.0,
                        "forward_backward_error": "out of memory",
                    }
                ],
                "goal": {"measured_forward_tflops": 210.0, "met": True},
                "skipped_for_time": ["N=4096 compile"],
            },
            "training": {"ok": True, "wall_seconds": 50.0, "train_seconds": 30.0, "peak_gpu_memory_mib": 900.0},
        },
    }
    table = acceptance.summary_table(report)
    assert "1/1 ok" in table and "210.0 TF" in table and "out of memory" in table and "met True" in table
    assert "900 MiB" in table and table.splitlines()[-1].startswith("FAILURE: speed")
    assert "20/26 tasks in 80 s (6 killed, 0 errors)" in table


def test_time_function_on_cpu() -> None:
    calls = []
    timing = time_function(lambda: calls.append(1), "cpu", warmup_ms=0.0, repeat_ms=0.0, min_repeats=4)
    assert isinstance(timing, Timing) and timing.repeats == 4 and 0 <= timing.min_ms <= timing.median_ms
    assert len(calls) == 1 + 2 + 4  # the untimed first call, the estimate, the timed calls


def test_jagged_reference_by_hand() -> None:
    """Two sequences (2 tokens, 1 token), one head, q = k = 0: s is the position bias alone."""
    zeros = torch.zeros(3, 1, 1)
    value = torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1)
    position_weights = torch.tensor([0.1, 0.2, 0.3])  # N_max = 2: w_p[1 + j - i]
    output = jagged_reference_attention(
        zeros, zeros, value, torch.tensor([0, 2, 3]), 2, normalization=2.0, position_weights=position_weights
    )

    def silu(x: float) -> float:
        return x / (1 + torch.exp(torch.tensor(-x)).item())

    expected = [silu(0.2) * 1 / 2, (silu(0.1) * 1 + silu(0.2) * 2) / 2, silu(0.2) * 3 / 2]
    torch.testing.assert_close(output.flatten(), torch.tensor(expected))


def test_plans_cover_the_issue() -> None:
    full = acceptance.make_plan("full")
    lengths = {length for case in full.correctness for length in case.lengths}
    assert min(lengths) == 1 and max(lengths) == 4096
    assert {case.dtype for case in full.correctness} == {torch.float32, torch.bfloat16}
    for dtype in (torch.float32, torch.bfloat16):
        assert {(c.use_position_bias, c.use_time_bias) for c in full.correctness if c.dtype == dtype} == {
            (True, True),
            (True, False),
            (False, True),
            (False, False),
        }
    shapes = {(case.seq_len, case.num_heads, case.head_dim) for case in full.speed}
    assert shapes == {(200, 1, 50), (256, 4, 128), (1024, 4, 128), (2048, 4, 128), (4096, 4, 128)}
    assert full.speed_dtype == torch.bfloat16 and full.backends == ("triton", "eager", "compile")
    assert full.time_budget_s == 420.0 and full.train_num_users == 6040
    assert acceptance.make_plan("quick").train_num_users == 1000
    with pytest.raises(ValueError, match="unknown mode"):
        acceptance.make_plan("fast")


def test_training_command() -> None:
    command = acceptance.training_command(Path("scripts/train.py"), Path("raw"), Path("out"), cpu=False, python="py")
    launch = command.index("scripts/train.py")
    assert command[:3] == ["py", "-m", "accelerate.commands.launch"]
    launcher = command[:launch]
    assert launcher[launcher.index("--mixed_precision") + 1] == "bf16" and "--cpu" not in command
    script_arguments = command[launch + 1 :]
    for flag, value in (("--preset", "ml-1m-hstu"), ("--num_epochs", "1")):
        assert script_arguments[script_arguments.index(flag) + 1] == value
    assert "--mixed_precision" not in script_arguments  # the launcher's bf16 reaches the run
    assert "--cpu" in acceptance.training_command(Path("t.py"), Path("r"), Path("o"), cpu=True)


def test_ml1m_shaped_ratings_file(tmp_path: Path) -> None:
    from hf_hstu.data.sources import read_movielens

    shape = acceptance.write_ml1m_shaped_ratings(tmp_path, num_users=30, num_items=50, lengths=(20, 30))
    frame = read_movielens(tmp_path / "ratings.dat", "ml-1m")
    assert len(frame) == shape["events"] and frame.iloc[:, 0].nunique() == shape["users"] == 30


# ------------------------------------------------------------------------------------------------------ the bundle


def test_bundle_requirements() -> None:
    versions = {"datasets": "5.2.0", "evaluate": "0.4.6", "dill": "0.4.1", "multiprocess": "0.70.19", "fsspec": "1"}
    requirements = gpu_bundle.bundle_requirements(gpu_bundle.bundle_packages(), {"fsspec": "2026.9.0"}, versions.get)
    assert requirements == [
        "datasets==5.2.0",
        "evaluate==0.4.6",
        "dill==0.4.1",
        "multiprocess==0.70.19",
        "fsspec==2026.9.0",
    ]
    assert gpu_bundle.bundle_packages(with_pyarrow=True)[-1] == "pyarrow"

    def missing(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    with pytest.raises(ValueError, match="--pin datasets==X"):
        gpu_bundle.bundle_requirements(["datasets"], version=missing)


def test_bundle_commands() -> None:
    download = gpu_bundle.download_command(["datasets==5.2.0"], ".whl", python="python")
    assert download[:4] == ["python", "-m", "pip", "download"]
    for flag in ("--no-deps", "--only-binary=:all:", "manylinux_2_28_x86_64", "manylinux2014_x86_64"):
        assert flag in download
    assert download[download.index("--python-version") + 1] == "3.12"
    assert download[-3:] == ["-d", ".whl", "datasets==5.2.0"]
    assert gpu_bundle.install_command() == (
        "python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "
        ".whl/*.whl && export PYTHONPATH=/tmp/site"
    )
    device = gpu_bundle.device_command()
    assert gpu_bundle.install_command() in device and "--output $OUT/gpu_acceptance.json" in device
    assert device.endswith("exit ${PIPESTATUS[0]}")
    assert device in SCRIPT.read_text(), "the script's docstring must give the device command"
    assert "/.whl/" in (ROOT / ".gitignore").read_text().splitlines()


def test_prepare_bundle_with_a_fake_pip(tmp_path: Path) -> None:
    destination = tmp_path / ".whl"
    destination.mkdir()
    (destination / "datasets-4.0.0-py3-none-any.whl").write_text("an old one, removed")
    commands = []

    def fake_pip(command: list[str], check: bool) -> subprocess.CompletedProcess:
        commands.append(command)
        output = Path(command[command.index("-d" if "download" in command else "-w") + 1])
        if "download" in command:
            for requirement in command[command.index("-d") + 2 :]:
                name, version = requirement.split("==")
                (output / f"{name}-{version}-py3-none-any.whl").write_text("")
        else:
            source = Path(command[-1])
            assert (source / "pyproject.toml").is_file() and (source / "hf_hstu" / "__init__.py").is_file()
            assert not list(source.rglob("__pycache__"))
            (output / "hf_hstu-0.1.0-py3-none-any.whl").write_text("")
        return subprocess.CompletedProcess(command, 0)

    requirements = ["datasets==5.2.0", "multiprocess==0.70.19"]
    wheels = gpu_bundle.prepare_bundle(ROOT, destination, requirements, run=fake_pip)
    assert [wheel.name for wheel in wheels] == [
        "datasets-5.2.0-py3-none-any.whl",
        "hf_hstu-0.1.0-py3-none-any.whl",
        "multiprocess-0.70.19-py3-none-any.whl",
    ]
    assert [command[3] for command in commands] == ["download", "wheel"]
    assert not (ROOT / "build").exists()


def test_bundle_problems(tmp_path: Path) -> None:
    for name in ("datasets-5.2.0-py3-none-any.whl", "datasets-5.1.0-py3-none-any.whl", "dill-0.4.1-py3-none-any.whl"):
        (tmp_path / name).write_text("")
    problems = gpu_bundle.bundle_problems(tmp_path, ["datasets==5.2.0", "dill==0.4.1", "multiprocess==0.70.19"])
    assert problems == ["two wheels of datasets", "no wheel of multiprocess==0.70.19", "no wheel of hf_hstu"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_quick_run_on_a_gpu(tmp_path: Path) -> None:
    output = tmp_path / "report.json"
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--output", str(output)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=900,
    )
    assert completed.returncode == 0, completed.stderr[-5000:]
    report = json.loads(output.read_text())
    assert report["ok"] and report["mode"] == "quick"


def test_bucket_safe_timestamps_agree_in_float32_and_float64() -> None:
    from hf_hstu.modeling.hstu_attention import time_bucket_ids

    values = acceptance.bucket_safe_timestamps(torch.Generator().manual_seed(0))
    gaps = (values[:, None] - values[None, :]).abs().clamp(min=1).double()
    exact = (gaps.log() / acceptance.BUCKET_DIVISOR).floor().clamp(0, acceptance.NUM_BUCKETS).long()
    buckets = time_bucket_ids(values[None, :], values[None, :], acceptance.NUM_BUCKETS, acceptance.BUCKET_DIVISOR)
    assert torch.equal(buckets[0], exact)
    assert buckets.unique().numel() > 30 and buckets.max() == acceptance.NUM_BUCKETS  # many buckets, the clamp too


def test_warm_up_reports_failed_and_killed_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Warm-up processes are an optimisation: a crash is reported with its error, a straggler killed at the deadline."""
    plan = acceptance.make_plan("cpu-smoke")
    monkeypatch.setattr(acceptance, "_warm_up_tasks", lambda plan: [{"kind": "correctness", "case": {}}])
    failed = acceptance.run_warm_up(plan, acceptance.Budget(600), 300, log=lambda message: None)
    assert failed["finished"] == 1 and "KeyError" in failed["errors"][0]["stderr_tail"]
    monkeypatch.setattr(acceptance, "_warm_up_tasks", lambda plan: [{"kind": "speed"}] * 2)
    killed = acceptance.run_warm_up(plan, acceptance.Budget(600), 0.3, log=lambda message: None)
    assert killed["killed_for_time"] == 2 and killed["finished"] == 0 and killed["seconds"] < 10


def test_a_crash_of_the_run_is_still_a_report(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(acceptance, "run_acceptance", crash)
    output = tmp_path / "report.json"
    assert _load_script("gpu_acceptance").main(["--cpu_smoke", "--output", str(output)]) == 1
    report = json.loads(output.read_text())
    assert (
        not report["ok"] and report["failures"] == ["crash: OSError('disk full')"] and "OSError" in report["traceback"]
    )
