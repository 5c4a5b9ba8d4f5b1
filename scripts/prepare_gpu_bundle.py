"""Download here (PyPI) the wheels that the GPU acceptance run needs on the offline GPU machine, and build the package's
own wheel, into `.whl/` (ignored by git; emptied first). See `hf_hstu.gpu_bundle` for what is carried and why.

    python scripts/prepare_gpu_bundle.py                      # datasets, evaluate, dill, multiprocess, fsspec, hf_hstu
    python scripts/prepare_gpu_bundle.py --with_pyarrow true  # also pyarrow (the image's older than datasets needs)
    python scripts/prepare_gpu_bundle.py --print_only true    # the commands, without running them

Then run the device command printed at the end (the docstring of `scripts/gpu_acceptance.py` has it too) with
`.whl` carried.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from hf_hstu import gpu_bundle

CHECKOUT = Path(__file__).resolve().parent.parent


@dataclass
class BundleArguments:
    output_dir: str = field(default=str(CHECKOUT / gpu_bundle.BUNDLE_DIR), metadata={"help": "The bundle folder."})
    with_pyarrow: bool = field(default=False, metadata={"help": "Carry pyarrow too (a large binary wheel)."})
    pin: list[str] = field(
        default_factory=list, metadata={"help": "NAME==VERSION overriding the version installed here."}
    )
    print_only: bool = field(default=False, metadata={"help": "Print the commands without running them."})


def main() -> None:
    (args,) = HfArgumentParser(BundleArguments).parse_args_into_dataclasses()
    pins = dict(pin.split("==", 1) for pin in args.pin)
    requirements = gpu_bundle.bundle_requirements(gpu_bundle.bundle_packages(args.with_pyarrow), pins)
    destination = Path(args.output_dir)
    if args.print_only:
        print(shlex.join(gpu_bundle.download_command(requirements, destination)))
        print(shlex.join(gpu_bundle.wheel_command("<copy of pyproject.toml, README.md, hf_hstu/>", destination)))
    else:
        wheels = gpu_bundle.prepare_bundle(CHECKOUT, destination, requirements)
        size = sum(wheel.stat().st_size for wheel in wheels) / 2**20
        print(f"{len(wheels)} wheels, {size:.1f} MiB in {destination}:")
        print("\n".join(f"  {wheel.name}" for wheel in wheels))
    print("device command (repository root, .whl carried):")
    print(gpu_bundle.device_command())


if __name__ == "__main__":
    main()
