"""Fine-tuning inputs without training: manifests, the batch plan, token layout, the config schema."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import espeak
from speech.errors import UserError


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("manifest")
    espeak("hello world", root / "a.wav")
    espeak("hola mundo", root / "b.wav", voice="es")
    lines = [{"audio_filepath": "a.wav", "duration": 1.0, "text": "hello world", "lang": "en"},
             {"audio_filepath": str(root / "b.wav"), "duration": 1.0, "text": "hola mundo", "lang": "es",
              "translation": "hello world", "translation_lang": "fr"},
             {"audio_filepath": "missing.wav", "duration": 1.0, "text": "gone"}]
    (root / "m.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return root / "m.jsonl"


def test_manifest_tasks_and_skips(manifest):
    from speech.finetune.data import read_manifests

    corpus = read_manifests([str(manifest)], translation_tasks=("translate", "transcribe", "both"))
    got = [(e.task.kind, e.task.target_lang, e.answer, e.lang) for e in corpus.examples]
    assert got == [("transcribe", None, "hello world", "en"),
                   ("translate", "fr", "hello world", "fr"),
                   ("transcribe", None, "hola mundo", "es"),
                   ("both", "fr", "hola mundo <sep> hello world", "fr")]
    assert corpus.skipped == {"unreadable": 1}
    assert 0.5 < corpus.examples[0].duration < 3  # from the file header, not the manifest
    bad = manifest.with_name("bad.jsonl")
    bad.write_text('{"audio_filepath": "a.wav", "text": "x"}\nnot json\n')
    with pytest.raises(UserError, match=r"bad.jsonl:2: not a json line"):
        read_manifests([str(bad)])


def test_labels_only_on_the_answer_ending_with_the_stop_tokens(manifest, tiny_model):
    from encoder.audio import load_audio
    from encoder.features import num_audio_tokens
    from speech.finetune.data import IGNORE, MicroBatches, Tokens, read_manifests

    corpus = read_manifests([str(manifest)])
    tokens = Tokens(tiny_model.tokenizer, tiny_model.audio_token_id)
    answers = tokens.answers(corpus.examples)
    batch = MicroBatches(corpus.examples, answers, tokens, [[0, 1]])[0]
    tok = tiny_model.tokenizer
    for row, example in enumerate(corpus.examples):
        ids, labels, mask = batch["input_ids"][row], batch["labels"][row], batch["attention_mask"][row]
        length = int(mask.sum())
        assert mask[:length].all() and not mask[length:].any()  # right padding
        answer = labels[labels != IGNORE]
        start = int((labels != IGNORE).nonzero()[0])
        assert ids[start:length].tolist() == answer.tolist()  # labels are the answer, nothing else
        assert tok.convert_ids_to_tokens(answer[-2:].tolist()) == ["<|end|>", "<|endoftext|>"]
        assert tok.decode(answer[:-2]) == example.answer
        prompt = tok.decode(ids[:start][ids[:start] != tiny_model.audio_token_id])
        assert prompt == "<|user|>" + example.task.instruction() + "<|end|><|assistant|>"
        n_audio = int((ids == tiny_model.audio_token_id).sum())
        assert n_audio == num_audio_tokens(len(load_audio(example.audio)))
        # The same ids as the model's own inference prompt.
        assert ids[:start].tolist() == tiny_model.prompt_ids(example.task, n_audio)


def test_plan_is_a_bucketed_permutation_fixed_by_seed_and_epoch():
    from speech.finetune.data import plan_epoch

    durations = np.random.default_rng(1).uniform(1, 30, size=103)
    plan = plan_epoch(durations, micro=4, group=3, seed=7, epoch=0, window=4)
    assert len(plan) == 103 // 12 and all(len(step) == 3 and all(len(mb) == 4 for mb in step) for step in plan)
    flat = [i for step in plan for mb in step for i in mb]
    assert len(flat) == len(set(flat)) == len(plan) * 12
    assert plan == plan_epoch(durations, micro=4, group=3, seed=7, epoch=0, window=4)
    assert plan != plan_epoch(durations, micro=4, group=3, seed=7, epoch=1, window=4)
    spread = np.mean([np.ptp(durations[mb]) for step in plan for mb in step])
    unbucketed = plan_epoch(durations, micro=4, group=3, seed=7, epoch=0, window=1)
    assert spread < 0.5 * np.mean([np.ptp(durations[mb]) for step in unbucketed for mb in step])


def test_config_schema(tmp_path):
    from speech.finetune.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text("output_dir: out\nmodel: m\ndata: {train: t.jsonl}\noptim: {lr: 4e-5}\n"
                    "gradient_checkpointing: on\n")
    config = load_config(path, ["optim.warmup_steps=10", "trainable=[lora, projector]"])
    assert config.optim.lr == 4e-5 and config.optim.warmup_steps == 10 and config.optim.betas == (0.9, 0.95)
    assert config.data.train == (str(tmp_path / "t.jsonl"),)  # relative to the config file
    assert config.output_dir == str(tmp_path / "out") and config.trainable == ("lora", "projector")
    assert config.gradient_checkpointing == "true" and config.global_batch_size == 128
    assert config.accumulation(processes=2) == 8
    with pytest.raises(UserError, match="not a multiple"):
        config.accumulation(processes=3)
    for override, message in [("data.shuffle=1", "unknown key 'data.shuffle'"),
                              ("trainable=[lora, decoder]", "trainable"),
                              ("lora.init=fresh", "lora.r > 0"),
                              ("export=adapter", None)]:
        if message is None:
            load_config(path, [override])
        else:
            with pytest.raises(UserError, match=message):
                load_config(path, [override])


def test_shipped_example_configs_load():
    from pathlib import Path

    from speech.finetune.config import load_config

    root = Path(__file__).parent.parent
    examples = sorted((root / "examples" / "finetune").glob("*.yaml")) + sorted(
        (root / "speech" / "builtin_recipe").glob("*.yaml"))
    assert len(examples) >= 6
    for path in examples:
        load_config(path)
