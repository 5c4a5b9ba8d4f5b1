"""Push a saved checkpoint folder (weights, config with auto_map, model code, item vocabulary, model card) to the Hub.

    python scripts/push_to_hub.py --checkpoint outputs/run/best_model --repo_id org/hstu-ml1m

The folder's README.md (written by scripts/train.py with the measured metrics) is the model card; without one, a card
is made from the config, with `--dataset_name` and `--metrics_file` (a results.json of a run: metrics, training time
and command) when given. The pushed card's code loads `--repo_id`, and the pushed config.json names no local folder.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from hf_hstu.hub.push import push_checkpoint, write_run_model_card


@dataclass
class PushArguments:
    checkpoint: str = field(metadata={"help": "A folder written by save_pretrained (e.g. outputs/run/best_model)."})
    repo_id: str = field(metadata={"help": "Hub repository, e.g. org/hstu-ml1m."})
    private: bool = field(default=False)
    dataset_name: str | None = field(default=None, metadata={"help": "For a card made here."})
    metrics_file: str | None = field(default=None, metadata={"help": "results.json of the run, for a card made here."})
    commit_message: str = field(default="Upload hf_hstu checkpoint")


def main() -> None:
    (args,) = HfArgumentParser(PushArguments).parse_args_into_dataclasses()
    checkpoint = Path(args.checkpoint)
    if not (checkpoint / "README.md").is_file():
        results = json.loads(Path(args.metrics_file).read_text()) if args.metrics_file else {}
        write_run_model_card(
            checkpoint,
            dataset_name=args.dataset_name or "unknown",
            metrics=results.get("test_metrics"),
            training_seconds=results.get("train_seconds"),
            num_processes=results.get("num_processes", 1),
            training_config={},
            model_id=args.repo_id,
            command=results.get("command"),
        )
    print(push_checkpoint(checkpoint, args.repo_id, args.private, args.commit_message))


if __name__ == "__main__":
    main()
