"""`speechlora transcribe` end to end: formats, long files, and one clear line for bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from conftest import SENTENCES, espeak


def cli(*args, check=False):
    return subprocess.run([sys.executable, "-m", "speech.cli", *map(str, args)], capture_output=True, text=True,
                          check=check)


def _one_clear_line(result):
    assert result.returncode != 0
    lines = [l for l in result.stderr.splitlines() if l.startswith("speechlora: error:")]
    assert lines, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_formats_and_any_audio_container(tiny_native, speech_dir, tmp_path):
    audio, rate = sf.read(speech_dir / "s0.wav")
    stereo = np.stack([audio, audio * 0.5], axis=1)
    sf.write(tmp_path / "stereo.flac", stereo, rate)
    sf.write(tmp_path / "clip.ogg", audio, rate, format="OGG", subtype="VORBIS")
    sf.write(tmp_path / "clip.mp3", audio, rate, format="MP3")
    files = [tmp_path / "stereo.flac", tmp_path / "clip.ogg", tmp_path / "clip.mp3"]
    out = cli("transcribe", *files, "--model", tiny_native, "--format", "json", check=True).stdout
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["source"] for r in records] == [str(f) for f in files]
    for r in records:
        assert r["error"] is None and r["text"]
        assert r["segments"][0]["start"] == 0.0
        assert r["segments"][-1]["end"] == pytest.approx(r["duration"], abs=0.01)
    srt = cli("transcribe", files[0], "--model", tiny_native, "--format", "srt", check=True).stdout
    assert srt.startswith("1\n00:00:00,000 --> 00:00:0")


def test_long_file_is_cut_by_vad_with_times(tiny_model, tmp_path):
    """Three sentences separated by 2 s pauses, repeated past 30 s: segments <= 30 s, times in order."""
    from encoder.audio import SAMPLE_RATE, load_audio

    gap = np.zeros(2 * SAMPLE_RATE, dtype=np.float32)
    parts = []
    for i, text in enumerate(SENTENCES * 4):
        parts += [load_audio(espeak(text, tmp_path / f"p{i}.wav")), gap]
    audio = np.concatenate(parts)
    assert len(audio) / SAMPLE_RATE > 30
    result = tiny_model.transcribe([audio], batch_size=4)[0]
    assert result.error is None
    assert len(result.segments) >= 4
    starts = [s.start for s in result.segments]
    assert starts == sorted(starts)
    for seg in result.segments:
        assert 0 <= seg.start < seg.end <= result.duration + 1e-6
        assert seg.end - seg.start <= 30.0
    # every sentence's audio lies inside some segment (speech is not dropped)
    t = 0.0
    for part in parts[::2]:
        mid = t + len(part) / SAMPLE_RATE / 2
        assert any(s.start <= mid <= s.end for s in result.segments)
        t += (len(part) + len(gap)) / SAMPLE_RATE


def test_bad_audio_gets_one_line_and_others_still_run(tiny_native, speech_dir, tmp_path):
    (tmp_path / "garbage.wav").write_bytes(b"RIFF\x00\x00not really audio at all" * 10)
    (tmp_path / "empty.wav").write_bytes(b"")
    sf.write(tmp_path / "silent.wav", np.zeros(16000, dtype=np.float32), 16000)
    sf.write(tmp_path / "nan.wav", np.full(16000, np.nan, dtype=np.float32), 16000, subtype="FLOAT")
    good = speech_dir / "s1.wav"
    bad = ["garbage.wav", "empty.wav", "silent.wav", "nan.wav", "missing.wav"]
    result = cli("transcribe", good, *[tmp_path / b for b in bad], "--model", tiny_native)
    assert result.returncode == 1
    errors = [l for l in result.stderr.splitlines() if l.startswith("speechlora: error:")]
    assert len(errors) == len(bad)
    for name, reason in zip(bad, ["cannot decode", "cannot decode", "silent", "NaN", "no such file"]):
        assert any(name in e and reason in e for e in errors), (name, errors)
    assert "Traceback" not in result.stderr
    assert result.stdout.strip()  # the good file was still transcribed


@pytest.mark.parametrize("args,reason", [
    (["--task", "summarize"], "unknown task 'summarize'"),
    (["--task", "translate", "--target-lang", "Klingon"], "unknown language 'Klingon'"),
    (["--ctc-beam", "0"], "ctc_beam must be at least 1"),
    (["--ctc-prune", "3"], "ctc_prune must be a negative log-probability"),
])
def test_bad_task_or_language(tiny_native, speech_dir, args, reason):
    line = _one_clear_line(cli("transcribe", speech_dir / "s0.wav", "--model", tiny_native, *args))
    assert reason in line


def test_bad_model_folders(tmp_path, speech_dir, tiny_native):
    assert "no such folder" in _one_clear_line(cli("transcribe", speech_dir / "s0.wav", "--model", tmp_path / "x"))
    line = _one_clear_line(cli("transcribe", speech_dir / "s0.wav", "--model", tiny_native, "--adapter", tmp_path / "nope"))
    assert "no such adapter folder" in line
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    assert "model_type 'bert'" in _one_clear_line(cli("transcribe", speech_dir / "s0.wav", "--model", tmp_path))


def test_translate_and_both_tasks(tiny_native, speech_dir):
    out = cli("transcribe", speech_dir / "s0.wav", "--model", tiny_native, "--task", "both", "--target-lang",
              "French", "--format", "json", check=True).stdout
    record = json.loads(out)
    assert record["error"] is None and "translation" in record
