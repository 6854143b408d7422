"""Data sources beyond .npz folders (issue 19, item 3): Polygraphy-style data-loader scripts,
Python feeds and image folders, materialised into content-addressed .npz shards
(fp16guard.io.loaders), through ``fp16guard.convert``, ``fp16guard convert`` and ``run``'s
argument parsing. Tiny models built in code; no Prefect server."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from fp16guard.errors import ConfigError, DataError
from fp16guard.io.loaders import ImageFolder, LoaderScript, materialise, parse_preprocess, read_image
from fp16guard.io.model import InputSpec
from fp16guard.io.shards import discover_shards, load_shard
from tests.conftest import run_cli
from tests.onnx_helpers import init, io, make_model

SPECS = [InputSpec("x", np.dtype("float32"), ("N", 4))]

LOADER = '''
import numpy as np

def load_data():
    rng = np.random.default_rng(1)
    for _ in range(10):
        yield {"x": rng.standard_normal((2, 4)).astype(np.float32)}

def load_holdout():
    rng = np.random.default_rng(2)
    return [{"x": rng.standard_normal((3, 4))} for _ in range(3)]  # float64: cast, as documented

def raises():
    raise RuntimeError("no dataset mounted")

def late():
    yield {"x": np.ones((1, 4), np.float32)}
    raise IOError("disk gone")

def not_dict():
    yield [np.ones((1, 4), np.float32)]

def wrong_name():
    yield {"x": np.ones((1, 4), np.float32), "mask": np.ones((1, 4), np.float32)}

def ints():
    yield {"x": np.ones((1, 4), np.int32)}

def empty():
    return []
'''


@pytest.fixture()
def mlp(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    model = make_model(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        [io("x", "N", 4)], [io("y", "N", 3)], [init("W", rng.standard_normal((4, 3)))],
    )
    path = tmp_path / "mlp.onnx"
    onnx.save(model, path)
    return path


@pytest.fixture()
def loader(tmp_path) -> Path:
    path = tmp_path / "loader.py"
    path.write_text(LOADER)
    return path


@pytest.fixture()
def conv(tmp_path) -> Path:
    """An image model: x [N, 3, 8, 8] -> Conv 3->2 (1x1) -> y."""
    rng = np.random.default_rng(0)
    model = make_model(
        [helper.make_node("Conv", ["images", "W"], ["y"])],
        [io("images", "N", 3, 8, 8)], [io("y", "N", 2, 8, 8)], [init("W", rng.standard_normal((2, 3, 1, 1)))],
    )
    path = tmp_path / "conv.onnx"
    onnx.save(model, path)
    return path


def write_png(path: Path, img: np.ndarray) -> Path:
    """A minimal 8-bit PNG (gray, RGB or RGBA), filter 'Sub' on odd rows to exercise unfiltering."""
    h, w, c = img.shape
    rows = []
    for y in range(h):
        line = img[y].reshape(-1).astype(np.int32)
        if y % 2:
            sub = line.copy()
            sub[c:] = (line[c:] - line[:-c]) % 256
            rows.append(b"\x01" + sub.astype(np.uint8).tobytes())
        else:
            rows.append(b"\x00" + line.astype(np.uint8).tobytes())

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, {1: 0, 3: 2, 4: 6}[c], 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b""))
    return path


def write_bmp(path: Path, img: np.ndarray) -> Path:
    h, w, _ = img.shape
    stride = (w * 3 + 3) // 4 * 4
    rows = b"".join(img[y, :, ::-1].tobytes().ljust(stride, b"\0") for y in range(h - 1, -1, -1))
    header = struct.pack("<2sIHHI", b"BM", 54 + len(rows), 0, 0, 54) + struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, len(rows), 0, 0, 0, 0)
    path.write_bytes(header + rows)
    return path


# ---------------------------------------------------------------------------------- the library


def test_loader_script_materialises_content_addressed_shards(tmp_path, loader):
    root = tmp_path / "data"
    [folder] = materialise(str(loader), SPECS, root, shard_samples=8)  # FILE.py alone: load_data
    files = sorted(p.name for p in Path(folder).glob("*.npz"))
    # 10 feeds of 2 samples: shards of 8, 8 and 4, in order, named by index and content hash.
    assert len(files) == 3 and [f[:6] for f in files] == ["00000-", "00001-", "00002-"]
    refs = discover_shards([folder])
    assert [load_shard(r)["x"].shape[0] for r in refs] == [8, 8, 4]
    assert Path(folder).name.startswith("loader-")
    # Same data, same bytes, same folder: caching and lineage keep working.
    before = {f: (Path(folder) / f).read_bytes() for f in files}
    assert materialise(LoaderScript(str(loader)), SPECS, root, shard_samples=8) == [folder]
    assert {f: (Path(folder) / f).read_bytes() for f in files} == before
    # The arrays are the loader's, concatenated.
    rng = np.random.default_rng(1)
    expected = np.concatenate([rng.standard_normal((2, 4)).astype(np.float32) for _ in range(10)])
    assert np.array_equal(np.concatenate([load_shard(r)["x"] for r in refs]), expected)


def test_callable_iterable_and_shape_groups(tmp_path):
    def feeds():
        yield {"x": np.ones((1, 4), np.float32)}
        yield {"x": np.ones((1, 4), np.float32)}

    [folder] = materialise(feeds, SPECS, tmp_path / "d")
    assert [load_shard(r)["x"].shape for r in discover_shards([folder])] == [(2, 4)]
    # Consecutive feeds of other shapes start a new shard (here: a different sequence length).
    specs = [InputSpec("t", np.dtype("float32"), ("N", "T"))]
    data = [{"t": np.zeros((1, 3), np.float32)}, {"t": np.zeros((1, 3), np.float32)}, {"t": np.zeros((1, 5), np.float32)}]
    [folder] = materialise(data, specs, tmp_path / "e")
    assert [load_shard(r)["t"].shape for r in discover_shards([folder])] == [(2, 3), (1, 5)]


def test_preprocess_syntax():
    got = parse_preprocess("size=224x200,layout=NHWC,scale=1/255,mean=0.485,0.456,0.406,std=0.229,0.224,0.225,input=images,resize=crop")
    assert got == {"size": (224, 200), "layout": "NHWC", "scale": 1 / 255, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "input": "images", "resize": "crop"}
    for bad in ("size=big", "colour=RGB", "224x224", "scale=1/0"):
        with pytest.raises(ConfigError) as info:
            parse_preprocess(bad)
        assert "\n" not in str(info.value) and "expected" in str(info.value)


def test_image_decoders_without_pillow(tmp_path):
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    assert np.array_equal(read_image(write_png(tmp_path / "a.png", img)), img)
    assert np.array_equal(read_image(write_bmp(tmp_path / "a.bmp", img)), img)
    (tmp_path / "a.ppm").write_bytes(b"P6\n# comment\n7 5\n255\n" + img.tobytes())
    assert np.array_equal(read_image(tmp_path / "a.ppm"), img)
    gray = img[:, :, :1]
    (tmp_path / "a.pgm").write_bytes(b"P5 7 5 255\n" + gray.tobytes())
    assert np.array_equal(read_image(tmp_path / "a.pgm"), gray)
    (tmp_path / "a.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    try:
        import PIL  # noqa: F401
    except ImportError:
        with pytest.raises(DataError, match="pip install pillow") as info:
            read_image(tmp_path / "a.jpg")
        assert "\n" not in str(info.value)


def test_image_folder_preprocessing(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(4)
    imgs = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(3)]
    write_png(folder / "a.png", imgs[0])
    (folder / "b.ppm").write_bytes(b"P6 8 8 255\n" + imgs[1].tobytes())
    write_bmp(folder / "c.bmp", imgs[2])
    (folder / "labels.txt").write_text("ignored")
    specs = [InputSpec("images", np.dtype("float32"), ("N", 3, 8, 8))]
    source = ImageFolder.from_spec(folder, "mean=0.5,0.5,0.5,std=0.25")
    [out] = materialise(source, specs, tmp_path / "data")
    [ref] = discover_shards([out])
    x = load_shard(ref)["images"]
    expected = np.stack([(i.astype(np.float64) / 255 - 0.5) / 0.25 for i in imgs]).transpose(0, 3, 1, 2).astype(np.float32)
    assert x.shape == (3, 3, 8, 8) and np.allclose(x, expected, atol=1e-6)
    # Resized to the input's static size; NHWC and gray; BGR swaps channels.
    big = tmp_path / "big"
    big.mkdir()
    write_png(big / "a.png", np.full((16, 12, 3), 200, np.uint8))
    [out] = materialise(ImageFolder(big, channels="BGR"), specs, tmp_path / "data")
    assert np.allclose(load_shard(discover_shards([out])[0])["images"], 200 / 255)
    nhwc = [InputSpec("images", np.dtype("float32"), ("N", 4, 4, 1))]
    [out] = materialise(ImageFolder(big, layout="NHWC", channels="L", scale=1.0), nhwc, tmp_path / "data")
    assert load_shard(discover_shards([out])[0])["images"].shape == (1, 4, 4, 1)


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and "Traceback" not in text, text
    return text


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("missing.py:load_data", "does not exist; expected a Python file"),
        ("loader.py:nothing", "has no function 'nothing' (it defines"),
        ("loader.py:raises", "raised RuntimeError: no dataset mounted; expected it to return"),
        ("loader.py:late", "raised OSError: disk gone while producing feed 1"),
        ("loader.py:not_dict", "feed 0 is a list; expected a feed dict"),
        ("loader.py:wrong_name", "has array(s) 'mask' that are not inputs of the model; expected the model's inputs 'x'"),
        ("loader.py:ints", "integer data for a float input is refused"),
        ("loader.py:empty", "yielded no feed dicts"),
    ],
)
def test_loader_refusals_are_one_line_and_write_nothing(tmp_path, loader, spec, expected):
    root = tmp_path / "data"
    with pytest.raises(DataError) as info:
        materialise(str(tmp_path / spec), SPECS, root)
    assert expected in _one_line(info.value)
    assert not root.exists()


def test_image_refusals(tmp_path):
    specs = [InputSpec("images", np.dtype("float32"), ("N", 3, 8, 8))]
    with pytest.raises(DataError, match="does not exist; expected a folder of images") as info:
        materialise(ImageFolder(tmp_path / "nope"), specs, tmp_path / "data")
    _one_line(info.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no image file") as info:
        materialise(ImageFolder(tmp_path / "empty"), specs, tmp_path / "data")
    two = [*specs, InputSpec("scale", np.dtype("float32"), ())]
    with pytest.raises(ConfigError, match="expected input=NAME") as info:
        materialise(ImageFolder(tmp_path / "empty"), two, tmp_path / "data")
    with pytest.raises(ConfigError, match="expected 1 or 3"):
        ImageFolder(tmp_path, mean=(0.1, 0.2))
    assert not (tmp_path / "data").exists()


# ---------------------------------------------------------------------------- convert and run


def test_convert_with_loader_script_and_callable(tmp_path, mlp, loader):
    import fp16guard

    out = tmp_path / "m16.onnx"
    result = fp16guard.convert(mlp, f"{loader}:load_data", LoaderScript(str(loader), "load_holdout"), output=out, workdir=tmp_path / "w")
    assert result.verified and out.exists() and result.holdout == "given"
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "w" / "data").iterdir()) == ["loader", "loader"]

    rng = np.random.default_rng(5)
    feeds = [{"x": rng.standard_normal((2, 4)).astype(np.float32)} for _ in range(10)]
    result = fp16guard.convert(mlp, lambda: iter(feeds), None, output=tmp_path / "m16b.onnx")
    assert result.verified and "holdout split from calibration" in result.holdout


def test_convert_refuses_bad_loader_before_work(tmp_path, mlp, loader):
    import fp16guard

    with pytest.raises(DataError) as info:
        fp16guard.convert(mlp, f"{loader}:wrong_name", output=tmp_path / "o.onnx", workdir=tmp_path / "w")
    assert "not inputs of the model" in _one_line(info.value)
    assert not (tmp_path / "o.onnx").exists() and not (tmp_path / "w" / "data").exists()


def test_convert_with_image_folder(tmp_path, conv):
    import fp16guard

    rng = np.random.default_rng(6)
    for role, n in (("calib", 4), ("holdout", 2)):
        (tmp_path / role).mkdir()
        for i in range(n):
            write_png(tmp_path / role / f"{i}.png", rng.integers(0, 256, (10, 10, 3), dtype=np.uint8))
    pre = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    result = fp16guard.convert(conv, ImageFolder(tmp_path / "calib", **pre), ImageFolder(tmp_path / "holdout", **pre), output=tmp_path / "c16.onnx")
    assert result.verified and (tmp_path / "c16.onnx").exists()


def test_cli_convert_with_loader_script(tmp_path, mlp, loader):
    out = tmp_path / "m16.onnx"
    proc = run_cli(["convert", str(mlp), "--data-loader-script", str(loader), "--holdout-loader-script", f"{loader}:load_holdout", "-o", str(out), "--shard-samples", "4"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("VERIFIED") and out.exists()
    bad = run_cli(["convert", str(mlp), "--data-loader-script", f"{loader}:not_dict", "-o", str(tmp_path / "x.onnx")])
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "feed 0 is a list" in bad.stderr and not (tmp_path / "x.onnx").exists()
    none = run_cli(["convert", str(mlp), "-o", str(tmp_path / "x.onnx")])
    assert none.returncode == 2 and "--data-loader-script" in none.stderr and len(none.stderr.strip().splitlines()) == 1


def test_run_arguments_materialise_under_the_store(tmp_path, mlp, loader, conv):
    from fp16guard.cli.commands.run import parameters_from_args
    from fp16guard.cli.main import build_parser

    store = tmp_path / "store"
    argv = ["run", str(mlp), "--data-loader-script", f"{loader}:load_data", "--holdout-loader-script", f"{loader}:load_holdout",
            "--name", "m", "--version", "1", "--store", str(store), "--shard-samples", "5"]
    params = parameters_from_args(build_parser().parse_args(argv))
    [calib], [holdout] = params.calib, params.holdout
    assert Path(calib).parent == store / ".data" and Path(holdout).parent == store / ".data"
    assert len(discover_shards([calib])) == 4  # 20 samples in shards of 5
    # A bad holdout source writes nothing, the calibration source included.
    store2 = tmp_path / "store2"
    argv2 = [*argv[:5], f"{loader}:raises", *argv[6:-4], "--store", str(store2)]
    with pytest.raises(DataError, match="raised RuntimeError"):
        parameters_from_args(build_parser().parse_args(argv2))
    assert not store2.exists()
    # Image folders and --preprocess parse; paths alone do not touch the model.
    (tmp_path / "imgs").mkdir()
    write_png(tmp_path / "imgs" / "a.png", np.zeros((8, 8, 3), np.uint8))
    write_png(tmp_path / "imgs" / "b.png", np.ones((8, 8, 3), np.uint8))
    argv3 = ["run", str(conv), "--calib-images", str(tmp_path / "imgs"), "--holdout", "h/", "--preprocess", "scale=1/255,mean=0.5,std=0.5",
             "--name", "c", "--version", "1", "--store", str(store)]
    params = parameters_from_args(build_parser().parse_args(argv3))
    assert Path(params.calib[0]).name.startswith("images-") and params.holdout == ["h/"]
    with pytest.raises(DataError, match="no holdout data given"):
        parameters_from_args(build_parser().parse_args(["run", "m.onnx", "--calib", "c/", "--name", "n", "--version", "1"]))


def test_run_help_lists_the_sources():
    proc = run_cli(["run", "--help"])
    assert proc.returncode == 0
    for flag in ("--data-loader-script", "--holdout-loader-script", "--calib-images", "--preprocess", "--shard-samples"):
        assert flag in proc.stdout
