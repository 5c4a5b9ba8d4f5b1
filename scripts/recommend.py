"""Offline batch prediction: the top-k items of every user of a histories file, in raw ids.

python scripts/recommend.py --model outputs/run/best_model --input histories.parquet --output recs.parquet --k 100 \
    --request_time last_event
ACCELERATE_USE_CPU=1 OMP_NUM_THREADS=1 accelerate launch --multi_gpu --num_processes 2 scripts/recommend.py ...

Writes recs.parquet (user, rank, item, score) and recs.summary.json (rows, skipped rows, unknown items per user, users
without a known item, ...), and prints the summary as JSON. See hf_hstu/serving/batch_prediction.py.
"""

import json

from transformers import HfArgumentParser

from hf_hstu.serving.batch_prediction import BatchPredictionArguments, recommend_file


def main() -> None:
    (args,) = HfArgumentParser(BatchPredictionArguments).parse_args_into_dataclasses()
    summary = recommend_file(args)
    if summary:  # the main process
        print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
