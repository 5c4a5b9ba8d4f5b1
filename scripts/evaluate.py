"""Rank the held-out targets of a preprocessed dataset with a trained checkpoint; prints the metrics as JSON.

python scripts/evaluate.py --model outputs/run/best_model --dataset data/ml-1m --split test
"""

import json
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from hf_hstu.evaluation.ranking import evaluate_checkpoint


@dataclass
class EvaluateArguments:
    model: str = field(metadata={"help": "Checkpoint folder or Hub model id."})
    dataset: str = field(metadata={"help": "A folder written by scripts/preprocess.py."})
    split: str = field(default="test")
    batch_size: int = field(default=256)
    top_k: str = field(default="10,50,200", metadata={"help": "Cut-offs of HR and NDCG."})
    trust_remote_code: bool = field(default=False)
    attn_implementation: str | None = field(
        default=None, metadata={"help": "eager or hstu_triton; unset: the Triton kernels for CUDA tensors, else eager."}
    )


def main() -> None:
    (args,) = HfArgumentParser(EvaluateArguments).parse_args_into_dataclasses()
    metrics = evaluate_checkpoint(
        args.model,
        args.dataset,
        args.split,
        args.batch_size,
        tuple(int(k) for k in args.top_k.split(",")),
        trust_remote_code=args.trust_remote_code,
        attn_implementation=args.attn_implementation,
    )
    print(json.dumps({"model": args.model, "dataset": args.dataset, "split": args.split, **metrics}, indent=2))


if __name__ == "__main__":
    main()
