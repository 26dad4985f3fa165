"""`speechlora finetune CONFIG.yaml`: train what the config chooses and export an adapter or a model.

Launch on one device as is; on several with `torchrun --nproc-per-node N -m speech.cli finetune ...`
or `accelerate launch [--config_file examples/finetune/accelerate/fsdp.yaml] -m speech.cli finetune ...`.
"""

from __future__ import annotations

import argparse
import os


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune the speech LoRA / projector / encoder on jsonl manifests (see README: Fine-tuning)",
        description="Fine-tune on jsonl manifests with HF accelerate (DDP by default; FSDP/DeepSpeed through "
                    "an accelerate config). Writes checkpoints, TensorBoard logs and an adapter (or a full model) "
                    "into the config's output_dir. Multi-GPU: torchrun --nproc-per-node N -m speech.cli finetune "
                    "CONFIG.yaml",
    )
    p.add_argument("config", help="yaml config (see examples/finetune/*.yaml)")
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="CHECKPOINT",
                   help="continue the run in output_dir from its latest checkpoint (or from CHECKPOINT); "
                        "refused if the checkpoint was written by a different config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (dotted, yaml value), e.g. --set optim.lr=1e-4; repeatable")
    p.add_argument("--export-only", action="store_true",
                   help="export the best (or last) checkpoint of output_dir without training")
    p.set_defaults(func=_finetune)


def _finetune(args: argparse.Namespace) -> int:
    from speech.finetune.config import load_config
    from speech.finetune.trainer import run

    import logging

    logging.getLogger("accelerate").setLevel(logging.WARNING)  # its per-file checkpoint lines
    config = load_config(args.config, args.overrides)
    out = run(config, resume=args.resume, export_only=args.export_only)
    if out is not None and os.environ.get("RANK", "0") == "0":
        print(out)
    return 0
