"""The paper's tables, ours beside them: `python scripts/reproduce.py --dataset ml-100k --raw_dir ../shared/data/ml-100k`
trains HSTU, HSTU-large, SASRec (the paper's recipe) and a strong SASRec with the dataset's presets over several
seeds and writes a markdown table of our test HR@10 / NDCG@10 (mean ± std) beside the published figures, with the
time taken and the commands (`hf_hstu.reproduction`). `--reduced true` is a smoke test of a few steps per run.
"""

import logging
import shlex
import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from hf_hstu.reproduction import DATASETS, MODEL_RECIPES, parse_list, parse_seeds, reproduce, reproduction_command


@dataclass
class ReproductionArguments:
    dataset: str = field(metadata={"help": f"One of: {', '.join(DATASETS)}."})
    raw_dir: str | None = field(
        default=None, metadata={"help": "Folder of the raw files (unset: the GroupLens download for MovieLens)."}
    )
    raw_path: str | None = field(
        default=None, metadata={"help": "The raw ratings file itself, e.g. ../shared/data/ml-1m/ratings.partial.dat."}
    )
    models: str = field(default=",".join(MODEL_RECIPES), metadata={"help": "Comma-separated rows of the table."})
    seeds: str = field(default="42,43,44")
    protocol: str = field(default="leave_one_out", metadata={"help": "Split protocol of the preprocessing."})
    output_dir: str | None = field(default=None, metadata={"help": "Default: outputs/reproduce/<dataset>."})
    markdown_file: str | None = field(
        default=None, metadata={"help": "Where the table goes (default: <output_dir>/reproduction_<dataset>.md)."}
    )
    reduced: bool = field(
        default=False, metadata={"help": "1 epoch of at most 2 steps per run: a smoke test, numbers not comparable."}
    )
    resume: bool = field(
        default=False,
        metadata={"help": "Keep the runs output_dir already holds with the same flags; continue a stopped one."},
    )
    item_features: bool = field(
        default=False,
        metadata={"help": "MovieLens: keep the genres and embed them with the item ids in every run (the ablation)."},
    )
    train_flags: str = field(
        default="", metadata={"help": "scripts/train.py flags for every run, e.g. '--eval_batch_size 512'."}
    )


def main() -> None:
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("hf_hstu").setLevel(logging.INFO)
    (args,) = HfArgumentParser(ReproductionArguments).parse_args_into_dataclasses()
    reproduction = reproduce(
        args.dataset,
        args.output_dir or f"outputs/reproduce/{args.dataset}",
        models=parse_list(args.models, "models", tuple(MODEL_RECIPES)),
        seeds=parse_seeds(args.seeds),
        raw_dir=args.raw_dir,
        raw_path=args.raw_path,
        protocol=args.protocol,
        reduced=args.reduced,
        train_flags=shlex.split(args.train_flags),
        command=reproduction_command(sys.argv[1:]),
        markdown_file=args.markdown_file,
        resume=args.resume,
        item_features=args.item_features,
    )
    print(reproduction.to_markdown())


if __name__ == "__main__":
    main()
