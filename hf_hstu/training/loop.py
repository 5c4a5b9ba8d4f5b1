"""The training loop behind `scripts/train.py`: Accelerate (1..N processes, CPU or GPU), per-epoch validation with
early stopping, the best model saved with `save_pretrained`, full training state every epoch for exact resumption,
the test split scored with the best model, trackers, a model card and an optional push to the Hub."""

import hashlib
import json
import logging
import math
import os
import shlex
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import set_seed
from torch.utils.data import DataLoader

from ..evaluation.ranking import evaluate_ranking
from ..hub.dataset_card import preprocessing_command
from ..hub.model_card import dataset_metadata_id
from ..hub.push import push_checkpoint, write_run_model_card
from ..progress import PhaseProgress, quiet_library_progress_bars
from .arguments import MACHINE_LOCAL_FIELDS, DataArguments, ModelArguments, RecTrainingArguments, reproducing_arguments
from .data import TrainingData, load_training_data
from .launch import check_process_launch
from .model_config import MODEL_CLASSES, build_model_config
from .sampling import EpochSeededSampler, GlobalNegativeSampler

logger = logging.getLogger(__name__)

BEST_MODEL_DIR = "best_model"
CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_COMPLETE_FILE = "training_state.json"  # written last into a checkpoint folder
# Config entries that describe the saving process, not the model; ignored when comparing configs on resume.
_NON_ARCHITECTURE_KEYS = {"_name_or_path", "transformers_version", "auto_map", "architectures", "dtype"}


@dataclass
class TrainingState:
    """Progress saved with every checkpoint, so that a resumed run continues exactly."""

    epoch: int = 0
    global_step: int = 0
    best_metric: float | None = None
    best_epoch: int | None = None
    evaluations_without_improvement: int = 0
    train_seconds: float = 0.0  # training time of all the run's sessions up to this checkpoint
    history: list = field(default_factory=list)

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for name, value in state.items():
            setattr(self, name, value)


@dataclass
class TrainingResult:
    output_dir: str
    best_model_dir: str
    best_epoch: int | None
    validation_metrics: dict | None
    test_metrics: dict | None
    train_seconds: float
    num_processes: int
    history: list
    command: str = ""  # what reproduces the run on another machine (no local paths), as in the model card


def _config_differences(saved: dict, current: dict) -> list[str]:
    names = (set(saved) | set(current)) - _NON_ARCHITECTURE_KEYS
    return sorted(
        f"{name}: checkpoint {saved.get(name)!r} vs now {current.get(name)!r}"
        for name in names
        if saved.get(name) != current.get(name)
    )


def _find_checkpoint(output_dir: Path, resume_from_checkpoint: str) -> Path:
    """The checkpoint folder to resume from: the given one, or with "latest" the newest complete one in output_dir.

    A checkpoint is written into `epoch_NNNN.tmp` and renamed once complete (its training_state.json is written
    last), so a run killed while saving leaves no folder that looks complete.
    """
    if resume_from_checkpoint != "latest":
        path = Path(resume_from_checkpoint)
        if not (path / CHECKPOINT_COMPLETE_FILE).is_file():
            raise FileNotFoundError(
                f"{path} is not a complete training checkpoint (no {CHECKPOINT_COMPLETE_FILE} in it)."
            )
        return path
    folders = sorted((output_dir / CHECKPOINTS_DIR).glob("epoch_*"))
    complete = [
        folder for folder in folders if folder.suffix != ".tmp" and (folder / CHECKPOINT_COMPLETE_FILE).is_file()
    ]
    if not complete:
        raise FileNotFoundError(
            f"No complete checkpoint to resume from in {output_dir / CHECKPOINTS_DIR}"
            + (f" (incomplete: {', '.join(folder.name for folder in folders)})." if folders else ".")
        )
    skipped = [folder.name for folder in folders if folder not in complete and folder.name > complete[-1].name]
    if skipped:
        logger.warning(
            "Resuming from %s; skipped the newer incomplete checkpoint(s) %s (a run stopped while saving).",
            complete[-1],
            ", ".join(skipped),
        )
    return complete[-1]


def _prepare_output_dir(output_dir: Path, resuming: bool, overwrite: bool) -> Path | None:
    """Check that output_dir may be written. With `overwrite`, move the previous run aside into a sibling folder
    (returned), so that the new run starts in a clean folder and nothing of the old one is lost until the new one
    has saved its first checkpoint (then `train` deletes it)."""
    if not output_dir.exists() or not any(output_dir.iterdir()) or resuming:
        return None
    if not overwrite:
        raise FileExistsError(
            f"output_dir {output_dir} already holds a run; pass --overwrite_output_dir to replace it or "
            "--resume_from_checkpoint latest to continue it."
        )
    replaced = output_dir.with_name(
        f"{output_dir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
    )
    output_dir.rename(replaced)
    output_dir.mkdir()
    logger.warning(
        "Moved the previous run in %s to %s; it is deleted once this run saves a checkpoint.", output_dir, replaced
    )
    return replaced


def _dataset_signature(data: TrainingData) -> dict:
    """What identifies the training data of a run, stored in checkpoints and compared on resume."""
    vocabulary = json.dumps([str(raw_id) for raw_id in data.vocabulary.raw_ids])
    train_split = data.splits["train"]
    return {
        "dataset": data.name,
        "num_items": data.vocabulary.num_items,
        "train_sequences": len(train_split),
        "item_vocabulary_sha256": hashlib.sha256(vocabulary.encode()).hexdigest(),
    }


def train(model_args: ModelArguments, data_args: DataArguments, training_args: RecTrainingArguments) -> TrainingResult:
    """Train, validate, early-stop, test with the best model, and save (and optionally push) it.

    Progress is a bar per epoch on a terminal, and one line per epoch and evaluation in a log file or pipe."""
    with quiet_library_progress_bars():
        return _train(model_args, data_args, training_args)


def _train(model_args: ModelArguments, data_args: DataArguments, training_args: RecTrainingArguments) -> TrainingResult:
    output_dir = Path(training_args.output_dir)
    resuming = training_args.resume_from_checkpoint is not None
    accelerator = Accelerator(
        mixed_precision=training_args.mixed_precision,
        gradient_accumulation_steps=training_args.gradient_accumulation_steps,
        log_with=None if training_args.report_to == "none" else training_args.report_to,
        project_dir=str(output_dir),
        dataloader_config=DataLoaderConfiguration(split_batches=True),
    )
    check_process_launch(os.environ, accelerator.num_processes)
    if training_args.push_to_hub and not training_args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id (e.g. org/hstu-ml1m).")
    if training_args.batch_size % accelerator.num_processes:
        raise ValueError(
            f"batch_size ({training_args.batch_size}) must be divisible by the number of processes "
            f"({accelerator.num_processes})."
        )
    replaced_run = None
    if accelerator.is_main_process:
        replaced_run = _prepare_output_dir(output_dir, resuming, training_args.overwrite_output_dir)
    accelerator.wait_for_everyone()
    set_seed(training_args.seed)

    with accelerator.main_process_first():
        data: TrainingData = load_training_data(data_args, model_args.max_seq_len, training_args.seed)
    config = build_model_config(model_args, data.vocabulary.num_items)
    checkpoint_path = _find_checkpoint(output_dir, training_args.resume_from_checkpoint) if resuming else None
    dataset_signature = _dataset_signature(data)  # stored in every checkpoint
    if checkpoint_path is not None:
        saved_config = json.loads((checkpoint_path / "model_config.json").read_text())
        differences = _config_differences(saved_config, json.loads(json.dumps(config.to_dict(), sort_keys=True)))
        if differences:
            raise ValueError(
                f"Cannot resume from {checkpoint_path}: its model config differs: " + "; ".join(differences)
            )
        saved_dataset = json.loads((checkpoint_path / "dataset.json").read_text())
        differences = _config_differences(saved_dataset, dataset_signature)
        if differences:
            raise ValueError(
                f"Cannot resume from {checkpoint_path}: it was trained on other data: " + "; ".join(differences)
            )
    model = _with_runtime_settings(MODEL_CLASSES[model_args.model_type][1](config), training_args)

    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=training_args.learning_rate,
        betas=(training_args.adam_beta1, training_args.adam_beta2),
        weight_decay=training_args.weight_decay,
    )
    train_loader = DataLoader(
        data.splits["train"],
        batch_size=training_args.batch_size,
        sampler=EpochSeededSampler(len(data.splits["train"]), training_args.seed),
        collate_fn=data.train_collator,
        num_workers=data_args.dataloader_num_workers,
        drop_last=False,
    )
    eval_loaders = {
        split: DataLoader(
            data.splits[split],
            batch_size=training_args.eval_batch_size,
            collate_fn=data.collator,
            num_workers=data_args.dataloader_num_workers,
        )
        for split in ("validation", "test")
        if split in data.splits
    }
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    eval_loaders = {split: accelerator.prepare(loader) for split, loader in eval_loaders.items()}

    state = TrainingState()
    negative_sampler = None
    if config.negative_sampling == "uniform":  # in-batch negatives stay with the model (drawn per process)
        negative_sampler = GlobalNegativeSampler(
            config.num_items, 1 if config.loss == "bce" else config.num_negatives, training_args.seed
        )
        accelerator.register_for_checkpointing(negative_sampler)
    accelerator.register_for_checkpointing(state)
    if checkpoint_path is not None:
        accelerator.load_state(str(checkpoint_path))
        accelerator.print(f"Resumed from {checkpoint_path} (epoch {state.epoch}, step {state.global_step}).")

    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    if training_args.report_to != "none":
        accelerator.init_trackers(
            "hf_hstu", config={**_flat_arguments(model_args, data_args, training_args), "num_items": config.num_items}
        )
    validation_split = "validation" if "validation" in eval_loaders else None
    best_model_dir = output_dir / BEST_MODEL_DIR
    start_time, seconds_before = time.perf_counter(), state.train_seconds  # earlier sessions of a resumed run
    stop = False
    for epoch in range(state.epoch, training_args.num_epochs):
        train_loader.set_epoch(epoch)  # the prepared loader passes it to EpochSeededSampler (also after a resume)
        data.train_collator.set_epoch(epoch)  # this epoch's sample_ratio draws
        model.train()
        progress = PhaseProgress(
            train_loader,
            desc=f"epoch {epoch + 1}/{training_args.num_epochs}",
            disable=not accelerator.is_local_main_process,
        )
        for batch in progress:
            with accelerator.accumulate(model):
                negative_ids = (
                    negative_sampler.sample(batch["attention_mask"], accelerator) if negative_sampler else None
                )
                loss = model(
                    input_ids=batch["input_ids"],
                    attention_mask=batch["attention_mask"],
                    timestamps=batch["timestamps"],
                    labels=batch["labels"],
                    ratings=batch.get("ratings"),
                    negative_ids=negative_ids,
                ).loss
                loss_value = float(loss.detach())
                if not math.isfinite(loss_value):
                    raise FloatingPointError(
                        f"The training loss is {loss_value} at step {state.global_step + 1} (epoch {epoch + 1}). "
                        "Lower the learning rate, set --max_grad_norm, or check the data; the saved best model and "
                        "checkpoints were left as they were."
                    )
                accelerator.backward(_globally_weighted(loss, batch["attention_mask"], accelerator))
                if accelerator.sync_gradients and training_args.max_grad_norm is not None:
                    accelerator.clip_grad_norm_(model.parameters(), training_args.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            if accelerator.sync_gradients:
                state.global_step += 1
                progress.set_postfix(loss=f"{loss_value:.4f}")
                if training_args.report_to != "none" and state.global_step % training_args.logging_steps == 0:
                    accelerator.log({"train/loss": loss_value, "train/epoch": epoch + 1}, step=state.global_step)
            if training_args.max_steps is not None and state.global_step >= training_args.max_steps:
                stop = True
                break
        progress.close()
        state.epoch = epoch + 1

        if validation_split and (
            state.epoch % training_args.eval_every_epochs == 0 or stop or state.epoch == training_args.num_epochs
        ):
            metrics = evaluate_ranking(
                model, eval_loaders[validation_split], accelerator, training_args.k_values, progress="validation"
            )
            record = {
                "epoch": state.epoch,
                "step": state.global_step,
                **{f"validation/{k}": v for k, v in metrics.items()},
            }
            state.history.append(record)
            if training_args.report_to != "none":
                accelerator.log(record, step=state.global_step)
            score = metrics[training_args.metric_for_best_model]
            if state.best_metric is None or score > state.best_metric:
                state.best_metric, state.best_epoch = score, state.epoch
                state.evaluations_without_improvement = 0
                _save_best_model(accelerator, model, data, best_model_dir)
            else:
                state.evaluations_without_improvement += 1
            accelerator.print(
                f"epoch {state.epoch}: "
                + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())
                + f" (best {training_args.metric_for_best_model}={state.best_metric:.4f} at epoch {state.best_epoch})"
            )
            if (
                training_args.early_stopping_patience is not None
                and state.evaluations_without_improvement >= training_args.early_stopping_patience
            ):
                accelerator.print(
                    f"Early stopping: no improvement for {state.evaluations_without_improvement} evaluations."
                )
                stop = True
        elif not validation_split:  # no validation split: the last model is the best model
            state.best_epoch = state.epoch
            _save_best_model(accelerator, model, data, best_model_dir)
        state.train_seconds = seconds_before + time.perf_counter() - start_time
        _save_training_state(accelerator, config, dataset_signature, state, output_dir, training_args.save_total_limit)
        if replaced_run is not None:  # this run has started well: the runs it replaces (also by failed tries) go
            for folder in output_dir.parent.glob(f"{output_dir.name}.replaced-*"):
                shutil.rmtree(folder)
            replaced_run = None
        if stop:
            break
    train_seconds = seconds_before + time.perf_counter() - start_time

    test_metrics = None
    if "test" in eval_loaders:
        accelerator.wait_for_everyone()
        best_model = MODEL_CLASSES[model_args.model_type][1].from_pretrained(best_model_dir)
        best_model = _with_runtime_settings(best_model, training_args).to(accelerator.device)
        test_metrics = evaluate_ranking(
            best_model, eval_loaders["test"], accelerator, training_args.k_values, progress="test"
        )
    validation_metrics = None
    if state.best_epoch is not None and validation_split:
        best_record = next(r for r in state.history if r["epoch"] == state.best_epoch)
        validation_metrics = {k.split("/", 1)[1]: v for k, v in best_record.items() if k.startswith("validation/")}
    result = TrainingResult(
        output_dir=str(output_dir),
        best_model_dir=str(best_model_dir),
        best_epoch=state.best_epoch,
        validation_metrics=validation_metrics,
        test_metrics=test_metrics,
        train_seconds=train_seconds,
        num_processes=accelerator.num_processes,
        history=state.history,
        command=reproducing_command(model_args, data_args, training_args, data, accelerator.num_processes),
    )
    if accelerator.is_main_process:
        (output_dir / "results.json").write_text(json.dumps(asdict(result), indent=2))
        if test_metrics is not None and training_args.report_to != "none":
            accelerator.log({f"test/{k}": v for k, v in test_metrics.items()}, step=state.global_step)
        accelerator.print(format_summary(result, training_args.metric_for_best_model))
        if state.best_epoch is not None:
            write_run_model_card(
                best_model_dir,
                dataset_name=data.name,
                metrics=test_metrics,
                training_seconds=train_seconds,
                num_processes=accelerator.num_processes,
                device=accelerator.device,
                training_config=_portable_settings(model_args, data_args, training_args, data),
                protocol=data.protocol_text,
                model_id=training_args.hub_model_id,
                command=result.command,
                dataset_id=_hub_dataset_id(data_args) or dataset_metadata_id(data.metadata, data.reference),
            )
            if training_args.push_to_hub:
                url = push_checkpoint(best_model_dir, training_args.hub_model_id, training_args.hub_private_repo)
                accelerator.print(f"Pushed {best_model_dir} to {url}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


def _with_runtime_settings(model, training_args: RecTrainingArguments):
    """The model with the run's computation settings, which are not part of its config (nor of checkpoints)."""
    if training_args.attn_implementation is not None:
        model.set_attn_implementation(training_args.attn_implementation)
    model.length_group_size = training_args.length_group_size
    return model


def _globally_weighted(loss: torch.Tensor, attention_mask: torch.Tensor, accelerator: Accelerator) -> torch.Tensor:
    """Scale a process's mean loss so that DDP's gradient average equals the gradient of the global mean over all
    supervised positions of the global batch (processes may hold different numbers of positions)."""
    if accelerator.num_processes == 1:
        return loss
    local = (attention_mask.sum(1) - 1).clamp(min=0).sum().to(accelerator.device).float().reshape(1)
    total = accelerator.reduce(local.clone(), reduction="sum")
    return loss * (local * accelerator.num_processes / total.clamp(min=1)).squeeze(0)


def _save_best_model(accelerator: Accelerator, model, data: TrainingData, best_model_dir: Path) -> None:
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        staging = best_model_dir.with_name(best_model_dir.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        accelerator.unwrap_model(model).save_pretrained(staging)
        data.vocabulary.save(staging)
        shutil.rmtree(best_model_dir, ignore_errors=True)
        staging.rename(best_model_dir)
    accelerator.wait_for_everyone()


def _save_training_state(
    accelerator: Accelerator,
    config,
    dataset_signature: dict,
    state: TrainingState,
    output_dir: Path,
    save_total_limit: int,
) -> None:
    """Save the full training state atomically: into `epoch_NNNN.tmp`, renamed once every file is written."""
    checkpoint_dir = output_dir / CHECKPOINTS_DIR / f"epoch_{state.epoch:04d}"
    staging = checkpoint_dir.with_name(checkpoint_dir.name + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (staging / "model_config.json").write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True))
        (staging / "dataset.json").write_text(json.dumps(dataset_signature, indent=2))
        (staging / CHECKPOINT_COMPLETE_FILE).write_text(json.dumps(state.state_dict(), indent=2))
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
        staging.rename(checkpoint_dir)
        complete = [folder for folder in sorted(checkpoint_dir.parent.glob("epoch_*")) if folder.suffix != ".tmp"]
        for old in complete[:-save_total_limit]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def reproducing_command(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: RecTrainingArguments,
    data: TrainingData,
    num_processes: int = 1,
) -> str:
    """The command that reproduces a run elsewhere: `scripts/preprocess.py` first when the data came from a local
    folder, then `scripts/train.py` with the flags that differ from the defaults and the preset, the dataset named by
    its Hub id, its name or data/<name>, and none of this machine's paths."""
    launcher = ["accelerate", "launch", "--num_processes", str(num_processes)] if num_processes > 1 else ["python"]
    flags = reproducing_arguments(
        model_args,
        data_args,
        training_args,
        dataset=data.reference,
        raw_dir="RAW_DIR" if data_args.raw_dir else None,
    )
    command = shlex.join([*launcher, "scripts/train.py", *flags])
    if Path(data_args.dataset).expanduser().is_dir():
        return f"{preprocessing_command(data.metadata, data.reference)} && {command}"
    return command


def _hub_dataset_id(data_args: DataArguments) -> str | None:
    """The Hub dataset id the data came from, or None for a local folder or a dataset built by name."""
    local = Path(data_args.dataset).expanduser().exists()
    return data_args.dataset if "/" in data_args.dataset and not local else None


def _portable_settings(model_args, data_args, training_args, data: TrainingData) -> dict:
    """The run's settings for the model card, without this machine's paths."""
    settings = _flat_arguments(model_args, data_args, training_args)
    settings = {name: value for name, value in settings.items() if name not in MACHINE_LOCAL_FIELDS}
    settings["dataset"] = data.reference
    if data_args.raw_dir:
        settings["raw_dir"] = "RAW_DIR"
    return settings


def _flat_arguments(*argument_objects) -> dict:
    flat = {}
    for arguments in argument_objects:
        flat.update({k: v for k, v in asdict(arguments).items() if isinstance(v, (int, float, str, bool))})
    return flat


def format_summary(result: TrainingResult, metric_for_best_model: str) -> str:
    """A plain-text table of the best validation and the test metrics."""
    rows = [("split", *(result.test_metrics or result.validation_metrics or {}))]
    for split, metrics in (("validation", result.validation_metrics), ("test", result.test_metrics)):
        if metrics:
            rows.append((split, *(f"{metrics[name]:.4f}" for name in rows[0][1:])))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(cell).rjust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]
    header = (
        f"Best model: epoch {result.best_epoch} by validation {metric_for_best_model}; "
        f"{result.train_seconds:.1f} s of training on {result.num_processes} process(es); "
        f"saved to {result.best_model_dir}"
    )
    return "\n".join([header, *lines])
