"""Run pocketsphinx (PyPI, its bundled US English model) over eval manifests, leaderboard format.

The peer for the built-in model: the same utterances, written as the same leaderboard jsonl
files into the same folder, so `speechlora eval score DIR` puts both models in one table
(WER with the same normalizer, RTFx timed the same way: decoding only, warm-up excluded).

    python bench/pocketsphinx_eval.py --manifest a.jsonl b.jsonl --output-dir results/
    speechlora eval score results/
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from eval.manifests import load_datasets
from eval.results import result_filename, write_rows

MODEL_ID = "cmusphinx/pocketsphinx-en-us"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", nargs="+", required=True)
    parser.add_argument("--output-dir", required=True, type=Path)
    args = parser.parse_args()

    from pocketsphinx import Decoder

    decoder = Decoder(samprate=16000, loglevel="FATAL")

    def recognize(audio: np.ndarray) -> str:
        pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
        decoder.start_utt()
        decoder.process_raw(pcm, full_utt=True)
        decoder.end_utt()
        hyp = decoder.hyp()
        return hyp.hypstr if hyp else ""

    recognize(np.zeros(16000, dtype=np.float32))  # warm-up
    args.output_dir.mkdir(parents=True, exist_ok=True)
    for dataset in load_datasets(args.manifest, []):
        rows = []
        for utt in tqdm(dataset.utterances, desc=dataset.dataset_id, unit="utt"):
            audio = utt.audio.load()
            start = time.perf_counter()
            text = recognize(audio)
            rows.append({"audio_filepath": utt.audio_id, "duration": len(audio) / 16000,
                         "time": time.perf_counter() - start, "text": utt.text, "pred_text": text,
                         "index": utt.index, "lang": utt.lang or "en", "task": "transcribe"})
        write_rows(args.output_dir / result_filename(MODEL_ID, dataset.dataset_id), rows)
        print(f"{dataset.dataset_id}: {len(rows)} utterances")


if __name__ == "__main__":
    main()
