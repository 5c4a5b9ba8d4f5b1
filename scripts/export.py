"""Export a checkpoint's user encoder (history -> user embedding) with torch.export and to ONNX, with its item table.

python scripts/export.py --model outputs/run/best_model --output_dir exported/

Writes user_encoder.pt2, user_encoder.onnx, item_table.safetensors, export_config.json (and item_vocabulary.json when
the checkpoint has one); scores are user_embeddings @ item_table.T. See hf_hstu/serving/export.py for the limits.
"""

import json
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from hf_hstu.serving.export import export_checkpoint


@dataclass
class ExportArguments:
    model: str = field(metadata={"help": "Checkpoint folder or Hub model id."})
    output_dir: str = field(metadata={"help": "Folder to write the exported files into."})
    onnx: bool = field(default=True, metadata={"help": "Also export to ONNX (needs onnx and onnxscript)."})
    revision: str | None = field(default=None, metadata={"help": "Hub revision of --model."})
    trust_remote_code: bool = field(default=False)


def main() -> None:
    (args,) = HfArgumentParser(ExportArguments).parse_args_into_dataclasses()
    files = export_checkpoint(args.model, args.output_dir, args.onnx, args.revision, args.trust_remote_code)
    print(json.dumps({name: str(path) if path else None for name, path in vars(files).items()}, indent=2))


if __name__ == "__main__":
    main()
