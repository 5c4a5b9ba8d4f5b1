"""The notebooks run end to end in their small setting (`HF_HSTU_NOTEBOOK_SMOKE=1`), in a temporary working folder.

Each notebook asserts its own results (reloaded metrics equal the training run's, eager and Triton attention agree,
...), so a notebook that errors, or whose check fails, fails here.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

for _module in ("nbformat", "nbclient", "ipykernel", "matplotlib"):
    pytest.importorskip(_module, reason=f"running the notebooks needs {_module} (pip install 'hf_hstu[test]')")

import nbclient  # noqa: E402
import nbformat  # noqa: E402
from ipykernel.kernelspec import write_kernel_spec  # noqa: E402
from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402
from jupyter_client.manager import KernelManager  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("HF_HSTU_SHARED_DATA", REPO.parent / "shared" / "data"))
KERNEL_NAME = "hf_hstu_tests"


@pytest.fixture(scope="module")
def kernel_specs(tmp_path_factory: pytest.TempPathFactory) -> KernelSpecManager:
    """A kernel spec that runs this interpreter (`sys.executable`), whatever kernels the user has installed."""
    kernels = tmp_path_factory.mktemp("kernels")
    write_kernel_spec(kernels / KERNEL_NAME)
    return KernelSpecManager(kernel_dirs=[str(kernels)])


def _execute(name: str, working_dir: Path, kernel_specs: KernelSpecManager) -> nbformat.NotebookNode:
    notebook = nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        km=KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=kernel_specs),
        timeout=600,
        resources={"metadata": {"path": str(working_dir)}},
    )
    client.execute()  # raises CellExecutionError, naming the cell, on the first error
    return notebook


@pytest.fixture
def smoke_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The small setting, no Hub access and no credentials (the kernel inherits this process's environment)."""
    monkeypatch.setenv("HF_HSTU_NOTEBOOK_SMOKE", "1")
    monkeypatch.setenv("HF_HSTU_SHARED_DATA", str(SHARED_DATA))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in ("HF_TOKEN", "HF_HSTU_HUB_MODEL_ID", "HF_HSTU_BENCH_JSON"):
        monkeypatch.delenv(name, raising=False)


def _outputs_text(notebook: nbformat.NotebookNode) -> str:
    texts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            texts.append(output.get("text", "") + output.get("data", {}).get("text/plain", ""))
    return "\n".join(texts)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["01_quickstart", "02_rab_ablation"])
def test_movielens_notebook_runs(name: str, tmp_path: Path, kernel_specs, smoke_environment) -> None:
    if not (SHARED_DATA / "ml-100k" / "u.data").is_file():
        pytest.skip(
            f"MovieLens-100K not found at {SHARED_DATA / 'ml-100k'} (set HF_HSTU_SHARED_DATA): the tests never "
            "download it"
        )
    notebook = _execute(name, tmp_path, kernel_specs)
    text = _outputs_text(notebook)
    assert "'num_users': 100" in text  # the small setting was read
    if name == "01_quickstart":
        assert "Not pushed" in text
        assert (tmp_path / "outputs" / "quickstart" / "best_model" / "model.safetensors").is_file()
    else:
        assert len(list((tmp_path / "outputs" / "rab_ablation").glob("variant_*/best_model"))) == 5


@pytest.mark.slow
def test_attention_backends_notebook_runs(tmp_path: Path, kernel_specs, smoke_environment, monkeypatch) -> None:
    """Runs with a real (tiny, Triton-interpreter) benchmark report, so that its table and plot are drawn too."""
    report = tmp_path / "bench_attention.json"
    command = [sys.executable, str(REPO / "scripts" / "bench_attention.py"), "--cpu", "--seq_lens", "16", "32"]
    command += ["--num_heads", "1", "--head_dims", "16", "--tokens", "32", "--backends", "triton", "eager"]
    report.write_text(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    monkeypatch.setenv("HF_HSTU_BENCH_JSON", str(report))
    notebook = _execute("03_attention_backends", tmp_path, kernel_specs)
    text = _outputs_text(notebook)
    assert "default: hstu_auto" in text and "requested when loading: hstu_triton" in text
    assert "Triton interpreter on a CPU" in text  # the report made above says so
    assert any(output.get("data", {}).get("image/png") for cell in notebook.cells for output in cell.get("outputs", []))
