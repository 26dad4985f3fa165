"""SpeechModel: conformer encoder + speech projector + frozen Phi-4-Mini LM with the speech LoRA.

Load once, then `generate` on 16 kHz clips (<= 30 s each) or `transcribe` files of any length.
The LM is transformers' `Phi3ForCausalLM` (Phi-4-Mini is a Phi-3-family model; the multimodal
model's text stack is the same code), the LoRA is applied with peft and, for inference, merged
into the base weights so decoding pays nothing for it.
"""

from __future__ import annotations

import logging
import math
import re
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import DynamicCache, Phi3ForCausalLM, PreTrainedTokenizerBase
from transformers.models.phi3.modeling_phi3 import Phi3RotaryEmbedding

from encoder.conformer import ConformerEncoder, SpeechProjector
from encoder.features import LogMelFeatures
from speech.checkpoint import (
    AUDIO_PREFIX,
    CheckpointSpec,
    LoraSpec,
    Weights,
    iter_safetensors,
    load_weights,
    lora_from_peft_dir,
    read_adapter_weights,
    read_spec,
)
from speech.ctc import (
    DEFAULT_PRUNE,
    HEAD_FILE,
    CTCHead,
    Lexicon,
    WordFusion,
    char_ids,
    load_ctc_head,
    load_fusion,
    prefix_beam_searches,
    sequence_log_probs,
)
from speech.decoding import greedy_decode
from speech.errors import CheckpointError, UserError
from speech.prompts import AUDIO_MARKER, LANGUAGES, TASKS, Task, build_prompt

log = logging.getLogger(__name__)

AUDIO_TOKEN = "<|endoftext11|>"
MAX_CLIP_SECONDS = 30.0
# Extra files a fine-tuned adapter folder may carry besides the PEFT LoRA (see speech.finetune).
ADAPTER_AUDIO_WEIGHTS = "audio_weights.safetensors"


def builtin_path() -> Path:
    """The small trained model shipped inside the package (native layout)."""
    return Path(__file__).resolve().parent / "builtin" / "model"


def pick_device(device: str | None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _attn_implementation(device: torch.device) -> str:
    if device.type == "cuda":
        try:
            import flash_attn  # noqa: F401  (the `gpu` extra)

            return "flash_attention_2"
        except ImportError:
            pass
    return "sdpa"


def load_tokenizer(root: Path) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if (root / "tokenizer.json").exists():
        try:
            return PreTrainedTokenizerFast.from_pretrained(str(root), local_files_only=True)
        except Exception:  # noqa: BLE001 - an odd tokenizer_config.json; let AutoTokenizer try
            pass
    try:
        return AutoTokenizer.from_pretrained(str(root), local_files_only=True)
    except Exception as auto_error:  # noqa: BLE001 - fall back to the raw tokenizer.json
        if (root / "tokenizer.json").exists():
            return PreTrainedTokenizerFast(tokenizer_file=str(root / "tokenizer.json"))
        raise CheckpointError(f"{root}: cannot load the tokenizer ({str(auto_error).splitlines()[0]})") from None


def lora_target_names(lm: nn.Module, lora: LoraSpec) -> list[str]:
    """Module names of `lm` the LoRA spec targets (regex string: full match; list: name suffix)."""
    names = []
    for name, module in lm.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        if isinstance(lora.target_modules, str):
            hit = re.fullmatch(lora.target_modules, name) is not None
        else:
            hit = any(name == t or name.endswith("." + t) for t in lora.target_modules)
        if hit:
            names.append(name)
    return names


def parameter_counts(spec: CheckpointSpec) -> dict[str, int]:
    """Parameter counts of each part, built on the meta device: no weights are read."""
    with torch.device("meta"):
        encoder = ConformerEncoder(spec.audio_config)
        projector = SpeechProjector(spec.audio_config.hidden_size * spec.audio_config.downsample_rate,
                                    spec.lm_config.hidden_size)
        lm = Phi3ForCausalLM(spec.lm_config)
    counts = {
        "encoder": sum(p.numel() for p in encoder.parameters()),
        "speech projector": sum(p.numel() for p in projector.parameters()),
        "LM": sum(p.numel() for p in lm.parameters()),  # tied embeddings count once
        "speech LoRA": 0,
    }
    if spec.lora:
        modules = dict(lm.named_modules())
        counts["speech LoRA"] = sum(
            spec.lora.r * (modules[n].in_features + modules[n].out_features) for n in lora_target_names(lm, spec.lora)
        )
    return counts


def _assign(module: nn.Module, state: dict[str, torch.Tensor], what: str, dtype: torch.dtype,
            device: torch.device, optional: tuple[str, ...] = ()) -> None:
    state = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype) for k, v in state.items()}
    result = module.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in result.missing_keys if k not in optional]
    if missing or result.unexpected_keys:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {result.unexpected_keys[:3]}"
        raise CheckpointError(f"{what} weights do not match the config: {detail}")
    for name, tensor in module.state_dict().items():
        if tensor.is_meta and name not in optional:
            raise CheckpointError(f"{what}: weight {name} was never loaded")


class SpeechModel(nn.Module):
    """The speech path of Phi-4-multimodal. Build it with `SpeechModel.load`."""

    def __init__(self, spec: CheckpointSpec, tokenizer: PreTrainedTokenizerBase, encoder: ConformerEncoder,
                 projector: SpeechProjector, lm: nn.Module, device: torch.device) -> None:
        super().__init__()
        self.spec = spec
        self.tokenizer = tokenizer
        self.encoder = encoder
        self.projector = projector
        self.lm = lm
        self.featurizer = LogMelFeatures(device)
        self.audio_token_id = self._token_id(AUDIO_TOKEN)
        stops = spec.stop_token_ids or [self._token_id("<|end|>"), self._token_id("<|endoftext|>")]
        self.stop_token_ids = list(dict.fromkeys(stops))
        # Placeholders are inputs only; see greedy_decode.
        self.suppress_token_ids = [self.audio_token_id] + [
            i for i in [self.tokenizer.convert_tokens_to_ids("<|endoftext10|>")] if i not in (None, self.tokenizer.unk_token_id)]
        self.adapter: Path | None = None
        self.load_seconds = 0.0
        # CTC rescoring of English transcripts (speech.ctc); only model folders that ship a
        # ctc_head.safetensors (the built-in model) have a head.
        self.ctc_head: CTCHead | None = None
        self.ctc_weight = 0.0
        self.ctc_beam = 8
        self.lexicon: Lexicon | None = None
        self.fusion: WordFusion | None = None  # a word n-gram in the search, when the folder has one
        # Measured on dev clips (docs/builtin-model.md, "CTC rescoring"): a second respelling
        # pass, 16 rescored spellings, the LM's own transcript as a candidate, more than 2
        # respellings per word or characters down to log-prob -7 gain <= 0.2 points of WER
        # each and cost 5-25 % of the speed.
        self.ctc_rescore_top = 8
        self.respell_passes = 1
        self.respell_limit = 6
        self.respell_keep = 2
        self.ctc_prune = DEFAULT_PRUNE  # characters below this log-prob in a slot are not tried there (tuned: the head)
        self.ctc_lm_candidate = False
        # The empty transcript stays a candidate (silence must not get a sentence) unless CTC is
        # sure something was said: its all-blank path more than this many nats below its best
        # spelling. The LM alone rates "" far above any sentence it finds odd ("truncating audio":
        # -7.5 vs -52 nats), so without a bound short or unusual prompts lose to silence. Tuned
        # per head (tune_ctc, `empty_margin`); inf (a head never tuned) is the old behaviour.
        self.ctc_empty_margin = math.inf

    # ---- loading -------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path | None = None, adapter: str | Path | None = None, device: str | None = None,
             dtype: torch.dtype | None = None, merge_lora: bool = True,
             ctc_weight: float | None = None, ctc_beam: int | None = None,
             ctc_prune: float | None = None) -> SpeechModel:
        """Load a local checkpoint folder (either layout), or the built-in model when `path` is None.

        `adapter`: a PEFT folder of a fine-tuned speech adapter; it replaces the checkpoint's speech
        LoRA (and its projector/encoder, when the folder carries them). `merge_lora=False` keeps
        the LoRA as separate peft modules (for training). `ctc_weight`: the weight of the folder's
        CTC head when rescoring English transcripts (speech.ctc; 0 turns it off; default: the
        weight stored with the head, or off with an adapter: a new language, which the head's
        alphabet was not trained on). `ctc_beam`: the prefix search's beam width, and `ctc_prune`
        the log-probability above which it tries a character in a slot (defaults: the values
        stored with the head).
        """
        if ctc_beam is not None and ctc_beam < 1:
            raise UserError(f"ctc_beam must be at least 1, not {ctc_beam}")
        if ctc_prune is not None and not ctc_prune < 0:  # log-probabilities are <= 0: at 0 nothing is tried
            raise UserError(f"ctc_prune must be a negative log-probability, not {ctc_prune}")
        start = time.perf_counter()
        root = Path(path) if path is not None else builtin_path()
        if path is None and not (root / "config.json").exists():
            raise CheckpointError("the built-in model is not part of this install; pass --model DIR")
        spec = read_spec(root)
        dev = pick_device(device)
        dtype = dtype or (torch.bfloat16 if dev.type == "cuda" else torch.float32)
        tokenizer = load_tokenizer(root)
        weights = load_weights(spec, dtype)
        if adapter is not None:
            cls._apply_adapter_folder(Path(adapter), spec, weights)

        spec.lm_config._attn_implementation = _attn_implementation(dev)
        with torch.device("meta"):
            encoder = ConformerEncoder(spec.audio_config)
            projector = SpeechProjector(spec.audio_config.hidden_size * spec.audio_config.downsample_rate,
                                        spec.lm_config.hidden_size)
            lm = Phi3ForCausalLM(spec.lm_config)
        _assign(encoder, weights.encoder, "encoder", dtype, dev)
        _assign(projector, {k: v for k, v in weights.projector.items() if "_for_speech." in k},
                "speech projector", dtype, dev)
        tied = bool(spec.lm_config.tie_word_embeddings)
        _assign(lm, weights.lm, "language model", dtype, dev, optional=("lm_head.weight",) if tied else ())
        if tied:
            lm.lm_head.weight = lm.model.embed_tokens.weight
        # Non-persistent rotary buffers were created on the meta device: rebuild them for real.
        lm.model.rotary_emb = Phi3RotaryEmbedding(config=spec.lm_config).to(dev)
        lm.requires_grad_(False)
        if spec.lora is not None:
            lm = apply_lora(lm, spec.lora, weights.lora, merge=merge_lora)
        model = cls(spec, tokenizer, encoder, projector, lm, dev)
        model.adapter = Path(adapter) if adapter is not None else None
        head = load_ctc_head(root, spec.audio_config.hidden_size, dev)
        if head is not None:
            model.ctc_head, settings = head
            model.ctc_beam, model.ctc_empty_margin = ctc_beam or settings["beam"], settings["empty_margin"]
            model.ctc_prune = ctc_prune if ctc_prune is not None else settings["prune"]
            if model.ctc_beam < 1 or not model.ctc_prune < 0:
                raise CheckpointError(f"{root / HEAD_FILE}: stored beam {settings['beam']} / prune {settings['prune']}: "
                                      "the beam must be at least 1 and the prune a negative log-probability")
            model.lexicon = Lexicon.load(root, model.ctc_head.chars)
            model.fusion = load_fusion(root, model.ctc_head.chars, settings)
            model.ctc_weight = ctc_weight if ctc_weight is not None else (0.0 if adapter else settings["decode_weight"])
            if not 0.0 <= model.ctc_weight <= 1.0:
                raise UserError(f"ctc_weight must be in [0, 1], not {model.ctc_weight}")
        model.eval()
        model.load_seconds = time.perf_counter() - start
        log.info("loaded %s (%s layout%s) on %s/%s in %.1f s", root, spec.layout,
                 f", adapter {adapter}" if adapter else "", dev, str(dtype).removeprefix("torch."), model.load_seconds)
        return model

    @staticmethod
    def _apply_adapter_folder(adapter_dir: Path, spec: CheckpointSpec, weights: Weights) -> None:
        if not adapter_dir.is_dir():
            raise CheckpointError(f"{adapter_dir}: no such adapter folder")
        spec.lora = lora_from_peft_dir(adapter_dir)
        weights.lora = read_adapter_weights(adapter_dir)  # cast with the rest in _assign/apply_lora
        extra = adapter_dir / ADAPTER_AUDIO_WEIGHTS
        if extra.exists():
            for key, tensor in iter_safetensors([extra], lambda k: True):
                if key.startswith(AUDIO_PREFIX + "encoder."):
                    weights.encoder[key[len(AUDIO_PREFIX + "encoder."):]] = tensor
                elif key.startswith(AUDIO_PREFIX):
                    weights.projector[key[len(AUDIO_PREFIX):]] = tensor

    def _token_id(self, token: str) -> int:
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            raise CheckpointError(f"{self.spec.path}: the tokenizer has no {token} token")
        return int(token_id)

    @property
    def device(self) -> torch.device:
        return self.projector.up_proj_for_speech.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.projector.up_proj_for_speech.weight.dtype

    def describe(self) -> dict:
        return {
            "path": str(self.spec.path),
            "layout": self.spec.layout,
            "adapter": str(self.adapter) if self.adapter else None,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "languages": dict(LANGUAGES),
            "tasks": list(TASKS),
            "max_clip_seconds": MAX_CLIP_SECONDS,
            "parameters": parameter_counts(self.spec),
            "decoding": self._decoding(),
        }

    def _decoding(self) -> dict:
        if self.ctc_head is None or self.ctc_weight == 0:
            return {"method": "greedy"}
        out = {"method": "ctc-rescoring", "ctc_weight": self.ctc_weight, "beam": self.ctc_beam, "prune": self.ctc_prune,
               "empty_margin": None if math.isinf(self.ctc_empty_margin) else self.ctc_empty_margin,
               "lexicon": len(self.lexicon.surface) if self.lexicon else None, "ngram": None}
        if self.fusion is not None:
            out["ngram"] = {"order": self.fusion.ngram.order, "words": len(self.fusion.ngram.vocabulary),
                            "weight": self.fusion.alpha, "word_bonus": self.fusion.beta,
                            "oov_penalty": self.fusion.oov_penalty}
        return out

    # ---- inputs --------------------------------------------------------------------------
    def features(self, audios: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-mel features [B, T, 80] and frame lengths [B] of 16 kHz clips."""
        return self.featurizer(audios)

    def prompt_ids(self, task: Task, n_audio_tokens: int) -> list[int]:
        prefix, suffix = build_prompt(task).split(AUDIO_MARKER)
        encode = lambda text: self.tokenizer.encode(text, add_special_tokens=False)
        return encode(prefix) + [self.audio_token_id] * n_audio_tokens + encode(suffix)

    def embed(self, input_ids: torch.Tensor, audio_features: torch.Tensor,
              audio_feature_lengths: torch.Tensor) -> torch.Tensor:
        """Token embeddings with every audio placeholder replaced by its projected encoder state."""
        states, lengths = self.encoder(audio_features.to(self.dtype), audio_feature_lengths)
        return self._embed_states(input_ids, states, lengths)

    def _embed_states(self, input_ids: torch.Tensor, states: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        audio = self.projector(states)
        valid = torch.arange(audio.shape[1], device=audio.device)[None, :] < lengths[:, None]
        embeds = self.lm.get_input_embeddings()(input_ids)
        slots = input_ids == self.audio_token_id
        if int(slots.sum()) != int(lengths.sum()):
            raise ValueError(f"prompt has {int(slots.sum())} audio slots for {int(lengths.sum())} audio tokens")
        return embeds.masked_scatter(slots[..., None], audio[valid].to(embeds.dtype))

    def _left_pad(self, sequences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(map(len, sequences))
        pad = self.stop_token_ids[-1]
        ids = torch.full((len(sequences), width), pad, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for i, seq in enumerate(sequences):
            ids[i, width - len(seq):] = torch.tensor(seq)
            mask[i, width - len(seq):] = 1
        return ids.to(self.device), mask.to(self.device)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, audio_features: torch.Tensor,
                audio_feature_lengths: torch.Tensor, labels: torch.Tensor | None = None):
        """Teacher-forced pass (fine-tuning, validation loss, logits parity)."""
        embeds = self.embed(input_ids, audio_features, audio_feature_lengths)
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        return self.lm(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                       labels=labels, use_cache=False)

    # ---- decoding ------------------------------------------------------------------------
    def max_new_tokens(self, num_samples: int, task: Task) -> int:
        """Token budget from the audio length: generous for fast speech, bounded for a stuck model."""
        seconds = num_samples / 16_000
        budget = 24 + math.ceil(12 * seconds)
        return budget * (2 if task.kind == "both" else 1)

    @torch.inference_mode()
    def generate(self, audios: list[np.ndarray], task: Task | list[Task] = Task(),
                 max_new_tokens: int | None = None) -> list[str]:
        """Greedy-decode a batch of 16 kHz mono clips (each <= 30 s); one string per clip."""
        if not audios:
            return []
        tasks = task if isinstance(task, list) else [task] * len(audios)
        if len(tasks) != len(audios):
            raise UserError(f"{len(tasks)} tasks for {len(audios)} clips")
        for audio in audios:
            if len(audio) > MAX_CLIP_SECONDS * 16_000 + 1:
                raise UserError(f"clip of {len(audio) / 16_000:.1f} s is longer than {MAX_CLIP_SECONDS:.0f} s; "
                                "use transcribe(), which cuts long audio with VAD")
        features, frame_lengths = self.features(audios)
        n_tokens = ConformerEncoder.output_lengths(frame_lengths.cpu()).tolist()
        ids, mask = self._left_pad([self.prompt_ids(t, n) for t, n in zip(tasks, n_tokens)])
        states, lengths = self.encoder(features.to(self.dtype), frame_lengths)
        embeds = self._embed_states(ids, states, lengths)
        budgets = [max_new_tokens or self.max_new_tokens(len(a), t) for a, t in zip(audios, tasks)]
        ctc_rows = [i for i, t in enumerate(tasks) if t.kind == "transcribe"] \
            if self.ctc_head is not None and self.ctc_weight > 0 else []
        # With CTC rescoring, the LM's own greedy transcript is one more candidate; it rarely wins
        # and costs a full decode, so by default it is not made (ctc_lm_candidate).
        lm_rows = [i for i in range(len(audios)) if i not in ctc_rows or self.ctc_lm_candidate]
        texts = [""] * len(audios)
        if lm_rows:
            pick = torch.tensor(lm_rows, device=self.device)
            out = greedy_decode(self.lm, embeds[pick], mask[pick], self.stop_token_ids, [budgets[i] for i in lm_rows],
                                self.suppress_token_ids)
            for i, tokens in zip(lm_rows, out):
                texts[i] = self.tokenizer.decode(tokens, skip_special_tokens=True).strip()
        if ctc_rows:
            texts = self._ctc_rescore(texts, ctc_rows, states, lengths, embeds, mask)
        return texts

    def _ctc_rescore(self, texts: list[str], rows: list[int], states: torch.Tensor, lengths: torch.Tensor,
                     embeds: torch.Tensor, mask: torch.Tensor) -> list[str]:
        """Replace each row's transcript by the best of {LM's, CTC n-best, ""}, then respell (speech.ctc)."""
        head = self.ctc_head
        log_probs, slots = head(states.float(), lengths)
        log_probs, slots = log_probs.cpu(), slots.cpu()
        proposals = {}
        searched = prefix_beam_searches([(log_probs[row], int(slots[row])) for row in rows], head.chars,
                                        beam=self.ctc_beam, prune=self.ctc_prune, fusion=self.fusion,
                                        threads=torch.get_num_threads())
        for row, nbest in zip(rows, searched):
            write = self.lexicon.write if self.lexicon else (lambda t: t[:1].upper() + t[1:])
            lm_text = [texts[row]] if self.ctc_lm_candidate else []
            empty = [""] if self._empty_allowed(log_probs[row], int(slots[row]), nbest) else []
            proposals[row] = lm_text + [write(t) for t, _ in nbest[: self.ctc_rescore_top]] + empty
        prefill = self._prefill(embeds, mask) if self.ctc_weight < 1 else None  # w = 1: the LM is not asked
        best = self._best_of(proposals, log_probs, slots, prefill)
        for _ in range(self.respell_passes if self.lexicon is not None else 0):
            changes = {row: self.lexicon.respellings(best[row][1], self.respell_limit) for row in rows}
            if not any(changes.values()):
                break
            variants = {}
            for row in rows:
                words = best[row][1].split()
                spelled = [" ".join(words[:i] + [w] + words[i + n:]) for i, n, w in changes[row]]
                # The LM pass is the costly part: per word, only the spellings CTC likes best go on.
                ctc = sequence_log_probs(log_probs[row], int(slots[row]), spelled, head.chars)
                counts: dict[int, int] = {}
                keep = []
                for k in sorted(range(len(spelled)), key=lambda k: -ctc[k]):
                    first = changes[row][k][0]
                    if counts.get(first, 0) < self.respell_keep:
                        counts[first] = counts.get(first, 0) + 1
                        keep.append(k)
                keep.sort()
                changes[row] = [changes[row][k] for k in keep]
                variants[row] = [best[row][1]] + [spelled[k] for k in keep]
            scored = self._score(variants, log_probs, slots, prefill, dedupe=False)
            for row in rows:  # respellings that beat the text as it is, best first, not overlapping
                base, words = scored[row][0][0], best[row][1].split()
                wins = sorted(((score, i, n, w) for (i, n, w), (score, _) in zip(changes[row], scored[row][1:])
                               if score > base), reverse=True)
                taken: set[int] = set()
                for _, i, n, w in wins:
                    if taken.isdisjoint(range(i, i + n)):
                        taken.update(range(i, i + n))
                        words[i: i + n] = [w] + [""] * (n - 1)
                best[row] = (base, " ".join(w for w in words if w))
        return [best[i][1] if i in best else t for i, t in enumerate(texts)]

    def _empty_allowed(self, log_probs: torch.Tensor, slots: int, nbest: list[tuple[str, float]]) -> bool:
        """Whether "" is a candidate: yes unless CTC's all-blank path is more than
        `ctc_empty_margin` below its best spelling's (see __init__)."""
        if not nbest or math.isinf(self.ctc_empty_margin):
            return True
        best, empty = sequence_log_probs(log_probs, slots, [nbest[0][0], ""], self.ctc_head.chars)
        return empty >= best - self.ctc_empty_margin

    def _score(self, proposals: dict[int, list[str]], log_probs, slots, prefill: tuple,
               dedupe: bool = True) -> dict[int, list[tuple[float, str]]]:
        """Each row's candidate transcripts with w * (log P_ctc + fusion) + (1 - w) * log P_lm, in the
        given order (with `dedupe`, only the first of candidates spelled alike: the LM's, which has
        casing). At w = 1 the LM pass is skipped."""
        chars, owners, candidates, ctc = self.ctc_head.chars, [], [], []
        for row, texts in proposals.items():
            seen, mine = set(), []
            for text in texts:
                spelled = tuple(char_ids(text, chars))
                if not dedupe or spelled not in seen:
                    seen.add(spelled)
                    mine.append(text)
            proposals[row] = mine
            owners += [row] * len(mine)
            candidates += mine
            ctc += sequence_log_probs(log_probs[row], int(slots[row]), mine, chars)
        lm = self._answer_log_probs(prefill, owners, candidates) if self.ctc_weight < 1 else [0.0] * len(candidates)
        out: dict[int, list[tuple[float, str]]] = {row: [] for row in proposals}
        for row, text, c, a in zip(owners, candidates, ctc, lm):
            if self.fusion is not None:  # the search's own score: CTC + word n-gram
                c += self.fusion.text_score(text)
            out[row].append((self.ctc_weight * c + (1 - self.ctc_weight) * a, text))
        return out

    def _best_of(self, proposals, log_probs, slots, prefill: tuple) -> dict[int, tuple[float, str]]:
        return {row: max(scored, key=lambda x: x[0]) for row, scored in
                self._score(proposals, log_probs, slots, prefill).items()}

    @torch.inference_mode()
    def _prefill(self, embeds: torch.Tensor, mask: torch.Tensor) -> tuple:
        """The prompts through the LM once: next-token logits, per-layer K/V and positions."""
        position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.lm.config)
        first = self.lm(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids, past_key_values=cache,
                        use_cache=True, logits_to_keep=1).logits[:, -1]
        return first, [(layer.keys, layer.values) for layer in cache.layers], position_ids[:, -1], mask

    @torch.inference_mode()
    def _answer_log_probs(self, prefill: tuple, owners: list[int], answers: list[str]) -> list[float]:
        """log P_lm(answer + end | row's prompt) for each (row, answer), teacher-forced.

        Each row's answers run on its prompt's K/V (`_prefill`), so scoring ten candidates costs
        ten short answers, not ten prompts. With a 4D-mask attention (sdpa, eager) a row's answers
        go in as one token tree: n-best candidates share most of their tokens, and a shared prefix
        is computed once (half the tokens, on 48 of the built-in model's held-out clips). Flash
        attention takes no tree mask, so there each answer runs on a copy of the prompt's K/V.
        """
        stop = self.stop_token_ids[0]
        ids = [self.tokenizer.encode(a, add_special_tokens=False) + [stop] for a in answers]
        if self.lm.config._attn_implementation in ("sdpa", "eager"):
            return self._tree_log_probs(prefill, owners, ids)
        return self._flat_log_probs(prefill, owners, ids)

    def _tree_log_probs(self, prefill: tuple, owners: list[int], ids: list[list[int]]) -> list[float]:
        """`_answer_log_probs` with each row's answers merged into a prefix tree (one pass per row group).

        Every token that has a successor is a tree node fed to the LM once, at the position of its
        depth, attending to the prompt and to its own ancestors; each answer token is scored from
        its parent's output (the first from the prompt's).
        """
        first, kv, last_position, mask = prefill
        stop = self.stop_token_ids[0]
        trees: dict[int, tuple[list[int], list[int], dict]] = {}  # row: (fed tokens, their parents, index)
        paths = []  # per answer: (row, [(parent's fed index or -1, token)])
        for row, seq in zip(owners, ids):
            tokens, parents, index = trees.setdefault(row, ([], [], {}))
            parent, path = -1, []
            for token in seq:
                path.append((parent, token))
                if token == stop:
                    break
                key = (parent, token)
                if key not in index:
                    index[key] = len(tokens)
                    tokens.append(token)
                    parents.append(parent)
                parent = index[key]
            paths.append((row, path))
        rows = sorted(trees)
        width = max([len(trees[r][0]) for r in rows] + [1])
        n, prompt_len = len(rows), mask.shape[1]
        input_ids = torch.full((n, width), stop, dtype=torch.long)
        positions = torch.zeros((n, width), dtype=torch.long)
        tree_mask = torch.eye(width, dtype=torch.bool).repeat(n, 1, 1)  # padding attends to itself
        slot = {}
        for i, row in enumerate(rows):
            tokens, parents, _ = trees[row]
            slot[row] = i
            depth = [0] * len(tokens)
            for j, parent in enumerate(parents):
                if parent >= 0:
                    tree_mask[i, j] |= tree_mask[i, parent]
                    depth[j] = depth[parent] + 1
            input_ids[i, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            positions[i, : len(tokens)] = torch.tensor(depth, dtype=torch.long) + 1
        pick = torch.tensor(rows, device=self.device)
        positions = positions.to(self.device) + last_position[pick, None]
        allowed = torch.cat([mask[pick].bool()[:, None, None, :].expand(n, 1, width, prompt_len),
                             tree_mask.to(self.device)[:, None]], dim=-1)
        # additive, not boolean: eager attention adds the mask to its scores
        full_mask = torch.zeros(allowed.shape, dtype=self.dtype, device=self.device)
        full_mask.masked_fill_(~allowed, torch.finfo(self.dtype).min)
        cache = DynamicCache(config=self.lm.config)
        for layer, (keys, values) in enumerate(kv):
            cache.update(keys[pick], values[pick], layer)
        logits = self.lm(input_ids=input_ids.to(self.device), attention_mask=full_mask, position_ids=positions,
                         past_key_values=cache, use_cache=True).logits
        table = torch.log_softmax(torch.cat([first[pick, None], logits], dim=1).float(), dim=-1).cpu()
        flat = [(slot[row], parent + 1, token) for row, path in paths for parent, token in path]
        picked = table[[f[0] for f in flat], [f[1] for f in flat], [f[2] for f in flat]].tolist()
        scores, k = [], 0
        for _, path in paths:
            scores.append(sum(picked[k: k + len(path)]))
            k += len(path)
        return scores

    def _flat_log_probs(self, prefill: tuple, owners: list[int], ids: list[list[int]], chunk: int = 48) -> list[float]:
        """`_answer_log_probs` for attention without tree masks: each answer on a copy of its prompt's
        K/V, in chunks of similar length so little is spent on padding."""
        first, kv, last_position, mask = prefill
        stop = self.stop_token_ids[0]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        scores = [0.0] * len(ids)
        for start in range(0, len(order), chunk):
            picked = order[start: start + chunk]
            rows = torch.tensor([owners[i] for i in picked], device=self.device)
            width = max(len(ids[i]) for i in picked)
            answer_ids = torch.full((len(picked), width), stop, dtype=torch.long)
            answer_mask = torch.zeros((len(picked), width), dtype=torch.long)
            for j, i in enumerate(picked):
                answer_ids[j, : len(ids[i])] = torch.tensor(ids[i])
                answer_mask[j, : len(ids[i])] = 1
            answer_ids, answer_mask = answer_ids.to(self.device), answer_mask.to(self.device)
            logits = first[rows, None]
            if width > 1:
                cache = DynamicCache(config=self.lm.config)
                for layer, (keys, values) in enumerate(kv):
                    cache.update(keys[rows], values[rows], layer)
                rest = self.lm(input_ids=answer_ids[:, :-1], attention_mask=torch.cat([mask[rows], answer_mask[:, :-1]], 1),
                               position_ids=last_position[rows, None] + 1 + torch.arange(width - 1, device=self.device),
                               past_key_values=cache, use_cache=True).logits
                logits = torch.cat([logits, rest], dim=1)
            token_lp = torch.log_softmax(logits.float(), dim=-1).gather(-1, answer_ids[..., None])[..., 0]
            for j, score in enumerate((token_lp * answer_mask).sum(-1).tolist()):
                scores[picked[j]] = score
        return scores

    def transcribe(self, inputs, task: Task = Task(), batch_size: int = 8, vad=None, progress: bool = False):
        """Files or arrays of any length -> `Transcript`s (see speech.transcribe)."""
        from speech.transcribe import transcribe

        return transcribe(self, inputs, task=task, batch_size=batch_size, vad=vad, progress=progress)


def apply_lora(lm: nn.Module, lora: LoraSpec, lora_weights: dict[str, torch.Tensor], merge: bool) -> nn.Module:
    """Wrap `lm` with the speech LoRA via peft, load its tensors, and merge it for inference."""
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

    targets = lora_target_names(lm, lora)
    if not targets:
        raise CheckpointError("the LoRA's target modules match no layer of the language model")
    expected = {f"{name}.lora_{ab}.weight" for name in targets for ab in "AB"}
    missing = sorted(expected - lora_weights.keys())
    if missing:
        raise CheckpointError(f"speech LoRA weights missing, e.g. {missing[0]} ({len(missing)} tensors)")
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets, bias="none")
    device = lm.model.embed_tokens.weight.device
    dtype = lm.model.embed_tokens.weight.dtype
    peft_model = get_peft_model(lm, config)
    state = {f"base_model.model.{k}": v.to(device=device, dtype=dtype) for k, v in lora_weights.items() if k in expected}
    result = set_peft_model_state_dict(peft_model, state)
    if getattr(result, "unexpected_keys", None):
        raise CheckpointError(f"speech LoRA has unexpected tensors, e.g. {result.unexpected_keys[0]}")
    if merge:
        return peft_model.merge_and_unload()
    return peft_model
