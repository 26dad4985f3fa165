"""The built-in model's stage 1 pieces: Debian text extraction, the byte-level BPE with Phi-4's
special tokens, and the Phi-3-family LM config (a tiny training run, not the real one)."""

from __future__ import annotations

import itertools

import pytest
import torch
from transformers import AutoTokenizer, Phi3ForCausalLM

from speech.builtin_recipe import lm, text, tokenizer
from speech.data.manifest import split_for


@pytest.mark.skipif(not text.SWORD_WEB.is_dir(), reason="sword-text-web is not installed")
def test_bible_text_is_plain():
    verses = list(itertools.islice(text.bible_verses(), 5))
    assert any(v.startswith("In the beginning, God created the heavens and the earth.") for v in verses)
    assert not any("<" in v or "strong:" in v for v in verses)


@pytest.mark.skipif(not text.FORTUNES.is_dir(), reason="fortunes is not installed")
def test_fortunes_are_documents():
    cookies = list(itertools.islice(text.fortunes(), 200))
    assert len(cookies) == 200 and all(c and "\n" not in c and not c.startswith("%") for c in cookies)


def test_sentences_and_speakable():
    doc = 'He said, "Go home." Then he left! Was it 1984? Yes.'
    assert text.sentences(doc) == ['He said, "Go home."', "Then he left!", "Was it 1984?", "Yes."]
    assert text.speakable("The cat sat on the mat.")
    assert not text.speakable("Call 911 now please.")  # digits are read in the engine's own way
    assert not text.speakable("The NASA rocket flew high.")
    assert not text.speakable("Too short.")


@pytest.fixture(scope="module")
def small_tokenizer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    corpus = folder / "corpus.txt"
    lines = [f"Please press {w} to transcribe the audio clip into text, number {i}." for i, w in
             enumerate(["one", "two", "three", "star", "pound"] * 40)]
    corpus.write_text("\n".join(lines) + "\n")
    tokenizer.save(tokenizer.train([corpus], vocab_size=400), folder / "out")
    return AutoTokenizer.from_pretrained(folder / "out")


def test_tokenizer_keeps_phi4_special_tokens(small_tokenizer):
    t = small_tokenizer
    assert 256 + len(tokenizer.SPECIAL_TOKENS) < len(t) <= 400  # 256 byte symbols + specials + merges
    for token in tokenizer.SPECIAL_TOKENS:
        assert t.convert_ids_to_tokens(t.convert_tokens_to_ids(token)) == token
    assert t.audio_token == "<|endoftext11|>" and t.image_token == "<|endoftext10|>"
    assert t.eos_token == t.pad_token == "<|endoftext|>"
    prompt = "<|user|>" + "<|endoftext11|>" * 7 + "Transcribe the audio clip into text.<|end|><|assistant|>"
    ids = t(prompt, add_special_tokens=False)["input_ids"]
    assert ids.count(t.audio_token_id) == 7 and ids[0] == t.convert_tokens_to_ids("<|user|>")
    answer = "Press star, then ünïcode 数字."  # byte-level: any text round-trips
    assert t.decode(t(answer)["input_ids"]) == answer
    assert t.decode(t(prompt + answer)["input_ids"], skip_special_tokens=True) == (
        "Transcribe the audio clip into text." + answer
    )
    chat = t.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert chat == "<|user|>hi<|end|><|assistant|>"


@pytest.fixture
def one_thread():
    """Two threads on a shared 2-core machine run this tiny model ten times slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_lm_config_is_phi4_mini_in_miniature(small_tokenizer, one_thread):
    torch.manual_seed(0)
    config = lm.model_config(len(small_tokenizer), small_tokenizer)
    model = Phi3ForCausalLM(config)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied
    assert config.partial_rotary_factor == 0.75 and config.num_key_value_heads < config.num_attention_heads
    x = small_tokenizer(["Please press star to transcribe the audio clip into text."] * 2, return_tensors="pt")
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = model(input_ids=x["input_ids"], labels=x["input_ids"]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1.0


def test_text_splits_match_the_speech_corpora():
    """The LM text and the TTS corpora share one split function: a test sentence is test everywhere."""
    sentence = next(s for s in (f"Sentence {i} is here." for i in range(1000)) if split_for(s, text.FRACTIONS) == "test")
    assert split_for(sentence.upper()) == "test"


def test_wer_by_voice_groups_by_folder_and_engine(tmp_path):
    import json

    from speech.builtin_recipe.by_voice import by_voice

    rows = [("audio/test/espeak-ng_en-us_m8/a.wav", "the cat sat", "the cat sat"),
            ("audio/test/espeak-ng_en-us_f5/b.wav", "a dog ran", "a dog"),
            ("audio/test/flite_slt/c.wav", "one two", "three four")]
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps({"audio_filepath": a, "text": t, "pred_text": p}) + "\n" for a, t, p in rows))
    found = by_voice(path)
    assert found["espeak-ng_en-us_m8"] == (1, 0.0)
    assert found["espeak-ng_en-us_f5"] == (1, pytest.approx(100 / 3, abs=0.01))
    assert found["espeak-ng (all)"] == (2, pytest.approx(100 / 6, abs=0.01))
    assert found["flite (all)"] == (1, 100.0)


def test_ctc_augmentations_narrowband_and_speed():
    """Stage 2's audio augmentations: a phone-line clip keeps its length and loses what is above
    4 kHz (the Asterisk prompts are 8 kHz recordings); share 0 / factor 0 leave clips alone."""
    import random

    import numpy as np

    from speech.builtin_recipe import ctc

    rng = random.Random(0)
    t = np.arange(16_000) / 16_000
    clip = (0.2 * np.sin(2 * np.pi * 1000 * t) + 0.2 * np.sin(2 * np.pi * 6000 * t)).astype(np.float32)
    assert ctc.narrowband(clip, 0.0, rng) is clip and ctc.perturb(clip, 0.0, rng) is clip
    phone = ctc.narrowband(clip, 1.0, rng)
    assert phone.shape == clip.shape and phone.dtype == clip.dtype

    def energy(x, hz):
        spectrum = np.abs(np.fft.rfft(x[2000:-2000]))
        return spectrum[int(hz * len(spectrum) / 8000) - 5: int(hz * len(spectrum) / 8000) + 5].sum()

    assert energy(phone, 6000) < 0.01 * energy(clip, 6000)
    assert energy(phone, 1000) > 0.9 * energy(clip, 1000)
    faster = ctc.perturb(clip, 0.1, random.Random(1))
    assert 0.89 * len(clip) <= len(faster) <= 1.11 * len(clip) and len(faster) != len(clip)


def test_every_recipe_command_has_help():
    """`python -m speech.builtin_recipe.X --help` prints usage for every recipe module (one
    interpreter for all of them: argparse renders each help string, where a stray % once broke)."""
    import pkgutil
    import subprocess
    import sys
    from pathlib import Path

    import speech.builtin_recipe as recipe

    modules = [m.name for m in pkgutil.iter_modules(recipe.__path__)]
    code = (
        "import runpy, sys, io, contextlib\n"
        f"for name in {modules!r}:\n"
        "    sys.argv = [name, '--help']; out = io.StringIO()\n"
        "    try:\n"
        "        with contextlib.redirect_stdout(out): runpy.run_module('speech.builtin_recipe.' + name, run_name='__main__')\n"
        "    except SystemExit as e: assert e.code in (0, None), (name, e.code)\n"
        "    assert 'usage' in out.getvalue().lower(), name\n"
        "    print('ok', name)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split().count("ok") == len(modules) >= 10


def test_ctc_round_keeps_snapshots_graft_can_take(tmp_path):
    """speech.builtin_recipe.ctc --snapshot-every: a real (tiny) CTC round on espeak-ng speech keeps
    OUT/step_N model folders whose encoders differ from each other and from the final one only as
    training moved them, and `graft` takes a snapshot as a donor (a round's checkpoint chosen by
    decoded dev WER afterwards)."""
    import json
    import subprocess
    import sys

    from safetensors.torch import load_file

    from speech.builtin_recipe.graft import graft
    from speech.model import SpeechModel
    from speech.tiny import write_tiny_checkpoint
    from tests.conftest import espeak

    model = write_tiny_checkpoint(tmp_path / "tiny", seed=0)
    rows = []
    for i, line in enumerate(["press one for sales", "please hold the line"]):
        wav = espeak(line, tmp_path / f"c{i}.wav", rate=16000)
        rows.append({"audio_filepath": str(wav), "duration": 2.0, "text": line, "lang": "en"})
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "round"
    proc = subprocess.run([sys.executable, "-m", "speech.builtin_recipe.ctc", "--model", str(model), "--out", str(out),
                           "--manifest", str(tmp_path / "train.jsonl"), "--batch-size", "2", "--steps", "4",
                           "--warmup", "1", "--snapshot-every", "2", "--lr", "1e-3"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in out.glob("step_*")) == ["step_2", "step_4"]
    assert not list((out / "step_4").glob("step_*"))  # snapshots are not nested
    weights = {name: load_file(str(out / name / "model.safetensors")) for name in ("step_2", "step_4")}
    final = load_file(str(out / "model.safetensors"))
    encoder_keys = [k for k in final if ".encoder." in k]
    assert encoder_keys
    assert all((weights["step_4"][k] == final[k]).all() for k in encoder_keys)
    assert any(not (weights["step_2"][k] == final[k]).all() for k in encoder_keys)
    assert json.loads((out / "step_2" / "ctc_pretraining.json").read_text())["steps"] == 2
    assert graft(model, out / "step_2", tmp_path / "grafted") > 0
    assert (tmp_path / "grafted" / "ctc_head.safetensors").read_bytes() == \
        (out / "step_2" / "ctc_head.safetensors").read_bytes()
    SpeechModel.load(tmp_path / "grafted")
    # a rerun into the same folder leaves no snapshot of the run before it
    proc = subprocess.run([sys.executable, "-m", "speech.builtin_recipe.ctc", "--model", str(model), "--out", str(out),
                           "--manifest", str(tmp_path / "train.jsonl"), "--batch-size", "2", "--steps", "2",
                           "--warmup", "1", "--snapshot-every", "2", "--lr", "1e-3"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in out.glob("step_*")) == ["step_2"]
