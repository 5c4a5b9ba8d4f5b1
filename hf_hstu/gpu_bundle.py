"""The wheels that the GPU acceptance run carries to a machine without network access (`scripts/prepare_gpu_bundle.py`).

The project's GPU image has Python 3.12, torch, triton, transformers, accelerate, huggingface_hub, safetensors,
pyarrow, pandas, fsspec, xxhash, aiohttp, requests, tqdm, pyyaml, jinja2 and tensorboard, but neither ``datasets``
nor ``evaluate``. What they need beyond that image is :data:`MISSING_ON_IMAGE`; ``fsspec`` travels too because
``datasets`` caps its version (the image's may be newer), and ``pyarrow`` optionally (``datasets`` 5 needs
pyarrow >= 24; the image's version is unknown here: the acceptance report lists every unmet requirement; its
wheel is 52 MiB of the 64 MiB that a device call may carry). The
versions are those installed where the bundle is prepared, where the test suite passes. The package itself travels
as a wheel built from the checkout.

On the GPU machine, in the repository root::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
"""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

BUNDLE_DIR = ".whl"
SITE_DIR = "/tmp/site"
PYTHON_VERSION = "3.12"
# not on the GPU image: datasets and evaluate, and what they need that the image lacks
MISSING_ON_IMAGE = ("datasets", "evaluate", "dill", "multiprocess")
# on the image, but datasets caps its version
PINNED_ALONG = ("fsspec",)
OPTIONAL = ("pyarrow",)
# pure-Python wheels (py3-none-any, py312-none-any) match these too; binary ones need one of them
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)
# what the wheel of the package is built from (a copy: an in-tree build would leave build/ in the checkout)
PACKAGE_FILES = ("pyproject.toml", "README.md", "hf_hstu")


def bundle_packages(with_pyarrow: bool = False) -> tuple[str, ...]:
    return (*MISSING_ON_IMAGE, *PINNED_ALONG, *(OPTIONAL if with_pyarrow else ()))


def bundle_requirements(
    packages: Sequence[str], pins: dict[str, str] | None = None, version: Callable[[str], str] | None = None
) -> list[str]:
    """``NAME==VERSION`` for each package: the version in ``pins``, else the one installed here."""
    pins = pins or {}
    version = version or importlib.metadata.version
    requirements = []
    for package in packages:
        if package in pins:
            requirements.append(f"{package}=={pins[package]}")
            continue
        try:
            requirements.append(f"{package}=={version(package)}")
        except importlib.metadata.PackageNotFoundError as error:
            raise ValueError(f"{package} is not installed here: give its version with --pin {package}==X") from error
    return requirements


def download_command(requirements: Sequence[str], destination: Path | str, python: str = sys.executable) -> list[str]:
    """``pip download`` of exactly these wheels (no dependencies) for CPython 3.12 on x86-64 Linux."""
    platforms = [argument for platform in PLATFORMS for argument in ("--platform", platform)]
    return [
        python,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        PYTHON_VERSION,
        "--implementation",
        "cp",
        *platforms,
        "-d",
        str(destination),
        *requirements,
    ]


def wheel_command(source: Path | str, destination: Path | str, python: str = sys.executable) -> list[str]:
    """``pip wheel`` of the package alone, with the build tools installed here."""
    return [python, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(destination), str(source)]


def install_command(bundle_dir: str = BUNDLE_DIR, target: str = SITE_DIR) -> str:
    """The shell command that installs the bundle on the GPU machine and puts it on the path."""
    return (
        "python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade "
        f"--target {target} {bundle_dir}/*.whl && export PYTHONPATH={target}"
    )


def device_command(bundle_dir: str = BUNDLE_DIR, target: str = SITE_DIR, arguments: str = "") -> str:
    """The one-line acceptance run on the GPU machine (``bash -c``, repository root, ``$OUT`` comes back)."""
    install = install_command(bundle_dir, target)
    run = f"python3 scripts/gpu_acceptance.py{' ' + arguments if arguments else ''} --output $OUT/gpu_acceptance.json"
    return (
        f'start=$SECONDS; {install} && echo "install: $((SECONDS-start)) s" && export PYTHONUNBUFFERED=1 && '
        f"{run} 2>&1 | tee $OUT/gpu_acceptance.log; exit ${{PIPESTATUS[0]}}"
    )


def wheel_name(path: Path) -> str:
    """The normalised distribution name of a wheel file (``hf_hstu-0.1.0-py3-none-any.whl`` -> ``hf-hstu``)."""
    return path.name.split("-")[0].lower().replace("_", "-").replace(".", "-")


def bundle_problems(destination: Path, requirements: Sequence[str]) -> list[str]:
    """What is wrong with a bundle folder: a requirement without its wheel, or two wheels of one distribution."""
    wheels = sorted(destination.glob("*.whl"))
    names = [wheel_name(wheel) for wheel in wheels]
    problems = [f"two wheels of {name}" for name in sorted(set(names)) if names.count(name) > 1]
    for requirement in requirements:
        name, _, version = requirement.partition("==")
        normalised = name.lower().replace("_", "-").replace(".", "-")
        matching = [wheel for wheel in wheels if wheel_name(wheel) == normalised]
        if not any(wheel.name.split("-")[1] == version for wheel in matching):
            problems.append(f"no wheel of {requirement}")
    if "hf-hstu" not in names:
        problems.append("no wheel of hf_hstu")
    return problems


def prepare_bundle(
    checkout: Path,
    destination: Path,
    requirements: Sequence[str],
    run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
) -> list[Path]:
    """Empty ``destination``, download the requirements' wheels into it and build the package's wheel there."""
    if destination.exists():
        shutil.rmtree(destination)
    destination.mkdir(parents=True)
    run(download_command(requirements, destination), check=True)
    with tempfile.TemporaryDirectory(prefix="hf_hstu_wheel_") as directory:
        source = Path(directory) / "src"
        source.mkdir()
        for name in PACKAGE_FILES:
            path = checkout / name
            if path.is_dir():
                shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(path, source / name)
        run(wheel_command(source, destination), check=True)
    problems = bundle_problems(destination, requirements)
    if problems:
        raise RuntimeError(f"the bundle in {destination} is incomplete: {'; '.join(problems)}")
    return sorted(destination.glob("*.whl"))
