"""Train HSTU or SASRec: `python scripts/train.py` (embedded seeded dataset, a few CPU minutes) or
`accelerate launch scripts/train.py --preset ml-1m-hstu --dataset data/ml-1m` (1..N GPUs, or CPU).

Arguments come from the dataclasses of `hf_hstu.training.arguments` (`--help` lists them); `--preset NAME` and
`--config FILE.yaml` set defaults that the other flags override.
"""

from hf_hstu.training.arguments import parse_training_arguments
from hf_hstu.training.loop import train


def main() -> None:
    model_args, data_args, training_args = parse_training_arguments()
    train(model_args, data_args, training_args)


if __name__ == "__main__":
    main()
