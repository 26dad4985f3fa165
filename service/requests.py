"""Riva request configs -> validated `StreamOptions`, refusing anything absurd with a clear message.

Per-request settings travel where Riva clients already put them: `RecognitionConfig.language_code`,
`endpointing_config.stop_history` (trailing silence, ms) and `start_history` (minimum speech, ms),
and `custom_configuration` for the rest (keys in CUSTOM_KEYS).
"""

from __future__ import annotations

import dataclasses
import math

from encoder.vad import VadOptions
from service.config import Limits, StreamDefaults
from service.errors import invalid
from service.proto import audio
from service.session import StreamOptions
from speech.errors import UserError
from speech.model import MAX_CLIP_SECONDS
from speech.prompts import TASKS, Task, language_code

# key -> (what it sets, lowest, highest)
_NUMERIC = {
    "vad_aggressiveness": (0, 3),
    "min_silence_ms": (30, 10_000),
    "speech_pad_ms": (0, 2_000),
    "min_speech_ms": (0, 10_000),
    "max_speech_s": (1.0, MAX_CLIP_SECONDS),
    "interim_interval_ms": (100, 10_000),
}
CUSTOM_KEYS = ("task", "target_language", *_NUMERIC)
STREAM_ENCODINGS = (audio.AudioEncoding.LINEAR_PCM, audio.AudioEncoding.ENCODING_UNSPECIFIED)
FILE_ENCODINGS = (audio.AudioEncoding.FLAC, audio.AudioEncoding.OGGOPUS, audio.AudioEncoding.ENCODING_UNSPECIFIED)


def _number(key: str, value: str) -> float:
    low, high = _NUMERIC[key]
    try:
        number = float(value)
    except ValueError:
        raise invalid(f"custom_configuration {key}={value!r} is not a number") from None
    if not math.isfinite(number) or not low <= number <= high:
        raise invalid(f"custom_configuration {key}={value!r} is out of range [{low}, {high}]")
    return number


def _vad(config, defaults: StreamDefaults, custom: dict[str, str]) -> tuple[VadOptions, int]:
    values = {key: _number(key, custom[key]) for key in _NUMERIC if key in custom}
    if config.HasField("endpointing_config"):
        ep = config.endpointing_config
        for name in ("start_threshold", "stop_threshold", "stop_threshold_eou"):
            if ep.HasField(name) and not 0.0 <= getattr(ep, name) <= 1.0:
                raise invalid(f"endpointing_config.{name}={getattr(ep, name)} must be within [0, 1]")
        if ep.HasField("stop_history"):
            values.setdefault("min_silence_ms", _number("min_silence_ms", str(ep.stop_history)))
        if ep.HasField("start_history"):
            values.setdefault("min_speech_ms", _number("min_speech_ms", str(ep.start_history)))
    interim_ms = int(values.pop("interim_interval_ms", defaults.interim_interval_ms))
    changes = {
        "aggressiveness": int(values["vad_aggressiveness"]) if "vad_aggressiveness" in values else None,
        "min_silence_ms": int(values["min_silence_ms"]) if "min_silence_ms" in values else None,
        "speech_pad_ms": int(values["speech_pad_ms"]) if "speech_pad_ms" in values else None,
        "min_speech_ms": int(values["min_speech_ms"]) if "min_speech_ms" in values else None,
        "max_speech_s": values.get("max_speech_s"),
    }
    vad = dataclasses.replace(defaults.vad, **{k: v for k, v in changes.items() if v is not None})
    return vad, interim_ms


def _language(value: str, what: str) -> str:
    try:
        language_code(value)
    except UserError as exc:
        raise invalid(f"{what}: {exc}") from None
    return value


def recognition_options(
    config,
    defaults: StreamDefaults,
    limits: Limits,
    model_name: str,
    streaming: bool,
    interim_results: bool = False,
    translation=None,
) -> StreamOptions:
    """Validate a RecognitionConfig (plus a TranslationConfig for speech translation)."""
    custom = dict(config.custom_configuration)
    unknown = sorted(set(custom) - set(CUSTOM_KEYS))
    if unknown:
        raise invalid(f"unknown custom_configuration key(s) {', '.join(unknown)}; supported: {', '.join(CUSTOM_KEYS)}")
    if config.model and config.model not in {model_name, "default"}:
        raise invalid(f"unknown model {config.model!r}; this server serves {model_name!r} (or leave model empty)")
    encodings = STREAM_ENCODINGS if streaming else (audio.AudioEncoding.LINEAR_PCM, *FILE_ENCODINGS)
    if config.encoding not in encodings:
        names = ", ".join(audio.AudioEncoding.Name(e) for e in encodings)
        got = audio.AudioEncoding.Name(config.encoding) if config.encoding in audio.AudioEncoding.values() else config.encoding
        raise invalid(f"unsupported encoding {got}; {'streaming' if streaming else 'Recognize'} accepts {names}")
    pcm = config.encoding == audio.AudioEncoding.LINEAR_PCM or (streaming and config.encoding == 0)
    rate = config.sample_rate_hertz
    if pcm and not limits.min_sample_rate <= rate <= limits.max_sample_rate:
        raise invalid(f"sample_rate_hertz={rate} is not supported for LINEAR_PCM; "
                      f"use {limits.min_sample_rate}..{limits.max_sample_rate} Hz (resampled to 16 kHz)")
    channels = config.audio_channel_count or 1
    if not 1 <= channels <= limits.max_channels:
        raise invalid(f"audio_channel_count={channels} is not supported; use 1..{limits.max_channels} (downmixed)")
    language = _language(config.language_code or "en-US", "language_code")

    kind = custom.get("task", "translate" if translation is not None else "transcribe").strip().lower()
    if kind not in TASKS:
        raise invalid(f"custom_configuration task={kind!r}; supported: {', '.join(TASKS)}")
    target = custom.get("target_language") or None
    if translation is not None:
        if translation.source_language_code:
            language = _language(translation.source_language_code, "translation_config.source_language_code")
        target = translation.target_language_code or target
        if kind == "transcribe":
            raise invalid("StreamingTranslateSpeechToText translates: task must be translate or both")
        if not target:
            raise invalid("translation_config.target_language_code is required (e.g. 'en-US')")
    if kind != "transcribe" and not target:
        raise invalid(f"task={kind} needs custom_configuration target_language (e.g. 'en')")
    if target is not None:
        target = _language(target, "target language")
    task = Task(kind, language_code(target) if target else None)
    vad, interim_ms = _vad(config, defaults, custom)
    return StreamOptions(
        task=task,
        sample_rate=rate if pcm else 16_000,
        channels=channels,
        language=language,
        target_language=target,
        primary="translation" if translation is not None else "transcript",
        vad=vad,
        interim_results=interim_results,
        interim_interval_ms=interim_ms,
        max_chunk_bytes=limits.max_chunk_bytes,
        max_stream_seconds=limits.max_stream_seconds,
    )


def is_pcm(config) -> bool:
    return config.encoding == audio.AudioEncoding.LINEAR_PCM

