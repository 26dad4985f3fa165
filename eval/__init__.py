"""Open-ASR-Leaderboard-style batch evaluation: manifests, normalizers, WER/CER/BLEU, RTFx, reports.

`eval.metrics` and `eval.normalizers` import no model (fine-tuning uses them for validation WER);
`eval.runner` drives a `speech.model.SpeechModel`; `eval.cli` is `speechlora eval`.
"""
