"""`speechlora finetune` on the tiny checkpoint and espeak-ng speech, on CPU.

What each test proves:
- the loss falls (train and validation) and bad clips are skipped and counted;
- a run killed with SIGKILL and resumed reproduces the uninterrupted run's losses (model,
  optimizer, scheduler, data order and RNG restored: the LoRA dropout is on);
- two processes (torchrun, gloo) compute the same first steps as one process with the same
  global batch;
- the exported adapter is a PEFT folder that `speechlora transcribe --adapter` loads and that
  changes its output; its tensors are the trained ones;
- the built-in model's recipe path: a base with no LoRA, encoder+projector trained and exported
  as a full native model, then a fresh LoRA of another rank trained on top of it;
- an unknown config key, or resuming under another config, is refused with one clear line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from conftest import espeak

TRAIN = ["the quick brown fox", "hello world", "one two three", "please leave a message",
         "good morning to you", "four five six", "the lazy dog sleeps", "this is a test"]
DEV = ["hello there", "seven eight nine"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Same intra-op threads in this process and in the runs it starts: same float reductions."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """8 English clips + 2 Spanish->English pairs to train on, plus one 31 s clip and one broken file."""
    root = tmp_path_factory.mktemp("corpus")
    (root / "audio").mkdir()
    lines = []
    for i, text in enumerate(TRAIN):
        espeak(text, root / "audio" / f"t{i}.wav", speed=190)
        lines.append({"audio_filepath": f"audio/t{i}.wav", "duration": 1.0, "text": text, "lang": "en"})
    for i, (es, en) in enumerate([("hola amigo", "hello friend"), ("buenos dias", "good morning")]):
        espeak(es, root / "audio" / f"es{i}.wav", voice="es", speed=190)
        lines.append({"audio_filepath": f"audio/es{i}.wav", "duration": 1.0, "text": es, "lang": "es",
                      "translation": en, "translation_lang": "en"})
    sf.write(root / "audio" / "long.wav", np.random.default_rng(0).uniform(-0.1, 0.1, 31 * 16000), 16000)
    lines.append({"audio_filepath": "audio/long.wav", "duration": 31.0, "text": "too long", "lang": "en"})
    (root / "audio" / "broken.wav").write_bytes(b"RIFF not really a wav file")
    lines.append({"audio_filepath": "audio/broken.wav", "duration": 1.0, "text": "broken", "lang": "en"})
    (root / "train.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    dev = []
    for i, text in enumerate(DEV):
        espeak(text, root / "audio" / f"d{i}.wav", speed=190)
        dev.append({"audio_filepath": f"audio/d{i}.wav", "duration": 1.0, "text": text, "lang": "en"})
    (root / "dev.jsonl").write_text("".join(json.dumps(line) + "\n" for line in dev))
    return root


def write_config(path: Path, base: Path, corpus: Path, **overrides) -> Path:
    config = {
        "model": str(base), "output_dir": str(path.parent / "run"),
        "data": {"train": [str(corpus / "train.jsonl")], "validation": [], "num_workers": 0},
        "trainable": ["lora", "projector"],
        "global_batch_size": 4, "micro_batch_size": 2, "max_steps": 10, "save_every": 2, "keep_best": 2,
        "optim": {"lr": 3e-3, "warmup_steps": 0}, "tensorboard": False,
    }
    for key, value in overrides.items():
        node = config
        *parents, last = key.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


def losses(run_dir: Path) -> list[tuple[int, float]]:
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in records if "loss" in r]


def train(config_path: Path, *args: str, resume=None):
    from speech.finetune.config import load_config
    from speech.finetune.trainer import run

    return run(load_config(config_path, list(args)), resume=resume)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_native, corpus) -> Path:
    """The uninterrupted run: 10 steps, checkpoint + validation (WER) every 2, LoRA dropout 0.1."""
    cfg = write_config(tmp_path_factory.mktemp("reference") / "cfg.yaml", tiny_native, corpus,
                       data__validation=[str(corpus / "dev.jsonl")], lora__dropout=0.1)
    train(cfg)
    return cfg.parent / "run"


def test_loss_falls_and_bad_clips_are_counted(reference):
    steps = losses(reference)
    assert [s for s, _ in steps] == list(range(1, 11))
    values = [v for _, v in steps]
    assert np.mean(values[-3:]) < 0.85 * np.mean(values[:2]), values
    evals = [json.loads(line)["eval"] for line in (reference / "log.jsonl").read_text().splitlines()
             if "eval" in line]
    assert len(evals) == 5 and evals[-1]["loss"] < evals[0]["loss"]
    assert all("wer" in e for e in evals)  # WER from eval.metrics ranks the checkpoints
    info = json.loads((reference / "adapter" / "training.json").read_text())
    assert info["train_data"]["skipped"] == {"too long": 1, "unreadable": 1}
    assert info["train_data"]["tasks"] == {"transcribe": 8, "translate:en": 2}
    kept = sorted(p.name for p in reference.glob("checkpoint-*"))
    assert "checkpoint-10" in kept and len(kept) <= 3  # best 2 by WER + the latest
    assert not list(reference.glob(".tmp-*"))


def test_kill_and_resume_reproduces_the_uninterrupted_run(reference, tiny_native, corpus, tmp_path):
    cfg = write_config(tmp_path / "cfg.yaml", tiny_native, corpus,
                       data__validation=[str(corpus / "dev.jsonl")], lora__dropout=0.1)
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "speech.cli", "finetune", str(cfg)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (run_dir / "checkpoint-2").exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    interrupted = losses(run_dir)
    assert interrupted[-1][0] < 10 and not (run_dir / "adapter").exists()

    # Without --resume the folder is not silently reused.
    from speech.errors import UserError

    with pytest.raises(UserError, match="already holds checkpoints"):
        train(cfg)
    train(cfg, resume=True)
    resumed, expected = losses(run_dir), losses(reference)
    assert [s for s, _ in resumed] == list(range(1, 11))
    assert [v for _, v in resumed] == pytest.approx([v for _, v in expected], rel=1e-9, abs=0)


def test_two_processes_match_one_process(tiny_native, corpus, tmp_path):
    """Global batch 4: 1 process x 2 micro-batches of 2 == 2 processes (gloo) x 1 micro-batch of 2.

    Validation (loss and WER, decoded on each process and gathered) agrees too."""
    common = dict(max_steps=2, save_every=1, export="none", data__validation=[str(corpus / "dev.jsonl")])
    one = write_config(tmp_path / "one" / "cfg.yaml", tiny_native, corpus, **common)
    train(one)
    two = write_config(tmp_path / "two" / "cfg.yaml", tiny_native, corpus, **common)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "speech.cli",
                             "finetune", str(two)], env=ENV, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    logs = [[json.loads(line) for line in (p.parent / "run" / "log.jsonl").read_text().splitlines()]
            for p in (one, two)]
    evals = [[r["eval"] for r in log if "eval" in r] for log in logs]
    assert len(evals[0]) == len(evals[1]) == 2
    for a, b in zip(*evals):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5) and b["wer"] == a["wer"]
    logs = [[r for r in log if "eval" not in r] for log in logs]
    assert len(logs[0]) == len(logs[1]) == 2
    for a, b in zip(*logs):
        assert a["tokens"] == b["tokens"] and a["clips"] == b["clips"] == 4
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-6)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5)
    from safetensors.torch import load_file

    w1 = load_file(str(one.parent / "run" / "checkpoint-1" / "trainable.safetensors"))
    w2 = load_file(str(two.parent / "run" / "checkpoint-1" / "trainable.safetensors"))
    assert w1.keys() == w2.keys()
    for key in w1:
        torch.testing.assert_close(w2[key], w1[key], rtol=1e-5, atol=1e-6)
    assert (two.parent / "run" / "checkpoint-1" / "random_states_1.pkl").exists()


def test_exported_adapter_loads_in_transcribe_and_changes_output(reference, tiny_native, corpus, capsys):
    from safetensors.torch import load_file

    from speech.cli import main
    from speech.model import SpeechModel

    adapter = reference / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"]) == ("LORA", 8, 16)
    assert sorted(config["target_modules"]) == ["down_proj", "gate_up_proj", "o_proj", "qkv_proj"]
    lora = load_file(str(adapter / "adapter_model.safetensors"))
    assert "base_model.model.model.layers.0.self_attn.qkv_proj.lora_A.weight" in lora and len(lora) == 16
    audio = load_file(str(adapter / "audio_weights.safetensors"))
    assert sorted(audio) == sorted(f"model.embed_tokens_extend.audio_embed.{p}_proj_for_speech.{w}"
                                   for p in ("up", "down") for w in ("weight", "bias"))

    # The folder holds the chosen checkpoint's tensors, and SpeechModel.load applies them.
    info = json.loads((adapter / "training.json").read_text())
    trained = load_file(str(reference / info["checkpoint"] / "trainable.safetensors"))
    model = SpeechModel.load(tiny_native, adapter=adapter, merge_lora=False)
    torch.testing.assert_close(model.projector.up_proj_for_speech.weight, trained["projector.up_proj_for_speech.weight"])
    lora_a = dict(model.lm.named_parameters())["base_model.model.model.layers.1.mlp.down_proj.lora_A.default.weight"]
    torch.testing.assert_close(lora_a, trained["lm.base_model.model.model.layers.1.mlp.down_proj.lora_A.default.weight"])

    clip = corpus / "audio" / "d0.wav"
    outputs = []
    for extra in ([], ["--adapter", str(adapter)]):
        assert main(["transcribe", str(clip), "--model", str(tiny_native), "--format", "json", "--no-progress",
                     *extra]) == 0
        outputs.append(json.loads(capsys.readouterr().out.splitlines()[0])["text"])
    assert outputs[0] != outputs[1]


def test_builtin_recipe_stages(corpus, tmp_path):
    """The built-in model's path: a small Phi-3 LM + a fresh encoder (assembled), stage 2 trains
    encoder + projector with no LoRA and exports a full native model, stage 3 trains a fresh LoRA
    of rank 4 + projector on it and exports the model to ship (base + speech-lora/)."""
    from safetensors.torch import load_file
    from transformers import Phi3Config, Phi3ForCausalLM

    from speech.checkpoint import CTC_FILES
    from speech.finetune.assemble import assemble
    from speech.model import SpeechModel
    from speech.tiny import build_tokenizer

    tokenizer = build_tokenizer(300)
    torch.manual_seed(0)
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    lm = Phi3ForCausalLM(Phi3Config(vocab_size=-(-len(tokenizer) // 64) * 64, hidden_size=64, intermediate_size=128,
                                    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                    tie_word_embeddings=True, max_position_embeddings=2048,
                                    bos_token_id=eot, eos_token_id=eot, pad_token_id=eot))
    lm.save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    base = assemble(tmp_path / "lm", tmp_path / "stage1", {"hidden_size": 64, "intermediate_size": 96, "num_blocks": 2,
                                                           "nemo_conv_channels": 32, "bias_max_distance": 50},
                    manifests=[str(corpus / "train.jsonl")])
    start = SpeechModel.load(base)
    assert start.spec.lora is None and start.spec.stop_token_ids == start.tokenizer.convert_tokens_to_ids(
        ["<|end|>", "<|endoftext|>"])
    mean = start.encoder.encoder_embedding.global_mean
    assert 3 < float(mean.mean()) < 20  # log-mel statistics measured on the clips, not the zero default

    _write_ctc_files(base)  # stage 2 trains the encoder: this head no longer fits and must not ship
    stage2 = write_config(tmp_path / "s2" / "cfg.yaml", base, corpus, max_steps=2, save_every=2,
                          trainable=["encoder", "projector"], lora__init="none", export="full")
    full = train(stage2)
    assert not any((full / name).exists() for name in CTC_FILES)
    assert {p.name for p in full.iterdir()} >= {"config.json", "model.safetensors", "generation_config.json",
                                                "tokenizer.json", "training.json"}
    assert not (full / "speech-lora").exists()
    trained = load_file(str(stage2.parent / "run" / "checkpoint-2" / "trainable.safetensors"))
    assert any(k.startswith("encoder.encoders.") for k in trained) and not any("lora" in k for k in trained)
    model = SpeechModel.load(full)
    torch.testing.assert_close(model.encoder.encoders[0].self_attn.q_proj.weight,
                               trained["encoder.encoders.0.self_attn.q_proj.weight"])
    assert not torch.equal(start.encoder.encoders[0].self_attn.q_proj.weight,
                           model.encoder.encoders[0].self_attn.q_proj.weight)
    torch.testing.assert_close(model.lm.model.embed_tokens.weight, start.lm.model.embed_tokens.weight)  # LM frozen

    _write_ctc_files(full)  # stage 3 leaves the encoder alone: the head, its metadata and word list ship
    stage3 = write_config(tmp_path / "s3" / "cfg.yaml", full, corpus, max_steps=2, save_every=2,
                          lora__init="fresh", lora__r=4, export="full")
    shipped = train(stage3)
    lora_config = json.loads((shipped / "speech-lora" / "adapter_config.json").read_text())
    assert (lora_config["r"], lora_config["lora_alpha"]) == (4, 8)
    model = SpeechModel.load(shipped)
    assert model.spec.lora.r == 4 and model.generate([np.full(16000, 0.01, np.float32)])
    assert (shipped / "ctc_head.safetensors").read_bytes() == (full / "ctc_head.safetensors").read_bytes()
    assert model.ctc_head is not None and model.ctc_weight == 0.7 and model.lexicon is not None


def _write_ctc_files(folder):
    """A CTC head (with the alphabet and a tuned weight in its metadata) and a word list, as the
    built-in model carries them."""
    from safetensors.torch import save_file

    from speech.builtin_recipe.ctc import CHARS

    hidden = json.loads((folder / "config.json").read_text())["audio_config"]["hidden_size"]
    save_file({"weight": torch.randn(3 * (len(CHARS) + 1), hidden) * 0.1, "bias": torch.zeros(3 * (len(CHARS) + 1))},
              str(folder / "ctc_head.safetensors"), metadata={"chars": CHARS, "upsample": "3", "decode_weight": "0.7"})
    (folder / "lexicon.txt").write_text("hello\nworld\n")


def test_bad_configs_are_refused_with_one_line(reference, tiny_native, corpus, tmp_path, capsys):
    from speech.cli import main

    cfg = write_config(tmp_path / "cfg.yaml", tiny_native, corpus, optim__lr_max=1.0)
    assert main(["finetune", str(cfg)]) == 2
    assert "unknown key 'optim.lr_max'" in capsys.readouterr().err
    cfg = write_config(tmp_path / "cfg.yaml", tiny_native, corpus, max_steps="many")
    assert main(["finetune", str(cfg)]) == 2
    assert "max_steps must be int" in capsys.readouterr().err
    # Resuming the reference run under another learning rate: refused, naming what changed.
    assert main(["finetune", str(reference.parent / "cfg.yaml"), "--resume", "--set", "optim.lr=1e-4"]) == 2
    err = capsys.readouterr().err
    assert "different config" in err and "optim.lr: 0.003 -> 0.0001" in err


def test_graft_swaps_only_the_encoder(tmp_path):
    """speech.builtin_recipe.graft: the base model keeps its LM, projector, LoRA and word list; the
    encoder and its CTC head are the donor's (a donor without a head leaves none: the base's was
    trained on the old encoder), and the result loads. Mismatched encoders are refused, not
    half-copied."""
    from speech.builtin_recipe.graft import graft
    from speech.model import SpeechModel
    from speech.tiny import TinyDims, write_tiny_checkpoint

    base = write_tiny_checkpoint(tmp_path / "base", seed=0)
    donor = write_tiny_checkpoint(tmp_path / "donor", seed=1)
    _write_ctc_files(base)
    _write_ctc_files(donor)
    out = tmp_path / "grafted"
    assert graft(base, donor, out) > 0
    assert (out / "ctc_head.safetensors").read_bytes() == (donor / "ctc_head.safetensors").read_bytes()
    assert (out / "ctc_head.safetensors").read_bytes() != (base / "ctc_head.safetensors").read_bytes()
    assert (out / "lexicon.txt").read_text() == "hello\nworld\n"
    (donor / "ctc_head.safetensors").unlink()
    assert graft(base, donor, tmp_path / "headless") > 0
    assert not (tmp_path / "headless" / "ctc_head.safetensors").exists()
    assert SpeechModel.load(tmp_path / "headless").ctc_head is None
    grafted, b, d = SpeechModel.load(out), SpeechModel.load(base), SpeechModel.load(donor)
    for (name, p), q, r in zip(grafted.encoder.state_dict().items(), d.encoder.state_dict().values(),
                               b.encoder.state_dict().values()):
        assert torch.equal(p, q), name
    assert not all(torch.equal(q, r) for q, r in zip(d.encoder.state_dict().values(), b.encoder.state_dict().values()))
    for p, q in zip(grafted.lm.state_dict().values(), b.lm.state_dict().values()):
        assert torch.equal(p, q)
    for p, q in zip(grafted.projector.state_dict().values(), b.projector.state_dict().values()):
        assert torch.equal(p, q)
    other = write_tiny_checkpoint(tmp_path / "other", seed=0, dims=TinyDims(enc_intermediate=48))
    with pytest.raises(SystemExit, match="error"):
        graft(base, other, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_graft_of_two_donors_takes_their_mean(tmp_path):
    """Two --encoder-from folders: the encoder and the CTC head are the element-wise means of the
    donors' (checked against the donors loaded separately); a donor without a head is refused
    rather than averaged with the other's, and leaves no half-written folder."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from speech.builtin_recipe.graft import graft
    from speech.model import SpeechModel
    from speech.tiny import write_tiny_checkpoint

    base = write_tiny_checkpoint(tmp_path / "base", seed=0)
    a, b = write_tiny_checkpoint(tmp_path / "a", seed=1), write_tiny_checkpoint(tmp_path / "b", seed=2)
    for folder in (base, a, b):
        _write_ctc_files(folder)
    heads = [load_file(str(d / "ctc_head.safetensors")) for d in (a, b)]
    assert not torch.equal(heads[0]["weight"], heads[1]["weight"])
    with safe_open(str(b / "ctc_head.safetensors"), "pt") as f:
        meta = f.metadata()
    # Tuned decoding settings may differ (the first donor's are kept); the alphabet may not.
    save_file(heads[1], str(b / "ctc_head.safetensors"), metadata={**meta, "decode_weight": "1.0"})
    out = tmp_path / "mean"
    assert graft(base, [a, b], out) > 0
    mean, ma, mb = SpeechModel.load(out), SpeechModel.load(a), SpeechModel.load(b)
    for (name, p), q, r in zip(mean.encoder.state_dict().items(), ma.encoder.state_dict().values(),
                               mb.encoder.state_dict().values()):
        assert torch.allclose(p, (q + r) / 2, atol=1e-6), name
    head = load_file(str(out / "ctc_head.safetensors"))
    for key, value in head.items():
        assert torch.allclose(value, (heads[0][key] + heads[1][key]) / 2), key
    assert mean.ctc_head is not None
    with safe_open(str(out / "ctc_head.safetensors"), "pt") as f:
        assert f.metadata()["decode_weight"] == "0.7"
    save_file(heads[1], str(b / "ctc_head.safetensors"), metadata={**meta, "chars": meta["chars"][::-1]})
    with pytest.raises(SystemExit, match="characters or upsampling"):
        graft(base, [a, b], tmp_path / "other_alphabet")
    assert not (tmp_path / "other_alphabet").exists()
    (b / "ctc_head.safetensors").unlink()
    with pytest.raises(SystemExit, match="1 of 2 donors"):
        graft(base, [a, b], tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_adapter_names_its_base_without_the_training_machine_path(tmp_path):
    """peft's base_model_name_or_path: a user's folder as given; the built-in model by name."""
    from speech.finetune.trainer import _base_name
    from speech.model import builtin_path

    assert _base_name(builtin_path()) == "speechlora/builtin"
    assert _base_name(tmp_path / "phi4") == str(tmp_path / "phi4")


def test_ship_writes_a_loadable_fp16_folder_that_names_its_own_base(tiny_native, tmp_path):
    """speech.builtin_recipe.ship: fp16 weights, the builtin flag, and a speech-lora config that does
    not point at the training machine's folder."""
    import torch
    from safetensors.torch import load_file

    from speech.builtin_recipe.ship import ship
    from speech.model import SpeechModel

    out = tmp_path / "shipped"
    ship(tiny_native, out)
    config = json.loads((out / "config.json").read_text())
    assert config["speechlora_builtin"] is True and config["torch_dtype"] == "float16"
    lora = json.loads((out / "speech-lora" / "adapter_config.json").read_text())
    assert lora["base_model_name_or_path"] == "speechlora/builtin"
    assert lora["r"] == json.loads((tiny_native / "speech-lora" / "adapter_config.json").read_text())["r"]
    weights = load_file(str(out / "model.safetensors"))
    assert weights and all(t.dtype == torch.float16 for t in weights.values() if t.is_floating_point())
    model = SpeechModel.load(out)
    assert isinstance(model.generate([np.full(16000, 0.01, np.float32)])[0], str)


def test_best_metric_bleu_exports_the_highest_bleu_checkpoint(tiny_native, corpus, tmp_path, capsys):
    """best_metric bleu: validation BLEU is the stored metric and the highest one is exported."""
    from speech.cli import main
    from speech.finetune.config import load_config
    from speech.finetune.trainer import STATE_FILE, run

    pairs = [json.loads(line) for line in (corpus / "train.jsonl").read_text().splitlines()]
    dev = tmp_path / "dev_es.jsonl"
    dev.write_text("".join(json.dumps({**p, "audio_filepath": str(corpus / p["audio_filepath"])}) + "\n"
                           for p in pairs if p.get("translation")))
    # Without translation clips in validation, bleu cannot rank anything: one line, exit 2.
    cfg = write_config(tmp_path / "bad" / "cfg.yaml", tiny_native, corpus, best_metric="bleu",
                       data__validation=[str(corpus / "dev.jsonl")])
    assert main(["finetune", str(cfg)]) == 2
    assert "best_metric bleu: the validation manifests hold no translation clips" in capsys.readouterr().err
    cfg = write_config(tmp_path / "ok" / "cfg.yaml", tiny_native, corpus, best_metric="bleu", keep_best=3,
                       max_steps=6, data__validation=[str(dev)], data__translation_tasks=["translate"])
    train(cfg)
    run_dir = cfg.parent / "run"
    evals = {json.loads(line)["step"]: json.loads(line)["eval"]
             for line in (run_dir / "log.jsonl").read_text().splitlines() if '"eval"' in line}
    assert sorted(evals) == [2, 4, 6] and all("bleu_en" in e for e in evals.values())
    for step in (2, 4, 6):
        state = json.loads((run_dir / f"checkpoint-{step}" / STATE_FILE).read_text())
        assert state["metric"] == {"name": "bleu", "value": evals[step]["bleu_en"]}
    # The tiny random model scores BLEU 0 at every step, so the ranking is checked on set values:
    # the middle checkpoint best by BLEU (by WER or loss, lower-is-better, the last would win).
    for step, value in ((2, 5.0), (4, 9.0), (6, 1.0)):
        path = run_dir / f"checkpoint-{step}" / STATE_FILE
        state = json.loads(path.read_text())
        state["metric"]["value"] = value
        path.write_text(json.dumps(state))
    run(load_config(cfg, []), export_only=True)
    info = json.loads((run_dir / "adapter" / "training.json").read_text())
    assert info["step"] == 4 and info["metric"] == {"name": "bleu", "value": 9.0}
