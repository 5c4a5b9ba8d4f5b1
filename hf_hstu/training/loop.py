"""The training loop behind `scripts/train.py`, in the shape of accelerate's complete examples:

setup (data, model, optimizer and schedule, accelerator, the resumed state) -> for each batch one training step, then
at the configured steps or epochs validation (an `EarlyStopping` keeps the best model) and an atomic checkpoint ->
finish (the best model scored on the test split, results, model card, optional push to the Hub).

A checkpoint holds all a resumed run needs to continue as if it had never stopped, also in the middle of an epoch:
weights, optimizer, learning-rate schedule, RNG states, the negatives' generator and the loop's position.
"""

import hashlib
import json
import logging
import math
import os
import re
import shlex
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.data_loader import prepare_data_loader
from accelerate.utils import set_seed
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import FSDPModule
from torch.utils.data import DataLoader
from transformers import get_scheduler

from ..data import SequenceCollator
from ..evaluation import ACCURACY_METRICS, LIST_METRICS
from ..evaluation.ranking import evaluate_ranking
from ..hub.dataset_card import preprocessing_command
from ..hub.model_card import dataset_metadata_id
from ..hub.push import push_checkpoint, write_run_model_card
from ..modeling.configuration_recommender import SequentialRecommenderConfig
from ..progress import PhaseProgress, quiet_library_progress_bars
from .arguments import MACHINE_LOCAL_FIELDS, DataArguments, ModelArguments, RecTrainingArguments, reproducing_arguments
from .data import TrainingData, load_training_data, set_model_item_features, streaming_train_split
from .launch import check_process_launch
from .model_config import MODEL_CLASSES, build_model_config
from .objective import TrainingObjective, train_item_ids
from .sampling import EpochSeededSampler

logger = logging.getLogger(__name__)

BEST_MODEL_DIR = "best_model"
CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_PREFIX = "checkpoint-"  # checkpoints/checkpoint-<optimiser step>, as transformers' Trainer names them
CHECKPOINT_COMPLETE_FILE = "training_state.json"  # written last into a checkpoint folder
# Config entries that describe the saving process, not the model; ignored when comparing configs on resume.
_NON_ARCHITECTURE_KEYS = {"_name_or_path", "transformers_version", "auto_map", "architectures", "dtype"}


@dataclass
class TrainingState:
    """Where the loop is, saved with every checkpoint so that a resumed run continues exactly."""

    epoch: int = 0  # completed epochs
    batches_in_epoch: int = 0  # batches of the current epoch already trained on (skipped when resuming)
    global_step: int = 0  # optimiser steps
    train_seconds: float = 0.0  # training time of all the run's sessions up to this checkpoint
    history: list = field(default_factory=list)

    def epochs_done(self, batches_per_epoch: int) -> float:
        """Epochs trained, with the fraction of the current one (an int at epoch ends)."""
        done = self.epoch + self.batches_in_epoch / batches_per_epoch
        return int(done) if float(done).is_integer() else round(done, 4)

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for name, value in state.items():
            setattr(self, name, value)


@dataclass
class EarlyStopping:
    """The best validation score and when it was reached; asks to stop after `patience` evaluations without
    improvement, but not before `min_epochs` epochs were trained."""

    patience: int | None
    min_epochs: float = 0.0
    best_metric: float | None = None
    best_step: int | None = None
    best_epoch: float | None = None
    evaluations_without_improvement: int = 0

    def update(self, score: float, step: int, epoch: float) -> bool:
        """Record an evaluation's score; True when it is the best so far."""
        if self.best_metric is None or score > self.best_metric:
            self.best_metric, self.best_step, self.best_epoch = score, step, epoch
            self.evaluations_without_improvement = 0
            return True
        self.evaluations_without_improvement += 1
        return False

    def should_stop(self, epoch: float) -> bool:
        patience_spent = self.patience is not None and self.evaluations_without_improvement >= self.patience
        return patience_spent and epoch >= self.min_epochs

    _SAVED = ("best_metric", "best_step", "best_epoch", "evaluations_without_improvement")

    def state_dict(self) -> dict:  # the settings (patience, min_epochs) come from the resumed run's arguments
        return {name: getattr(self, name) for name in self._SAVED}

    def load_state_dict(self, state: dict) -> None:
        for name in self._SAVED:
            setattr(self, name, state[name])


@dataclass
class DivergenceGuard:
    """Stops a run whose loss is NaN or infinite, or (with a `factor`) more than `factor` times its running mean:
    the mean of the first `window` losses, then an exponential mean over about `window` steps."""

    factor: float | None
    window: int = 20
    mean: float = 0.0
    count: int = 0

    def check(self, loss: float, step: int, epoch: int, output_dir: Path) -> None:
        """Raise a FloatingPointError naming the step (1-based) and epoch (0-based index) of a diverged loss."""
        problem = None
        if not math.isfinite(loss):
            problem = f"The training loss is {loss} at step {step} (epoch {epoch + 1})."
        elif self.factor is not None and self.count >= self.window and loss > self.factor * self.mean:
            problem = (
                f"The training loss {loss:.4g} at step {step} (epoch {epoch + 1}) is more than {self.factor:g} times "
                f"its running mean {self.mean:.4g}: the run diverged."
            )
        if problem:
            raise FloatingPointError(
                f"{problem} Lower the learning rate, set --max_grad_norm, or check the data. The best model and the "
                f"checkpoints in {output_dir / CHECKPOINTS_DIR} were kept as they were (the newest is what "
                "--resume_from_checkpoint latest continues)."
            )
        self.count += 1
        self.mean += (loss - self.mean) / min(self.count, self.window)

    def state_dict(self) -> dict:
        return {"mean": self.mean, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.count = state["mean"], state["count"]


class ThroughputMeter:
    """Loss, sequences and tokens since the last log, as rates over the time since then (all processes)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.start, self.loss_sum, self.batches, self.sequences, self.tokens = time.monotonic(), 0.0, 0, 0, 0

    def add(self, loss: float, attention_mask: torch.Tensor) -> None:
        self.loss_sum += loss
        self.batches += 1
        self.sequences += attention_mask.shape[0]
        self.tokens += int(attention_mask.sum())

    def read(self, accelerator: Accelerator) -> dict:
        """The window's mean loss and rates (a collective call: every process calls it at the same step)."""
        seconds = max(time.monotonic() - self.start, 1e-9)
        counts = torch.tensor([float(self.sequences), float(self.tokens)], device=accelerator.device)
        sequences, tokens = accelerator.reduce(counts, reduction="sum").tolist()
        record = {
            "train/loss": self.loss_sum / max(self.batches, 1),
            "train/sequences_per_second": sequences / seconds,
            "train/tokens_per_second": tokens / seconds,
        }
        self.reset()
        return record


@dataclass
class TrainingResult:
    output_dir: str
    best_model_dir: str
    best_epoch: float | None
    validation_metrics: dict | None
    test_metrics: dict | None
    train_seconds: float
    num_processes: int
    history: list
    command: str = ""  # what reproduces the run on another machine (no local paths), as in the model card
    best_step: int | None = None


@dataclass
class _Run:
    """What setup builds for the loop."""

    model_args: ModelArguments
    data_args: DataArguments
    args: RecTrainingArguments
    accelerator: Accelerator
    data: TrainingData
    config: SequentialRecommenderConfig
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    train_loader: DataLoader
    batches_per_epoch: int  # the loader's length; capped with --streaming, where the stream has none
    eval_loaders: dict
    objective: TrainingObjective
    state: TrainingState
    early_stopping: EarlyStopping
    guard: DivergenceGuard
    dataset_signature: dict
    replaced_run: Path | None

    @property
    def output_dir(self) -> Path:
        return Path(self.args.output_dir)

    @property
    def epochs_done(self) -> float:
        return self.state.epochs_done(self.batches_per_epoch)


def train(model_args: ModelArguments, data_args: DataArguments, training_args: RecTrainingArguments) -> TrainingResult:
    """Train, validate, early-stop, test with the best model, and save (and optionally push) it.

    Progress is a bar per epoch on a terminal, and one line per epoch and evaluation in a log file or pipe."""
    with quiet_library_progress_bars():
        run = _setup(model_args, data_args, training_args)
        return _train(run)


def _train(run: _Run) -> TrainingResult:
    """The loop: steps, with validation and checkpoints when the strategies say, until the last epoch, max_steps or
    early stopping."""
    args, accelerator, state = run.args, run.accelerator, run.state
    start_time, seconds_before = time.perf_counter(), state.train_seconds  # earlier sessions of a resumed run
    meter = ThroughputMeter()
    stop = args.max_steps is not None and state.global_step >= args.max_steps
    for epoch in range(state.epoch, 0 if stop else args.num_epochs):
        run.train_loader.set_epoch(epoch)  # passed to EpochSeededSampler or the stream's shuffle (also after a resume)
        run.train_loader.collate_fn.set_epoch(epoch)  # this epoch's sample_ratio draws
        batches = run.train_loader
        if state.batches_in_epoch:  # resumed in the middle of this epoch: skip the batches already trained on
            batches = accelerator.skip_first_batches(run.train_loader, state.batches_in_epoch)
        progress = PhaseProgress(
            batches, desc=f"epoch {epoch + 1}/{args.num_epochs}", disable=not accelerator.is_local_main_process
        )
        for batch in progress:
            with accelerator.accumulate(run.model):
                loss = _training_step(run, batch, epoch)
            state.batches_in_epoch += 1
            meter.add(loss, batch["attention_mask"])
            if not accelerator.sync_gradients:
                continue
            state.global_step += 1
            epoch_end = state.batches_in_epoch == run.batches_per_epoch
            if epoch_end:
                state.epoch, state.batches_in_epoch = epoch + 1, 0
            progress.set_postfix(loss=f"{loss:.4f}")
            if state.global_step % args.logging_steps == 0 and args.report_to != "none":
                learning_rate = run.scheduler.get_last_lr()[0]
                record = {
                    **meter.read(accelerator),
                    "train/learning_rate": learning_rate,
                    "train/epoch": run.epochs_done,
                }
                accelerator.log(record, step=state.global_step)
            stop = args.max_steps is not None and state.global_step >= args.max_steps
            last = stop or (epoch_end and state.epoch == args.num_epochs)
            if _due(args.eval_strategy, args.eval_steps, state.global_step, epoch_end) or last:
                stop = _evaluate(run) or stop
                meter.reset()  # the rates measure training only
            if args.save_strategy != "no" and (
                _due(args.save_strategy, args.save_steps, state.global_step, epoch_end) or last or stop
            ):
                state.train_seconds = seconds_before + time.perf_counter() - start_time
                _save_checkpoint(run)
            if stop:
                break
        progress.close()
        if stop:
            break
        if state.epoch == epoch:  # only a stream can end early: this process's shards were too short
            raise RuntimeError(
                f"Process {accelerator.process_index}'s training data ended after {state.batches_in_epoch} of the "
                f"epoch's {run.batches_per_epoch} batches; every process must take the same steps. Use fewer "
                "processes or a larger batch_size, or train without --streaming."
            )
    return _finish(run, seconds_before + time.perf_counter() - start_time)


def _due(strategy: str, every_steps: int | None, global_step: int, epoch_end: bool) -> bool:
    """Whether an eval or save strategy ("no", "steps", "epoch") asks for it at this optimiser step."""
    return (strategy == "steps" and global_step % every_steps == 0) or (strategy == "epoch" and epoch_end)


def _training_step(run: _Run, batch: dict, epoch: int) -> float:
    """Forward, divergence check, backward, clipping, optimiser and schedule (inside `accelerator.accumulate`, so
    the optimiser steps only every `gradient_accumulation_steps` batches); returns the mean loss of all processes."""
    accelerator = run.accelerator
    loss, value = run.objective.loss(run.model, batch, accelerator)
    if accelerator.num_processes > 1:  # every process checks the same number, so all stop together
        value = float(accelerator.reduce(torch.tensor(value, device=accelerator.device), reduction="mean"))
    run.guard.check(value, run.state.global_step + 1, epoch, run.output_dir)
    accelerator.backward(loss)
    if accelerator.sync_gradients and run.args.max_grad_norm is not None:
        accelerator.clip_grad_norm_(run.model.parameters(), run.args.max_grad_norm)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad()
    return value


def _evaluate(run: _Run) -> bool:
    """Validate, record and log the metrics, and save the model when it is the best so far (without a validation
    split or with eval_strategy "no", the current model is the best); True when early stopping says stop."""
    args, accelerator, state, stopping = run.args, run.accelerator, run.state, run.early_stopping
    epoch = run.epochs_done
    if "validation" not in run.eval_loaders or args.eval_strategy == "no":
        stopping.best_step, stopping.best_epoch = state.global_step, epoch
        _save_best_model(run)
        return False
    with _gathered_parameters(run.model):
        metrics = evaluate_ranking(
            run.model,
            run.eval_loaders["validation"],
            accelerator,
            args.k_values,
            progress="validation",
            metrics=ACCURACY_METRICS,  # the lists of the beyond-accuracy metrics are for the test split
        )
    run.model.train()
    record = {"epoch": epoch, "step": state.global_step, **{f"validation/{k}": v for k, v in metrics.items()}}
    state.history.append(record)
    if args.report_to != "none":
        accelerator.log(record, step=state.global_step)
    if stopping.update(metrics[args.metric_for_best_model], state.global_step, epoch):
        _save_best_model(run)
    accelerator.print(
        f"epoch {epoch} (step {state.global_step}): "
        + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())
        + f" (best {args.metric_for_best_model}={stopping.best_metric:.4f} at step {stopping.best_step})"
    )
    if stopping.should_stop(epoch):
        accelerator.print(f"Early stopping: no improvement for {stopping.evaluations_without_improvement} evaluations.")
        return True
    return False


def _setup(model_args: ModelArguments, data_args: DataArguments, training_args: RecTrainingArguments) -> _Run:
    """The accelerator, data, model, optimizer and schedule, the objective, and the saved state when resuming."""
    output_dir = Path(training_args.output_dir)
    resuming = training_args.resume_from_checkpoint is not None
    accelerator = Accelerator(
        mixed_precision=training_args.mixed_precision,
        gradient_accumulation_steps=training_args.gradient_accumulation_steps,
        log_with=None if training_args.report_to == "none" else training_args.report_to,
        project_dir=str(output_dir),
        dataloader_config=DataLoaderConfiguration(split_batches=True),
    )
    check_process_launch(os.environ, accelerator.num_processes, fsdp=accelerator.is_fsdp2)
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
        data: TrainingData = load_training_data(data_args, model_args.max_seq_len)
    config = build_model_config(model_args, data.vocabulary.num_items, data.item_features)
    checkpoint_path = _find_checkpoint(output_dir, training_args.resume_from_checkpoint) if resuming else None
    dataset_signature = _dataset_signature(data)  # stored in every checkpoint
    if checkpoint_path is not None:
        _check_resumable(checkpoint_path, config, dataset_signature)
    model = _with_runtime_settings(MODEL_CLASSES[model_args.model_type][1](config), training_args)
    set_model_item_features(model, data)
    if training_args.torch_compile:
        _compile_blocks(model)
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=training_args.learning_rate,
        betas=(training_args.adam_beta1, training_args.adam_beta2),
        weight_decay=training_args.weight_decay,
    )
    # Training rows keep the events the loss reads (one more than max_seq_len with the research window).
    collator = SequenceCollator(
        config.max_seq_len,
        training_window=config.max_training_events,
        sample_ratio=data_args.sample_ratio,
        seed=training_args.seed,
    )
    if data_args.streaming:
        train_loader, batches_per_epoch = _streaming_train_loader(data, collator, data_args, training_args, accelerator)
    else:
        train_loader = DataLoader(
            data.splits["train"],
            batch_size=training_args.batch_size,
            sampler=EpochSeededSampler(len(data.splits["train"]), training_args.seed),
            collate_fn=collator,
            num_workers=data_args.dataloader_num_workers,
            generator=torch.Generator().manual_seed(training_args.seed),  # not the global RNG that dropout draws from
        )
        batches_per_epoch = len(train_loader)
    eval_loaders = {
        split: DataLoader(
            data.splits[split],
            batch_size=training_args.eval_batch_size,
            collate_fn=data.collator,
            num_workers=data_args.dataloader_num_workers,
            generator=torch.Generator().manual_seed(training_args.seed),
        )
        for split in ("validation", "test")
        if split in data.splits
    }
    scheduler = _lr_scheduler(optimizer, training_args, batches_per_epoch)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    if not data_args.streaming:  # the streaming loader is this process's already
        train_loader = accelerator.prepare(train_loader)
    if isinstance(model, FSDPModule):
        _keep_item_table_gathered(model)
    eval_loaders = {split: accelerator.prepare(loader) for split, loader in eval_loaders.items()}

    item_ids = train_item_ids(data.splits["train"]) if training_args.negatives_from == "train" else None
    run = _Run(
        model_args=model_args,
        data_args=data_args,
        args=training_args,
        accelerator=accelerator,
        data=data,
        config=config,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        train_loader=train_loader,
        batches_per_epoch=batches_per_epoch,
        eval_loaders=eval_loaders,
        objective=TrainingObjective(config, training_args.seed, item_ids),
        state=TrainingState(),
        early_stopping=EarlyStopping(training_args.early_stopping_patience, training_args.min_epochs),
        guard=DivergenceGuard(training_args.divergence_factor),
        dataset_signature=dataset_signature,
        replaced_run=replaced_run,
    )
    for stateful in (run.state, run.early_stopping, run.guard, run.objective):
        accelerator.register_for_checkpointing(stateful)
    if checkpoint_path is not None:
        accelerator.load_state(str(checkpoint_path))
        accelerator.print(f"Resumed from {checkpoint_path} (step {run.state.global_step}, epoch {run.epochs_done}).")
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    if training_args.report_to != "none":
        accelerator.init_trackers(
            "hf_hstu", config={**_flat_arguments(model_args, data_args, training_args), "num_items": config.num_items}
        )
    model.train()
    return run


def _streaming_train_loader(
    data: TrainingData,
    collator: SequenceCollator,
    data_args: DataArguments,
    args: RecTrainingArguments,
    accelerator: Accelerator,
) -> tuple[DataLoader, int]:
    """This process's loader over the streamed train split (`streaming_train_split`) and its batches per epoch:
    batches of batch_size / num_processes rows, len(train) // batch_size of them each epoch on every process (the
    processes' shards differ by a few rows; a short last batch keeps the count), on the accelerator's device.

    Prepared as a single process's loader, so that accelerate neither dispatches nor splits it again but still moves
    the batches and marks the epoch's last batch (gradient accumulation steps there)."""
    batches = len(data.splits["train"]) // args.batch_size
    if batches == 0:
        raise ValueError(
            f"--streaming: the train split has {len(data.splits['train'])} sequences, fewer than one batch "
            f"(batch_size {args.batch_size})."
        )
    rows = args.batch_size // accelerator.num_processes
    stream = streaming_train_split(data, args.seed, accelerator.process_index, accelerator.num_processes)
    loader = DataLoader(
        stream.take(batches * rows),
        batch_size=rows,
        collate_fn=collator,
        num_workers=data_args.dataloader_num_workers,
        generator=torch.Generator().manual_seed(args.seed),  # not the global RNG that dropout draws from
    )
    loader = prepare_data_loader(
        loader, device=accelerator.device, num_processes=1, process_index=0, put_on_device=True, dispatch_batches=False
    )
    return loader, batches


def _keep_item_table_gathered(model: torch.nn.Module) -> None:
    """Under FSDP2, keep the item table gathered from its embedding lookup until the backward pass.

    Accelerate shards the item table (the input embeddings) as its own FSDP unit, which by default frees the gathered
    table after the lookup; the sampled softmax then scores the negatives (and the positives) against the same table
    later in the forward pass, and would find only this process's rows. Kept gathered, each process scores against
    the full table, negatives drawn from the whole catalogue, and the table's gradient is reduce-scattered back to the
    shards after the backward pass: between steps, each process holds its 1/N of the table and of its AdamW states.
    """
    item_embeddings = model.get_input_embeddings()
    if not isinstance(item_embeddings, FSDPModule):
        raise TypeError(
            f"FSDP did not shard the item table ({type(item_embeddings).__name__}) as its own unit; "
            "use scripts/configs/accelerate/fsdp.yaml (FSDP2 with transformer-based auto-wrap)."
        )
    item_embeddings.set_reshard_after_forward(False)


@contextmanager
def _gathered_parameters(model: torch.nn.Module):
    """Every FSDP2 unit of `model` gathered (full parameters on each process) for the duration, so that evaluation can
    call the model's methods besides `forward` (user embeddings, the item table); nothing happens without FSDP."""
    units = [module for module in model.modules() if isinstance(module, FSDPModule)]
    for unit in units:
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()


def _compile_blocks(model: torch.nn.Module) -> None:
    """`torch.compile` each repeated block (the modules of the model's ModuleLists: its layers) in place, as
    accelerate's regional compilation: one compilation serves every layer, the model keeps its class (saving and
    evaluation are unchanged), and the data-dependent batch preparation and sampled loss stay eager."""
    for module in list(model.modules()):
        if isinstance(module, torch.nn.ModuleList):
            for block in module:
                block.compile()


def _lr_scheduler(optimizer: torch.optim.Optimizer, args: RecTrainingArguments, batches_per_epoch: int):
    """transformers' schedule `lr_scheduler_type` over the run's optimiser steps, after a linear warm-up."""
    total_steps = args.max_steps or args.num_epochs * math.ceil(batches_per_epoch / args.gradient_accumulation_steps)
    warmup_steps = args.warmup_steps or math.ceil(args.warmup_ratio * total_steps)
    name = "constant_with_warmup" if args.lr_scheduler_type == "constant" and warmup_steps else args.lr_scheduler_type
    return get_scheduler(name, optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps)


def _finish(run: _Run, train_seconds: float) -> TrainingResult:
    """Score the best model on the test split; write results.json and the model card; push when asked."""
    args, accelerator, stopping = run.args, run.accelerator, run.early_stopping
    best_model_dir = run.output_dir / BEST_MODEL_DIR
    test_metrics = None
    if "test" in run.eval_loaders:
        accelerator.wait_for_everyone()
        best_model = MODEL_CLASSES[run.model_args.model_type][1].from_pretrained(best_model_dir)
        best_model = _with_runtime_settings(best_model, args).to(accelerator.device)
        test_metrics = evaluate_ranking(
            best_model,
            run.eval_loaders["test"],
            accelerator,
            args.k_values,
            progress="test",
            item_popularity=run.data.item_popularity(),
        )
    best_record = next((r for r in run.state.history if r["step"] == stopping.best_step), None)
    validation_metrics = None
    if best_record is not None:
        validation_metrics = {k.split("/", 1)[1]: v for k, v in best_record.items() if k.startswith("validation/")}
    result = TrainingResult(
        output_dir=str(run.output_dir),
        best_model_dir=str(best_model_dir),
        best_epoch=stopping.best_epoch,
        best_step=stopping.best_step,
        validation_metrics=validation_metrics,
        test_metrics=test_metrics,
        train_seconds=train_seconds,
        num_processes=accelerator.num_processes,
        history=run.state.history,
        command=reproducing_command(run.model_args, run.data_args, args, run.data, accelerator.num_processes),
    )
    if accelerator.is_main_process:
        (run.output_dir / "results.json").write_text(json.dumps(asdict(result), indent=2))
        if test_metrics is not None and args.report_to != "none":
            accelerator.log({f"test/{k}": v for k, v in test_metrics.items()}, step=run.state.global_step)
        accelerator.print(format_summary(result, args.metric_for_best_model))
        if stopping.best_step is not None:
            write_run_model_card(
                best_model_dir,
                dataset_name=run.data.name,
                metrics=test_metrics,
                training_seconds=train_seconds,
                num_processes=accelerator.num_processes,
                device=accelerator.device,
                training_config=_portable_settings(run.model_args, run.data_args, args, run.data),
                protocol=run.data.protocol_text,
                model_id=args.hub_model_id,
                command=result.command,
                dataset_id=_hub_dataset_id(run.data_args) or dataset_metadata_id(run.data.metadata, run.data.reference),
            )
            if args.push_to_hub:
                url = push_checkpoint(best_model_dir, args.hub_model_id, args.hub_private_repo)
                accelerator.print(f"Pushed {best_model_dir} to {url}")
    _remove_replaced_run(run)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


def _with_runtime_settings(model, training_args: RecTrainingArguments):
    """The model with the run's computation settings, which are not part of its config (nor of checkpoints)."""
    if training_args.attn_implementation is not None:
        model.set_attn_implementation(training_args.attn_implementation)
    model.length_group_size = training_args.length_group_size
    return model


def _save_best_model(run: _Run) -> None:
    """`save_pretrained` of the model and the item vocabulary into best_model/, through a staging folder."""
    accelerator = run.accelerator
    accelerator.wait_for_everyone()
    model = accelerator.unwrap_model(run.model)
    if isinstance(model, FSDPModule):
        model = _gathered_copy(run, model)  # a collective: every process takes part, the main one gets the model
    if accelerator.is_main_process:
        best_model_dir = run.output_dir / BEST_MODEL_DIR
        staging = best_model_dir.with_name(best_model_dir.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        model.save_pretrained(staging)
        run.data.vocabulary.save(staging)
        shutil.rmtree(best_model_dir, ignore_errors=True)
        staging.rename(best_model_dir)
    accelerator.wait_for_everyone()


def _gathered_copy(run: _Run, model: torch.nn.Module) -> torch.nn.Module | None:
    """On the main process, a plain (unsharded) model of the run's class holding the full CPU tensors of an FSDP2
    `model`, so that `save_pretrained` writes a normal checkpoint (its own class in config.json's auto_map, not FSDP's
    wrapper class); None on the other processes. The copy is built on the meta device and takes the gathered tensors
    as they are: no second copy of the item table."""
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not run.accelerator.is_main_process:
        return None
    with torch.device("meta"):
        copy = MODEL_CLASSES[run.model_args.model_type][1](run.config)
    copy.load_state_dict(full, assign=True)
    return _with_runtime_settings(copy, run.args)


def _save_checkpoint(run: _Run) -> None:
    """Save the full training state atomically: into `checkpoint-<step>.tmp`, renamed once every file is written
    (training_state.json last); keep the newest `save_total_limit`."""
    accelerator, state = run.accelerator, run.state
    checkpoint_dir = run.output_dir / CHECKPOINTS_DIR / f"{CHECKPOINT_PREFIX}{state.global_step}"
    staging = checkpoint_dir.with_name(checkpoint_dir.name + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (staging / "model_config.json").write_text(json.dumps(run.config.to_dict(), indent=2, sort_keys=True))
        (staging / "dataset.json").write_text(json.dumps(run.dataset_signature, indent=2))
        saved = {**state.state_dict(), "early_stopping": run.early_stopping.state_dict()}
        (staging / CHECKPOINT_COMPLETE_FILE).write_text(json.dumps(saved, indent=2))
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
        staging.rename(checkpoint_dir)
        for old in _checkpoints(checkpoint_dir.parent, complete_only=True)[: -run.args.save_total_limit]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    _remove_replaced_run(run)


def _remove_replaced_run(run: _Run) -> None:
    """Once this run has saved, delete the runs it replaced with --overwrite_output_dir (also by failed tries)."""
    if run.replaced_run is not None:
        for folder in run.output_dir.parent.glob(f"{run.output_dir.name}.replaced-*"):
            shutil.rmtree(folder)
        run.replaced_run = None


def _checkpoints(folder: Path, complete_only: bool) -> list[Path]:
    """The checkpoint-<step> folders in `folder` by step (with their .tmp staging folders unless `complete_only`)."""
    found = []
    for path in folder.glob(f"{CHECKPOINT_PREFIX}*"):
        match = re.fullmatch(rf"{CHECKPOINT_PREFIX}(\d+)(\.tmp)?", path.name)
        complete = match is not None and not match.group(2) and (path / CHECKPOINT_COMPLETE_FILE).is_file()
        if match and (complete or not complete_only):
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """The complete checkpoints of the run in `output_dir`, oldest first (what `--resume_from_checkpoint latest` picks
    from)."""
    return _checkpoints(Path(output_dir) / CHECKPOINTS_DIR, complete_only=True)


def _config_differences(saved: dict, current: dict) -> list[str]:
    names = (set(saved) | set(current)) - _NON_ARCHITECTURE_KEYS
    return sorted(
        f"{name}: checkpoint {saved.get(name)!r} vs now {current.get(name)!r}"
        for name in names
        if saved.get(name) != current.get(name)
    )


def _find_checkpoint(output_dir: Path, resume_from_checkpoint: str) -> Path:
    """The checkpoint folder to resume from: the given one, or with "latest" the newest complete one in output_dir.

    A checkpoint is written into `checkpoint-<step>.tmp` and renamed once complete (its training_state.json is
    written last), so a run killed while saving leaves no folder that looks complete.
    """
    if resume_from_checkpoint != "latest":
        path = Path(resume_from_checkpoint)
        if not (path / CHECKPOINT_COMPLETE_FILE).is_file():
            raise FileNotFoundError(
                f"{path} is not a complete training checkpoint (no {CHECKPOINT_COMPLETE_FILE} in it)."
            )
        return path
    folder = output_dir / CHECKPOINTS_DIR
    folders, complete = _checkpoints(folder, complete_only=False), complete_checkpoints(output_dir)
    if not complete:
        raise FileNotFoundError(
            f"No complete checkpoint to resume from in {folder}"
            + (f" (incomplete: {', '.join(path.name for path in folders)})." if folders else ".")
        )
    skipped = [path.name for path in folders[folders.index(complete[-1]) + 1 :]]
    if skipped:
        logger.warning(
            "Resuming from %s; skipped the newer incomplete checkpoint(s) %s (a run stopped while saving).",
            complete[-1],
            ", ".join(skipped),
        )
    return complete[-1]


def _check_resumable(checkpoint_path: Path, config, dataset_signature: dict) -> None:
    """Refuse a checkpoint of another model config or of other data, naming the differences."""
    saved_config = json.loads((checkpoint_path / "model_config.json").read_text())
    differences = _config_differences(saved_config, json.loads(json.dumps(config.to_dict(), sort_keys=True)))
    if differences:
        raise ValueError(f"Cannot resume from {checkpoint_path}: its model config differs: " + "; ".join(differences))
    saved_dataset = json.loads((checkpoint_path / "dataset.json").read_text())
    differences = _config_differences(saved_dataset, dataset_signature)
    if differences:
        raise ValueError(
            f"Cannot resume from {checkpoint_path}: it was trained on other data: " + "; ".join(differences)
        )


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
    """A plain-text table of the best validation and the test accuracy metrics, then the test split's
    beyond-accuracy metrics (validation computes accuracy only)."""
    test_metrics = result.test_metrics or {}
    accuracy = [
        name for name in test_metrics or result.validation_metrics or {} if name.split("@")[0] not in LIST_METRICS
    ]
    rows = [("split", *accuracy)]
    for split, metrics in (("validation", result.validation_metrics), ("test", result.test_metrics)):
        if metrics:
            rows.append((split, *(f"{metrics[name]:.4f}" for name in accuracy)))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(cell).rjust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]
    beyond_accuracy = [f"{name}={value:.4f}" for name, value in test_metrics.items() if name not in accuracy]
    if beyond_accuracy:
        lines.append("test beyond accuracy: " + ", ".join(beyond_accuracy))
    header = (
        f"Best model: epoch {result.best_epoch} by validation {metric_for_best_model}; "
        f"{result.train_seconds:.1f} s of training on {result.num_processes} process(es); "
        f"saved to {result.best_model_dir}"
    )
    return "\n".join([header, *lines])
