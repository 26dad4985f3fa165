"""`speechlora data`: speech corpora (16 kHz wavs + jsonl manifests with deterministic splits)
from a folder of recordings, from text spoken by offline TTS engines, or from Debian's Asterisk
prompts. README's "Building speech corpora" section has the details."""
