"""`speechlora eval` end to end on espeak-ng speech and a tiny random checkpoint.

The tiny model's weights are random, so its text is garbage of the right shape: these tests
assert structure, counts, order and equality between runs, never WER values.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf

from eval.report import score_file
from eval.results import LEADERBOARD_FIELDS, part_paths, read_rows
from speech.cli import main
from speech.tiny import write_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SENTENCES = [
    ("en+m1", "the quick brown fox jumps over the lazy dog", "le renard brun saute par-dessus le chien"),
    ("en+f2", "please leave a message after the tone", "veuillez laisser un message après le bip"),
    ("en+m3", "twenty five dollars and fifty cents", "vingt-cinq dollars et cinquante centimes"),
    ("en+f3", "hello world this is a test", "bonjour le monde ceci est un test"),
    ("en+m7", "good morning everyone", "bonjour à tous"),
    ("en+f4", "the weather is nice today", "il fait beau aujourd'hui"),
]
COMMON = ["--batch-size", "2", "--max-new-tokens", "24", "--no-progress"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("evalrun")
    (root / "wav").mkdir()
    lines = []
    for i, (voice, text, translation) in enumerate(SENTENCES):
        wav = root / "wav" / f"{i}.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(150 + 10 * i), "-w", str(wav), text], check=True)
        lines.append({"audio_filepath": f"wav/{i}.wav", "duration": round(sf.info(str(wav)).duration, 4),
                      "text": text.capitalize() + ".", "translation": translation, "lang": "en"})
    (root / "wav" / "bad.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEthis is not audio")
    lines.insert(2, {"audio_filepath": "wav/missing.wav", "duration": 1.0, "text": "never recorded"})
    lines.insert(4, {"audio_filepath": "wav/bad.wav", "duration": 1.0, "text": "corrupt file"})
    lines.append({"audio_filepath": "wav/0.wav", "duration": 1.0, "text": ""})  # dropped: empty reference
    manifest = root / "speech.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    model = write_tiny_checkpoint(root / "tiny")
    name = f"MODEL_local-tiny_DATASET_{root.name}_speech_test.jsonl"
    return {"root": root, "manifest": manifest, "model": model, "lines": lines, "name": name}


def _eval_args(corpus: dict, out: Path, *extra: str) -> list[str]:
    return ["eval", "--manifest", str(corpus["manifest"]), "--model", str(corpus["model"]),
            "--output-dir", str(out), *COMMON, *extra]


@pytest.fixture(scope="module")
def clean_run(corpus) -> Path:
    out = corpus["root"] / "clean"
    assert main(_eval_args(corpus, out)) == 0
    return out / corpus["name"]


def _without_time(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "time"} for row in rows]


def test_end_to_end_output_structure(corpus, clean_run):
    rows = read_rows(clean_run)
    lines = corpus["lines"]
    good = [i for i, line in enumerate(lines) if line["text"] and "bad" not in line["audio_filepath"]
            and "missing" not in line["audio_filepath"]]
    assert [row["index"] for row in rows] == good  # manifest order, skipped ones absent
    for row in rows:
        assert set(LEADERBOARD_FIELDS) <= row.keys()
        line = lines[row["index"]]
        assert row["audio_filepath"] == line["audio_filepath"]
        assert row["text"] == line["text"]  # raw reference stored, not normalized
        assert isinstance(row["pred_text"], str)
        assert row["duration"] == pytest.approx(line["duration"], abs=2e-3)  # audio seconds at 16 kHz
        assert row["time"] > 0 and row["task"] == "transcribe" and row["lang"] == "en"
    skipped = json.loads(clean_run.with_name(clean_run.name.removesuffix(".jsonl") + ".skipped.json").read_text())
    assert skipped["missing"] == ["wav/missing.wav"]
    assert [u["audio_filepath"] for u in skipped["unreadable"]] == ["wav/bad.wav"]
    assert skipped["dropped"] == ["wav/0.wav"]
    assert not part_paths(clean_run)

    out = clean_run.parent
    assert (out / "wer.png").read_bytes()[:4] == b"\x89PNG"
    report = json.loads((out / "report.json").read_text())
    (entry,) = report["models"]["local/tiny"]["datasets"]
    score = score_file(clean_run)
    assert entry["utterances"] == len(rows) == score.error.utterances
    assert entry["error_rate"]["percent"] == score.error.percent
    assert entry["skipped"] == {"missing": 1, "unreadable": 1, "dropped": 1}
    assert entry["rtfx"] == round(sum(r["duration"] for r in rows) / sum(r["time"] for r in rows), 2)
    assert f"| {entry['dataset']} | transcribe | {len(rows)} |" in (out / "report.md").read_text()


def test_strict_refuses_missing_audio(corpus, tmp_path, capsys):
    assert main(_eval_args(corpus, tmp_path, "--strict")) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "1 audio file(s) missing: wav/missing.wav" in err


def test_resume_after_interrupted_run(corpus, clean_run, tmp_path):
    out = tmp_path / "out"
    results = out / corpus["name"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    args = _eval_args(corpus, out, "--no-report")
    args[args.index("--batch-size") + 1] = "1"
    proc = subprocess.Popen([sys.executable, "-m", "speech.cli", *args], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    part = None
    while time.monotonic() < deadline and proc.poll() is None:
        parts = part_paths(results)
        if parts and parts[0].read_text().count("\n") >= 1:
            part = parts[0]
            proc.send_signal(signal.SIGKILL)  # a crash: no cleanup, no merge
            break
        time.sleep(0.005)
    proc.wait(timeout=30)
    assert part is not None and proc.returncode == -signal.SIGKILL, "the run ended before it could be interrupted"
    assert not results.exists()
    survivors = read_rows(part, tolerate_torn_tail=True)
    assert 1 <= len(survivors) < 6
    with part.open("a") as handle:  # what a kill in the middle of a write leaves behind
        handle.write('{"audio_filepath": "wav/3.wav", "dura')

    assert main(_eval_args(corpus, out)) == 0
    rows = read_rows(results)
    assert not part_paths(results)
    assert [r["index"] for r in rows] == [r["index"] for r in read_rows(clean_run)]  # each once, in order
    by_index = {r["index"]: r for r in rows}
    for kept in survivors:  # not decoded again: even the measured time is the first run's
        assert by_index[kept["index"]] == kept
    assert _without_time(rows) == _without_time(read_rows(clean_run))

    assert main(_eval_args(corpus, out)) == 0  # everything done: a rerun changes nothing
    assert read_rows(results) == rows


def test_two_ranks_match_one_rank(corpus, clean_run, tmp_path):
    out = tmp_path / "ranks"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "speech.cli", *_eval_args(corpus, out)]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = read_rows(out / corpus["name"])
    assert _without_time(rows) == _without_time(read_rows(clean_run))
    assert not part_paths(out / corpus["name"])
    assert done.stdout.count("markdown: ") == 1  # one report, from rank 0


def test_speech_translation_both(corpus, tmp_path):
    assert main(_eval_args(corpus, tmp_path, "--task", "both", "--target-lang", "fr")) == 0
    name = corpus["name"].replace("_speech_test", "_speech.both-fr_test")
    rows = read_rows(tmp_path / name)
    assert len(rows) == 6  # the rows without a translation are dropped, not fatal
    for row in rows:
        line = corpus["lines"][row["index"]]
        assert (row["task"], row["target_lang"]) == ("both", "fr")
        assert row["translation"] == line["translation"] and isinstance(row["pred_translation"], str)
    score = score_file(tmp_path / name)
    assert score.error.utterances == 6 and score.translation.utterances == 6
    assert "BLEU = " in (tmp_path / "report.md").read_text()


def test_clips_over_30_seconds_are_cut_by_vad(corpus):
    import numpy as np

    from encoder.audio import load_audio
    from eval.runner import decode_batch
    from speech.model import SpeechModel
    from speech.prompts import Task

    model = SpeechModel.load(corpus["model"])
    clips = [load_audio(corpus["root"] / "wav" / f"{i}.wav") for i in range(len(SENTENCES))]
    gap = np.zeros(16_000 * 4, dtype=np.float32)
    long = np.concatenate([part for clip in clips for part in (clip, gap)])[: 31 * 16_000]
    assert len(long) > 30 * 16_000  # generate() alone would refuse it
    short, long_text = decode_batch(model, [clips[0], long], Task(), 24)
    assert short == model.generate([clips[0]], Task(), 24)[0]
    assert isinstance(long_text, str) and long_text
