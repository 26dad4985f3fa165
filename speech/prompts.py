"""Task prompts, exactly as Phi-4-multimodal was trained on them (the model is sensitive to wording).

`<|audio_1|>` stands for the clip; the processor expands it into one `<|endoftext11|>` placeholder
per audio token, which the model replaces with projected encoder states.
"""

from __future__ import annotations

from dataclasses import dataclass

from speech.errors import UserError

LANGUAGES: dict[str, str] = {
    "en": "English",
    "zh": "Chinese",
    "de": "German",
    "fr": "French",
    "it": "Italian",
    "ja": "Japanese",
    "es": "Spanish",
    "pt": "Portuguese",
}
TASKS = ("transcribe", "translate", "both")
AUDIO_MARKER = "<|audio_1|>"
SEPARATOR = "<sep>"

_INSTRUCTIONS = {
    "transcribe": "Transcribe the audio clip into text.",
    "translate": "Translate the audio to {language}.",
    "both": (
        "Transcribe the audio to text, and then translate the audio to {language}. "
        "Use <sep> as a separator between the original transcript and the translation."
    ),
}


def language_code(value: str) -> str:
    """Accept 'fr', 'FR', 'fr-FR' or 'French'; return the two-letter code or refuse with the list."""
    key = value.strip()
    lowered = key.lower()
    if lowered in LANGUAGES:
        return lowered
    if "-" in lowered and lowered.split("-")[0] in LANGUAGES:
        return lowered.split("-")[0]
    for code, name in LANGUAGES.items():
        if name.lower() == lowered:
            return code
    supported = ", ".join(f"{c} ({n})" for c, n in LANGUAGES.items())
    raise UserError(f"unknown language {value!r}; supported: {supported}")


@dataclass(frozen=True)
class Task:
    """What to do with a clip: transcribe, translate to `target_lang`, or both (`<sep>`-joined)."""

    kind: str = "transcribe"
    target_lang: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in TASKS:
            raise UserError(f"unknown task {self.kind!r}; supported: {', '.join(TASKS)}")
        if self.kind == "transcribe":
            object.__setattr__(self, "target_lang", None)
        else:
            object.__setattr__(self, "target_lang", language_code(self.target_lang or "en"))

    @classmethod
    def parse(cls, kind: str, target_lang: str | None = None) -> "Task":
        return cls(kind.strip().lower(), target_lang)

    def instruction(self) -> str:
        language = LANGUAGES[self.target_lang] if self.target_lang else ""
        return _INSTRUCTIONS[self.kind].format(language=language)


def build_prompt(task: Task) -> str:
    """The chat-formatted user turn; generation continues after `<|assistant|>`."""
    return f"<|user|>{AUDIO_MARKER}{task.instruction()}<|end|><|assistant|>"


def split_both(text: str) -> tuple[str, str]:
    """Split a `both` answer into (transcript, translation); a missing separator means no translation."""
    if SEPARATOR in text:
        transcript, translation = text.split(SEPARATOR, 1)
        return transcript.strip(), translation.strip()
    return text.strip(), ""
