"""Push a preprocessed dataset folder (splits, vocabularies, preprocessing.json) to the Hub with a dataset card.

    python scripts/preprocess.py --dataset synthetic --output data/synthetic
    python scripts/push_dataset.py --dataset data/synthetic --repo_id org/synthetic-sequences
    python scripts/train.py --dataset org/synthetic-sequences

MovieLens and Amazon data may not be redistributed without permission: they are pushed only with
`--i_have_the_rights`, and whoever pushes is responsible for holding those rights.
"""

import logging
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from hf_hstu.hub.push import push_dataset

RIGHTS_HELP = (
    "Required for sources that may not be redistributed (MovieLens, Amazon): you hold the permission to publish them."
)


@dataclass
class PushDatasetArguments:
    dataset: str = field(metadata={"help": "A folder written by scripts/preprocess.py (--output)."})
    repo_id: str = field(metadata={"help": "Hub dataset repository, e.g. org/ml-1m-sequences."})
    private: bool = field(default=False)
    i_have_the_rights: bool = field(default=False, metadata={"help": RIGHTS_HELP})


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    (args,) = HfArgumentParser(PushDatasetArguments).parse_args_into_dataclasses()
    print(push_dataset(args.dataset, args.repo_id, args.private, args.i_have_the_rights))


if __name__ == "__main__":
    main()
