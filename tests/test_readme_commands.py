"""README's set-up is two commands, each doing its own set-up, and CI runs exactly README's test command."""

import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def _setup_commands() -> list[str]:
    setup = REPO_ROOT.joinpath("README.md").read_text().split("## Set-up", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", setup, re.DOTALL).group(1)
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.split("#", 1)[0].strip()]


def test_two_commands_that_set_themselves_up():
    assert _setup_commands() == ["make train", "make test"]
    makefile = REPO_ROOT.joinpath("Makefile").read_text()
    for target in ("train", "test"):  # each depends on the environment it needs
        assert re.search(rf"^{target}: \$\(VENV\)/\.installed$", makefile, re.MULTILINE), target
    install = makefile.split("$(VENV)/.installed: pyproject.toml", 1)[1]
    assert "torch==$(TORCH_VERSION) --extra-index-url $(TORCH_INDEX)" in install  # never the default CUDA build
    assert "TORCH_INDEX ?= https://download.pytorch.org/whl/cpu" in makefile
    assert 'pip install --quiet -e ".[test]"' in install


def test_ci_runs_the_readme_test_command():
    ci_lines = [line.strip() for line in REPO_ROOT.joinpath(".ci", "run").read_text().splitlines()]
    commands = [line for line in ci_lines if line and not line.startswith("#")]
    assert _setup_commands()[1] in commands
    assert not any("pytest" in line for line in commands)  # through the README's command only
