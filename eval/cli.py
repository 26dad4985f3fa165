"""`speechlora eval` (inference + scoring + report) and `speechlora eval score DIR` (scoring only)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from speech.commands import BEAM_HELP, CTC_HELP, PRUNE_HELP
from speech.errors import UserError

log = logging.getLogger(__name__)

BUILTIN_MODEL_ID = "speechlora/builtin"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="Open-ASR-Leaderboard-style evaluation: WER/CER, BLEU/chrF++, RTFx",
        description=(
            "Decode NeMo jsonl manifests and local Hugging Face datasets in batches, write one "
            "leaderboard-format jsonl per dataset into --output-dir, then score the folder and write "
            "report.md, report.json and wer.png. Reruns resume; under `torchrun --nproc-per-node N` "
            "the datasets are split across the ranks. `speechlora eval score DIR` scores only."
        ),
    )
    parser.add_argument("--manifest", action="extend", nargs="+", default=[], metavar="[NAME[:SPLIT]=]PATH",
                        help="NeMo jsonl manifest(s): audio_filepath, duration, text[, lang, translation, offset]")
    parser.add_argument("--dataset", action="extend", nargs="+", default=[], metavar="[NAME[:SPLIT]=]PATH",
                        help="local Hugging Face dataset(s): a save_to_disk folder or parquet file(s)")
    parser.add_argument("--output-dir", type=Path, default=Path("results"), help="where result files go (default: results/)")
    parser.add_argument("--model", type=Path, default=None, help="checkpoint folder (default: the built-in model)")
    parser.add_argument("--adapter", type=Path, default=None, help="fine-tuned speech adapter folder")
    parser.add_argument("--ctc-weight", type=float, default=None, metavar="W", help=CTC_HELP)
    parser.add_argument("--ctc-beam", type=int, default=None, metavar="N", help=BEAM_HELP)
    parser.add_argument("--ctc-prune", type=float, default=None, metavar="LOGP", help=PRUNE_HELP)
    parser.add_argument("--model-id", default=None,
                        help="model name in file names (default: speechlora/builtin, or local/<folder name>)")
    parser.add_argument("--task", default="transcribe", help="transcribe (default), translate or both")
    parser.add_argument("--target-lang", default=None,
                        help="translation target (default: the manifest's translation_lang, else en)")
    parser.add_argument("--lang", default="en", help="reference language where the data does not say (default: en)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=None, help="decoding budget (default: from clip length)")
    parser.add_argument("--warmup-batches", type=int, default=1, help="untimed batches before timing (default: 1)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda:LOCAL_RANK if available)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                        help="weights dtype (default: bfloat16 on GPU, float32 on CPU)")
    parser.add_argument("--strict", action="store_true", help="missing or unreadable audio is an error")
    parser.add_argument("--overwrite", action="store_true", help="start over instead of resuming")
    parser.add_argument("--top", type=int, default=10, help="most frequent errors listed per dataset")
    parser.add_argument("--no-report", action="store_true", help="write the result files only")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run_eval)

    sub = parser.add_subparsers(dest="eval_command", metavar="{score}")
    score = sub.add_parser(
        "score",
        help="score a folder of result files (ours or any tool's in the leaderboard format)",
        description="Score every MODEL_*_DATASET_*.jsonl under DIR and write report.md/json and wer.png.",
    )
    score.add_argument("directory", type=Path)
    score.add_argument("--lang", default="en", help="reference language for rows without 'lang' (default: en)")
    score.add_argument("--model-id", default=None, help="only this model's files")
    score.add_argument("--report-dir", type=Path, default=None, help="where the report goes (default: DIR)")
    score.add_argument("--top", type=int, default=10, help="most frequent errors listed per dataset")
    score.set_defaults(func=run_score)


def default_model_id(model: Path | None, adapter: Path | None, ctc_weight: float | None = None,
                     ctc_beam: int | None = None, ctc_prune: float | None = None) -> str:
    """Names the decoding setup too, so a resumed run never mixes results of two setups."""
    base = BUILTIN_MODEL_ID if model is None else f"local/{model.resolve().name}"
    base = base if adapter is None else f"{base}+{adapter.resolve().name}"
    base = base if ctc_weight is None else f"{base}-ctc{ctc_weight:g}"
    base = base if ctc_beam is None else f"{base}-beam{ctc_beam}"
    return base if ctc_prune is None else f"{base}-prune{ctc_prune:g}"


def _report(directory: Path, lang: str, model_id: str | None, report_dir: Path, top: int) -> None:
    from eval.report import print_summary, score_directory, write_report

    scores = score_directory(directory, lang, model_id, top)
    print_summary(scores)
    for kind, path in write_report(scores, report_dir, top).items():
        print(f"{kind}: {path}")


def run_score(args: argparse.Namespace) -> int:
    from eval.normalizers import base_language

    _report(args.directory, base_language(args.lang), args.model_id, args.report_dir or args.directory, args.top)
    return 0


def _dtype(name: str | None):
    if name is None:
        return None
    import torch

    return getattr(torch, name)


def run_eval(args: argparse.Namespace) -> int:
    from eval.manifests import load_datasets
    from eval.results import part_paths, result_filename, skipped_path
    from eval.runner import Distributed, RunOptions, prepare, resolve_task, run
    from speech.prompts import Task, language_code

    if not args.manifest and not args.dataset:
        raise UserError("nothing to evaluate: give --manifest and/or --dataset")
    if args.batch_size < 1 or args.warmup_batches < 0:
        raise UserError("--batch-size must be >= 1 and --warmup-batches >= 0")
    task = Task.parse(args.task, args.target_lang)
    lang = language_code(args.lang)
    prepared = [
        prepare(ds, resolve_task(ds, task, args.target_lang is not None), lang, args.strict)
        for ds in load_datasets(args.manifest, args.dataset)
    ]
    options = RunOptions(
        model_id=args.model_id or default_model_id(args.model, args.adapter, args.ctc_weight, args.ctc_beam,
                                                             args.ctc_prune),
        task=task,
        lang=lang,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        warmup_batches=args.warmup_batches,
        strict=args.strict,
        progress=not args.no_progress,
    )
    dist = Distributed()
    try:
        if args.overwrite and dist.is_main:
            for p in prepared:
                results = args.output_dir / result_filename(options.model_id, p.dataset_id)
                for path in [results, skipped_path(results), *part_paths(results)]:
                    path.unlink(missing_ok=True)
        dist.barrier()
        model = _load_model(args, dist)
        runs = run(model, prepared, args.output_dir, options, dist)
        if dist.is_main:
            for r in runs:
                if r.missing or r.unreadable:
                    print(f"{r.path.name}: {len(r.missing)} missing, {len(r.unreadable)} unreadable audio file(s) "
                          f"skipped (listed in {skipped_path(r.path).name})")
            if not args.no_report:
                _report(args.output_dir, lang, None, args.output_dir, args.top)
    finally:
        dist.close()
    return 0


def _load_model(args: argparse.Namespace, dist):
    from speech.model import SpeechModel

    device = args.device
    if device is None and dist.world_size > 1:
        import torch

        if torch.cuda.is_available():
            device = f"cuda:{dist.local_rank % torch.cuda.device_count()}"
    return SpeechModel.load(args.model, adapter=args.adapter, device=device, dtype=_dtype(args.dtype),
                            ctc_weight=args.ctc_weight, ctc_beam=args.ctc_beam, ctc_prune=args.ctc_prune)
