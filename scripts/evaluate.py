"""Evaluate a trained checkpoint on the held-out targets of a preprocessed dataset; prints the metrics as JSON:
HR, Recall, NDCG and MRR at each cut-off (and MRR), catalogue coverage, full-list share, ARP, novelty and serendipity
(popularity from the dataset's train split).

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
    top_k: str = field(default="10,50,100,200", metadata={"help": "Cut-offs K of every metric."})
    metrics: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated among hr, recall, ndcg, mrr, coverage, full_list_share, arp, novelty, "
            "serendipity, ild (ild needs item features); unset: every metric the inputs allow."
        },
    )
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
        metrics=args.metrics.split(",") if args.metrics else None,
    )
    print(json.dumps({"model": args.model, "dataset": args.dataset, "split": args.split, **metrics}, indent=2))


if __name__ == "__main__":
    main()
