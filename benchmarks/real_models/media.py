"""Realistic inputs built offline: speech, music-like notes, photos and text images.

* Speech comes from Debian's ``espeak-ng`` when it is installed (``apt-get install espeak-ng``);
  otherwise from a small source-filter synthesiser here (glottal pulses through formant
  resonators, voiced and unvoiced segments, pauses) so tests run without it.
* Notes are harmonic tones with attack/decay envelopes (what an audio-to-MIDI model is for).
* Photos are the sample images that scikit-image ships inside its wheel (fetched with pip);
  text images are drawn with Pillow (installed into the cache with ``pip --target``), on
  those photos and on paper-like backgrounds, in the DejaVu fonts when present.

Every generator takes a ``numpy.random.Generator`` so the data are the same on every run.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np

__all__ = [
    "SENTENCES",
    "SPEECH_ENGINE",
    "WORDS",
    "espeak",
    "formant_speech",
    "add_noise",
    "notes",
    "resample",
    "speech",
    "stream",
]

#: Sentences spoken by espeak-ng (short: a few seconds each). Wake phrases included on purpose.
SENTENCES = [
    "hey mycroft, what is the weather like today",
    "the quick brown fox jumps over the lazy dog",
    "please set a timer for ten minutes",
    "hey mycroft",
    "numbers like three hundred and forty two are easy to say",
    "turn off the lights in the kitchen",
    "she sells sea shells by the sea shore",
    "hey jarvis, play some music",
    "voice activity detection finds the parts of a recording with speech",
    "one two three four five six seven eight nine ten",
    "the meeting starts at half past nine tomorrow morning",
    "can you hear me now",
]

#: Words for text images (OCR): ordinary words, numbers, codes, punctuation.
WORDS = (
    "invoice total amount date 2024-03-17 order no. 48213 quantity price EUR 129.90 page 3 of 7 "
    "Hello World Station Street 221B Baker London NW1 6XE Phone +44 20 7946 0958 ACME Ltd. "
    "The quick brown fox jumps over the lazy dog 0123456789 Receipt Subtotal Tax 19% Cash Change "
    "Room 404 Exit Keep Right STOP Open 9:00-17:30 Mon-Fri www.example.org info@example.org"
).split()


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Band-limited resampling of a 1-D signal by the FFT (like scipy.signal.resample)."""
    if sr_in == sr_out:
        return x.astype(np.float32)
    n_out = int(round(len(x) * sr_out / sr_in))
    spec = np.fft.rfft(x.astype(np.float64))
    keep = min(len(spec), n_out // 2 + 1)
    out = np.fft.irfft(spec[:keep], n=n_out) * (n_out / len(x))
    return out.astype(np.float32)


def espeak(text: str, voice: str = "en", speed: int = 160, pitch: int = 50) -> tuple[np.ndarray, int] | None:
    """Speak ``text`` with espeak-ng; returns ``(float32 samples in [-1, 1], sample rate)``.

    Returns None when espeak-ng is not installed.
    """
    exe = shutil.which("espeak-ng") or shutil.which("espeak")
    if exe is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "s.wav"
        subprocess.run([exe, "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(out), text], check=True, capture_output=True)
        with wave.open(str(out)) as w:
            sr = w.getframerate()
            data = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    return data.astype(np.float32) / 32768.0, sr


def _resonate(x: np.ndarray, freq: float, bw: float, sr: int) -> np.ndarray:
    """Two-pole resonator (one formant), computed by its impulse response (FFT convolution)."""
    r = np.exp(-np.pi * bw / sr)
    theta = 2 * np.pi * freq / sr
    n = np.arange(int(sr * 0.03))
    h = (r ** n) * np.sin(theta * (n + 1)) / np.sin(theta)
    h *= (1 - r)  # keep the gain moderate
    size = len(x) + len(h) - 1
    nfft = 1 << (size - 1).bit_length()
    return np.fft.irfft(np.fft.rfft(x, nfft) * np.fft.rfft(h, nfft), nfft)[: len(x)]


#: (F1, F2, F3) in Hz of a few vowels (adult male averages).
_VOWELS = [(730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480), (570, 840, 2410), (660, 1720, 2410)]


def formant_speech(rng: np.random.Generator, seconds: float = 2.0, sr: int = 16000) -> np.ndarray:
    """Speech-like audio without espeak: syllables of voiced vowels (glottal pulses at a gliding
    pitch through three formants) and unvoiced fricatives (shaped noise), with pauses.

    Returns float32 samples in [-1, 1].
    """
    out = np.zeros(int(seconds * sr), np.float32)
    t = int(rng.uniform(0.05, 0.3) * sr)
    f0 = rng.uniform(90, 220)
    while t < len(out) - sr // 10:
        dur = int(rng.uniform(0.12, 0.32) * sr)
        seg = np.zeros(dur)
        # voiced part: pulse train with jitter, pitch glide
        pitch = f0 * (1 + 0.15 * np.sin(np.linspace(0, rng.uniform(1, 3), dur)))
        phase = np.cumsum(pitch / sr)
        pulses = np.diff(np.floor(phase), prepend=0.0)
        source = np.convolve(pulses, np.hanning(int(sr / f0 * 0.6)) , mode="same")
        vowel = _VOWELS[rng.integers(len(_VOWELS))]
        for k, (f, bw) in enumerate(zip(vowel, (80, 100, 140))):
            seg += _resonate(source, f, bw, sr) * (1.0 / (k + 1))
        if rng.random() < 0.4:  # a fricative before the vowel
            fr = int(rng.uniform(0.04, 0.1) * sr)
            noise = _resonate(rng.standard_normal(fr), rng.uniform(3000, 6000), 1500, sr) * 0.3
            seg = np.concatenate([noise, seg])
        env = np.minimum(1, np.minimum(np.arange(len(seg)), np.arange(len(seg))[::-1]) / (0.02 * sr))
        seg = seg * env
        seg = seg / (np.abs(seg).max() + 1e-9) * rng.uniform(0.3, 0.8)
        end = min(len(out), t + len(seg))
        out[t:end] += seg[: end - t]
        t = end + int(rng.choice([0.02, 0.05, 0.25]) * sr)
    return out


#: Where speech comes from: "auto" (espeak-ng when installed, else formant speech), "espeak",
#: or "formant" (the tests use it, so their data do not depend on what is installed).
SPEECH_ENGINE = "auto"


def speech(rng: np.random.Generator, sr: int = 16000, count: int = 6) -> list[np.ndarray]:
    """``count`` spoken utterances at ``sr`` (see :data:`SPEECH_ENGINE`)."""
    voices = ["en", "en-us", "en+m3", "en+f2", "en-gb-x-rp", "en+f4", "en-us+m7"]
    out = []
    for i in range(count):
        speed, pitch = int(rng.integers(130, 200)), int(rng.integers(30, 70))
        spoken = None if SPEECH_ENGINE == "formant" else espeak(SENTENCES[i % len(SENTENCES)], voices[i % len(voices)], speed, pitch)
        if spoken is None and SPEECH_ENGINE == "espeak":
            raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng)")
        if spoken is None:
            out.append(formant_speech(rng, rng.uniform(1.5, 3.0), sr))
        else:
            audio, sr_in = spoken
            out.append(resample(audio, sr_in, sr))
    return out


def add_noise(x: np.ndarray, rng: np.random.Generator, snr_db: float) -> np.ndarray:
    """Add pink-ish background noise at ``snr_db`` relative to the signal's RMS."""
    white = rng.standard_normal(len(x))
    spec = np.fft.rfft(white)
    spec /= np.sqrt(np.arange(1, len(spec) + 1))
    pink = np.fft.irfft(spec, len(x))
    rms = np.sqrt(np.mean(x.astype(np.float64) ** 2)) + 1e-9
    pink *= rms / (np.sqrt(np.mean(pink ** 2)) + 1e-12) * 10 ** (-snr_db / 20)
    return (x + pink).astype(np.float32)


def stream(clips: list[np.ndarray], rng: np.random.Generator, sr: int = 16000, snr_db: float = 25.0) -> np.ndarray:
    """Concatenate clips with silences of 0.2-1 s between them and background noise over all."""
    parts = []
    for clip in clips:
        parts.append(np.zeros(int(rng.uniform(0.2, 1.0) * sr), np.float32))
        parts.append(clip.astype(np.float32))
    parts.append(np.zeros(int(0.5 * sr), np.float32))
    x = np.concatenate(parts)
    return add_noise(x, rng, snr_db)


def notes(rng: np.random.Generator, seconds: float, sr: int = 22050) -> np.ndarray:
    """A melody with chords: harmonic tones (MIDI 40-84) with piano-like attack and decay."""
    out = np.zeros(int(seconds * sr))
    t = 0.0
    while t < seconds - 0.1:
        dur = float(rng.choice([0.125, 0.25, 0.5, 1.0]))
        for pitch in rng.integers(40, 85, size=int(rng.integers(1, 4))):
            f = 440.0 * 2 ** ((pitch - 69) / 12)
            n = int(min(dur * 1.5, seconds - t) * sr)
            tt = np.arange(n) / sr
            tone = sum((0.6 ** k) * np.sin(2 * np.pi * f * (k + 1) * tt + rng.uniform(0, 6.28)) for k in range(6) if f * (k + 1) < sr / 2)
            env = np.minimum(1, tt / 0.005) * np.exp(-tt * rng.uniform(1.5, 4))
            start = int(t * sr)
            out[start : start + n] += 0.25 * tone * env
        t += dur
    peak = np.abs(out).max()
    return (out / peak * 0.8 if peak > 0 else out).astype(np.float32)


def wav_bytes(x: np.ndarray, sr: int) -> bytes:
    """16-bit mono WAV bytes of ``x`` (a file-type classifier input)."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes((np.clip(x, -1, 1) * 32767).astype(np.int16).tobytes())
    return buf.getvalue()
