"""Checks that a training run was launched the way its processes can cooperate, before any work is done."""

from collections.abc import Mapping

from accelerate.utils import str_to_bool

CPU_LAUNCH_COMMAND = "ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N scripts/train.py ..."


def _flag(env: Mapping[str, str], name: str) -> bool:
    return bool(str_to_bool(env.get(name, "false") or "false"))


def check_process_launch(env: Mapping[str, str], num_processes: int, fsdp: bool = False) -> None:
    """Raise a ValueError when the launcher asked for several processes that will not form one process group.

    Args:
        env: the environment of this process (`os.environ`).
        num_processes: the processes of this run's process group (`Accelerator.num_processes`).
        fsdp: whether this process's accelerator shards the model with FSDP (`Accelerator.is_fsdp2`).

    Two launches go wrong silently otherwise: `accelerate launch --cpu --num_processes N` starts a single process
    (accelerate runs N CPU processes only through torchrun or mpirun), and `--multi_gpu` on a machine without CUDA
    starts N processes that each train alone and write the same output folder. A third: an FSDP config launched with
    ACCELERATE_USE_CPU=1 (or on a machine without GPUs), where accelerate trains with DDP instead, every process
    holding the whole item table.
    """
    world_size = int(env.get("WORLD_SIZE", "1") or 1)
    if world_size > 1 and num_processes != world_size:
        raise ValueError(
            f"{world_size} processes were launched but this one runs alone (process group of {num_processes}): "
            f"without CUDA, the processes join one CPU (gloo) group only with ACCELERATE_USE_CPU=1, as in: "
            f"{CPU_LAUNCH_COMMAND}"
        )
    launched_alone = "WORLD_SIZE" not in env and not any(
        name in env for name in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")
    )
    if _flag(env, "ACCELERATE_USE_CPU") and "MASTER_PORT" in env and launched_alone and num_processes == 1:
        raise ValueError(
            "accelerate launch --cpu with --num_processes > 1 starts a single process (accelerate needs torchrun "
            f"or mpirun for several CPU processes). To train on N CPU processes run: {CPU_LAUNCH_COMMAND}"
        )
    if _flag(env, "ACCELERATE_USE_FSDP") and not fsdp:
        raise ValueError(
            "The launch asked for FSDP (ACCELERATE_USE_FSDP) but accelerate set up "
            f"{'DDP' if num_processes > 1 else 'a single process'} instead, which would hold the whole model and "
            "item table on every process: accelerate runs FSDP only on GPUs (not with ACCELERATE_USE_CPU=1 or "
            "--cpu). Launch on GPUs, or drop the FSDP config to train with DDP."
        )
