"""The `speechlora` command: one entry point that dispatches to every job.

This is the one module that sees every package (encoder, speech, service, eval); each job
registers its own subcommand with a `register(subparsers)` function, imported lazily so that
`speechlora info` does not pay for importing grpc and `speechlora serve` does not import eval.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import warnings

from speech.errors import UserError

# (module, attribute): each `register(subparsers)` adds one or more subcommands and sets
# `func` (args -> exit code) on them with `set_defaults`.
_JOBS = [
    ("speech.commands", "register"),
    ("service.cli", "register"),
    ("eval.cli", "register"),
    ("speech.data.cli", "register"),
    ("speech.finetune.cli", "register"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="speechlora",
        description=(
            "Speech recognition and speech translation with Phi-4-multimodal's speech LoRA. "
            "Every command uses the small built-in model unless --model points at a local "
            "Phi-4-multimodal-instruct folder."
        ),
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name, attr in _JOBS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                continue  # that job is not part of this build
            raise
        getattr(module, attr)(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Never reach for a model hub: every model is a local folder.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notes, not user news
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"speechlora: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("speechlora: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
