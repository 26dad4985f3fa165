"""Evaluation inputs and outputs without a model: manifests, HF datasets, file naming, scoring, report."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from eval.manifests import load_datasets, parse_spec, read_hf_dataset, read_manifest
from eval.report import score_directory, score_file, summarize, write_report
from eval.results import parse_result_filename, read_rows, result_filename
from eval.runner import prepare
from speech.errors import UserError
from speech.prompts import Task


def _espeak(path: Path, text: str) -> Path:
    subprocess.run(["espeak-ng", "-w", str(path), text], check=True)
    return path


@pytest.fixture(scope="module")
def speech_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("speech")
    (root / "wav").mkdir()
    _espeak(root / "wav" / "a.wav", "hello world")
    _espeak(root / "wav" / "b.wav", "good morning")
    return root


def _write_manifest(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


# ---- manifests -----------------------------------------------------------------------------

def test_manifest_paths_resolve_against_its_folder(speech_dir, tmp_path, monkeypatch):
    manifest = _write_manifest(speech_dir / "dev.jsonl", [
        {"audio_filepath": "wav/a.wav", "duration": 1.0, "text": "hello world", "lang": "en"},
        {"audio_filepath": str(speech_dir / "wav" / "b.wav"), "text": "good morning", "translation": "bonjour",
         "translation_lang": "fr"},
    ])
    monkeypatch.chdir(tmp_path)  # somewhere else: the relative path must not depend on the cwd
    ds = read_manifest(manifest)
    assert [u.audio_id for u in ds.utterances] == ["wav/a.wav", str(speech_dir / "wav" / "b.wav")]
    assert ds.utterances[0].audio.exists() and ds.utterances[1].translation == "bonjour"
    audio = ds.utterances[0].audio.load()
    assert audio.dtype == np.float32 and audio.ndim == 1 and len(audio) > 8000
    assert ds.dataset_id == f"{speech_dir.name}_dev_test"


def test_manifest_offset_slices_the_file(speech_dir):
    manifest = _write_manifest(speech_dir / "slice.jsonl", [
        {"audio_filepath": "wav/a.wav", "offset": 0.1, "duration": 0.25, "text": "hello"},
    ])
    assert len(read_manifest(manifest).utterances[0].audio.load()) == 4000  # 0.25 s at 16 kHz


def test_bad_manifest_lines_reported_with_numbers(tmp_path):
    manifest = _write_manifest(tmp_path / "bad.jsonl", [
        {"audio_filepath": "a.wav", "text": "fine"},
        "",
        "{not json",
        {"text": "no audio"},
        {"audio_filepath": "b.wav", "text": 3},
        {"audio_filepath": "c.wav", "text": "x", "duration": "long"},
        "[1, 2]",
        {"audio_filepath": "d.wav"},
    ])
    with pytest.raises(UserError) as err:
        read_manifest(manifest)
    message = str(err.value)
    assert "\n" not in message and "6 bad manifest line(s)" in message
    for expected in ("line 3: not JSON", "line 4: missing 'audio_filepath'", "line 5: 'text' must be a string",
                     "line 6: 'duration' must be a non-negative number", "line 7: expected a JSON object",
                     "line 8: missing 'text'"):
        assert expected in message
    assert "line 1" not in message and "line 2" not in message


def test_empty_or_absent_manifest_refused(tmp_path):
    with pytest.raises(UserError, match="no such manifest"):
        read_manifest(tmp_path / "absent.jsonl")
    with pytest.raises(UserError, match="no utterances"):
        read_manifest(_write_manifest(tmp_path / "empty.jsonl", [""]))


def test_spec_names_the_dataset_and_duplicates_are_refused(speech_dir):
    manifest = _write_manifest(speech_dir / "x.jsonl", [{"audio_filepath": "wav/a.wav", "text": "hello world"}])
    assert parse_spec(str(manifest)) == (manifest, None, None)
    assert parse_spec(f"librispeech:test.clean={manifest}") == (manifest, "librispeech", "test.clean")
    (ds,) = load_datasets([f"librispeech:test.clean={manifest}"], [])
    assert ds.dataset_id == f"{speech_dir.name}_librispeech_test.clean"
    with pytest.raises(UserError, match="both have the id"):
        load_datasets([str(manifest), str(manifest)], [])


def test_missing_audio_counted_dropped_references_and_languages(speech_dir):
    manifest = _write_manifest(speech_dir / "mixed.jsonl", [
        {"audio_filepath": "wav/a.wav", "text": "hello world"},
        {"audio_filepath": "wav/gone.wav", "text": "not here"},
        {"audio_filepath": "wav/gone2.wav", "text": "nor here"},
        {"audio_filepath": "wav/b.wav", "text": "ignore time segment in scoring"},
        {"audio_filepath": "wav/b.wav", "text": "bonjour", "lang": "fr-FR", "translation": "hello"},
    ])
    prepared = prepare(read_manifest(manifest), Task(), "en")
    assert prepared.missing == ["wav/gone.wav", "wav/gone2.wav"]
    assert prepared.dropped == ["wav/b.wav"]
    assert [(i.reference, i.lang) for i in prepared.items] == [("hello world", "en"), ("bonjour", "fr")]
    with pytest.raises(UserError, match="2 audio file\\(s\\) missing: wav/gone.wav, wav/gone2.wav"):
        prepare(read_manifest(manifest), Task(), "en", strict=True)
    bad_lang = _write_manifest(speech_dir / "klingon.jsonl", [{"audio_filepath": "wav/a.wav", "text": "x", "lang": "tlh"}])
    with pytest.raises(UserError, match="unknown language 'tlh'; supported: en \\(English\\)"):
        prepare(read_manifest(bad_lang), Task(), "en")
    with pytest.raises(UserError, match="no utterance has a 'translation'"):
        prepare(read_manifest(_write_manifest(speech_dir / "plain.jsonl", [{"audio_filepath": "wav/a.wav", "text": "x"}])),
                Task("translate", "fr"), "en")
    translated = prepare(read_manifest(manifest), Task("translate", "en"), "en")  # only the last has a translation
    assert len(translated.dropped) == 4
    assert [(i.reference, i.lang) for i in translated.items] == [("hello", "en")]


# ---- local Hugging Face datasets -------------------------------------------------------------

def test_hf_datasets_save_to_disk_and_parquet(speech_dir, tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = {
        "audio": [str(speech_dir / "wav" / "a.wav"), str(speech_dir / "wav" / "b.wav")],
        "sentence": ["hello world", "good morning"],  # a leaderboard text column other than "text"
        "id": ["utt-a", "utt-b"],
    }
    data = datasets.Dataset.from_dict(rows).cast_column("audio", datasets.Audio())
    data.save_to_disk(str(tmp_path / "esb" / "single"))
    datasets.DatasetDict({"test.clean": data, "test.other": data}).save_to_disk(str(tmp_path / "esb" / "librispeech"))
    data.to_parquet(str(tmp_path / "esb" / "voxpopuli.parquet"))

    (single,) = read_hf_dataset(tmp_path / "esb" / "single")
    assert single.dataset_id == "esb_single_test"
    assert [u.audio_id for u in single.utterances] == ["utt-a", "utt-b"]
    assert [u.text for u in single.utterances] == ["hello world", "good morning"]
    waves = [u.audio.load() for u in single.utterances]
    assert all(w.dtype == np.float32 and len(w) > 4000 for w in waves)

    splits = read_hf_dataset(tmp_path / "esb" / "librispeech")
    assert [d.dataset_id for d in splits] == ["esb_librispeech_test.clean", "esb_librispeech_test.other"]
    (other,) = read_hf_dataset(tmp_path / "esb" / "librispeech", split="test.other")
    assert other.split == "test.other"
    with pytest.raises(UserError, match="no split 'dev'; splits: test.clean, test.other"):
        read_hf_dataset(tmp_path / "esb" / "librispeech", split="dev")

    (parquet,) = read_hf_dataset(tmp_path / "esb" / "voxpopuli.parquet")
    assert parquet.dataset_id == "esb_voxpopuli_test"
    assert np.allclose(parquet.utterances[0].audio.load(), waves[0])

    no_text = datasets.Dataset.from_dict({"audio": rows["audio"], "words": ["a", "b"]})
    no_text.save_to_disk(str(tmp_path / "notext"))
    with pytest.raises(UserError, match="no transcript column; expected one of text, sentence"):
        read_hf_dataset(tmp_path / "notext")


# ---- result files, scoring, report -------------------------------------------------------------

def test_leaderboard_file_naming():
    name = result_filename("openai/whisper-large-v3", "hf-audio/esb-datasets-test-only-sorted_librispeech_test.clean")
    assert name == "MODEL_openai-whisper-large-v3_DATASET_hf-audio-esb-datasets-test-only-sorted_librispeech_test.clean.jsonl"
    assert parse_result_filename(name) == (
        "openai/whisper-large-v3", "hf-audio-esb-datasets-test-only-sorted_librispeech_test.clean")


def _leaderboard_rows(pairs: list[tuple[str, str]], duration=2.0, time=0.1) -> str:
    """Rows as the leaderboard's own write_manifest writes them (five fields, sample_N ids)."""
    return "".join(json.dumps({"audio_filepath": f"sample_{i}", "duration": duration, "time": time, "text": ref,
                               "pred_text": hyp}, ensure_ascii=False) + "\n" for i, (ref, hyp) in enumerate(pairs))


def test_score_a_folder_written_by_another_tool(tmp_path):
    (tmp_path / "MODEL_openai-whisper-tiny_DATASET_esb_ami_test.jsonl").write_text(
        _leaderboard_rows([("the cat sat on the mat", "the cat sit on mat"), ("hello there", "hello there")]))
    (tmp_path / "MODEL_openai-whisper-tiny_DATASET_esb_spgi_test.jsonl").write_text(
        _leaderboard_rows([("a b c", "a x b c")], time=0.5))
    (tmp_path / "MODEL_other-model_DATASET_esb_ami_test.jsonl").write_text(_leaderboard_rows([("a", "a")]))
    scores = score_directory(tmp_path, model_id="openai/whisper-tiny")
    assert [(s.model_id, s.dataset_id) for s in scores] == [
        ("openai/whisper-tiny", "esb_ami_test"), ("openai/whisper-tiny", "esb_spgi_test")]
    ami, spgi = scores
    assert (ami.error.substitutions, ami.error.deletions, ami.error.insertions) == (1, 1, 0)
    assert ami.error.percent == 25.0  # 2 errors / 8 words
    assert spgi.error.percent == 33.33
    assert ami.rtfx == 20.0 and spgi.rtfx == 4.0
    totals = summarize(scores)["openai/whisper-tiny"]
    assert totals["wer"] == round((25.0 + 33.33) / 2, 2)
    assert totals["rtfx"] == round(6.0 / 0.7, 2)  # total audio / total time, not a mean of RTFx
    assert len(score_directory(tmp_path)) == 3


def test_untimed_rows_give_no_rtfx(tmp_path):
    path = tmp_path / "MODEL_a-b_DATASET_x_y_test.jsonl"
    path.write_text(_leaderboard_rows([("a b", "a b")], time=None))
    assert score_file(path).rtfx is None


def test_translation_and_cer_files_and_report(tmp_path):
    rows = [{"audio_filepath": "1.wav", "duration": 1.0, "time": 0.1, "text": "The cat sat on the mat.",
             "pred_text": "The cat sits on the mat.", "lang": "en", "task": "translate", "index": 0}]
    (tmp_path / "MODEL_local-m_DATASET_x_covost.translate-en_test.jsonl").write_text(json.dumps(rows[0]) + "\n")
    zh = {"audio_filepath": "2.wav", "duration": 1.0, "time": 0.2, "text": "你好世界", "pred_text": "你好时间",
          "lang": "zh", "task": "transcribe", "index": 0}
    (tmp_path / "MODEL_local-m_DATASET_x_aishell_test.jsonl").write_text(json.dumps(zh, ensure_ascii=False) + "\n")
    en = {**zh, "text": "a b", "pred_text": "a c", "lang": "en"}
    (tmp_path / "MODEL_local-m_DATASET_x_ls_test.jsonl").write_text(json.dumps(en) + "\n")
    (tmp_path / "MODEL_local-m_DATASET_x_ls_test.skipped.json").write_text(
        json.dumps({"missing": ["m.wav"], "unreadable": [], "dropped": ["d1", "d2"]}))
    scores = {s.dataset_id: s for s in score_directory(tmp_path)}
    assert scores["x_aishell_test"].error.metric == "CER" and scores["x_aishell_test"].error.percent == 50.0
    assert scores["x_covost.translate-en_test"].error is None
    assert scores["x_covost.translate-en_test"].translation.bleu > 0
    assert scores["x_ls_test"].skipped == {"missing": 1, "unreadable": 0, "dropped": 2}

    paths = write_report(list(scores.values()), tmp_path / "report")
    markdown = paths["markdown"].read_text()
    assert "| x_ls_test | transcribe | 1 |" in markdown and "| **average** |" in markdown
    assert "BLEU = " in markdown and "tok:13a" in markdown and "skipped 1 missing, 2 dropped" in markdown
    assert "b → c (1)" in markdown
    report = json.loads(paths["json"].read_text())
    average = report["models"]["local/m"]["average"]
    assert (average["wer"], average["cer"]) == (50.0, 50.0)
    assert paths["chart"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_torn_last_line_tolerated_only_when_asked(tmp_path):
    path = tmp_path / "part"
    path.write_text('{"index": 0, "text": "a"}\n{"index": 1, "te')
    assert [r["index"] for r in read_rows(path, tolerate_torn_tail=True)] == [0]
    with pytest.raises(ValueError, match=":2: not JSON"):
        read_rows(path)


def test_default_model_id_names_the_decoding_setup():
    """A run with --ctc-weight / --ctc-beam / --ctc-prune resumes into its own result files, never the default's."""
    from eval.cli import default_model_id

    assert default_model_id(None, None) == "speechlora/builtin"
    assert default_model_id(None, None, 1.0) == "speechlora/builtin-ctc1"
    assert default_model_id(None, None, 1.0, 16) == "speechlora/builtin-ctc1-beam16"
    assert default_model_id(None, None, None, 8) == "speechlora/builtin-beam8"
    assert default_model_id(None, None, None, 8, -5.0) == "speechlora/builtin-beam8-prune-5"
    assert len({parse_result_filename(result_filename(default_model_id(None, None, w, b, p), "x_y_test"))[0]
                for w, b, p in [(None, None, None), (1.0, None, None), (1.0, 16, None), (None, 16, None),
                                (None, None, -5.0)]}) == 5
