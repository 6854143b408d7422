"""Shards measured by several one-thread sessions at once give the bytes one session gives.

``fp16guard stats`` and :func:`fp16guard.convert` measure shards through
:func:`fp16guard.stats.parallel.measure_shards`; the flow's groups rely on the same property.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from fp16guard import examples
from fp16guard.errors import DataError
from fp16guard.io.shards import discover_shards
from fp16guard.stats.collect import write_stats_files
from fp16guard.stats.parallel import measure_shards


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("parallel")
    model = examples.save_model("demo", root / "demo.onnx")
    examples.write_shards("demo", root / "calib", 7, 3, seed=5)
    return str(model), discover_shards([str(root / "calib")])


def _digest(tables, path) -> str:
    write_stats_files(tables, path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_any_number_of_sessions_gives_the_same_stats_bytes_in_shard_order(demo, tmp_path):
    model, refs = demo
    seen = []
    one, _ = measure_shards(model, refs, workers=1)
    reference = _digest(one, tmp_path / "one.parquet")
    for workers in (2, 4, 16):
        tables, used = measure_shards(model, refs, workers=workers, on_shard=seen.append)
        assert used == ["CPUExecutionProvider"]
        assert [t.column("shard")[0].as_py() for t in tables] == [t.column("shard")[0].as_py() for t in one]
        assert _digest(tables, tmp_path / f"w{workers}.parquet") == reference, workers
    assert sorted(seen) == sorted([r.name for r in refs] * 3)


def test_the_first_bad_shard_in_order_is_the_error(demo, tmp_path):
    model, refs = demo
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((2, 3), np.float32))  # not the model's input
    with pytest.raises(DataError, match=r"bad\.npz has no input 'pressure' \(it has \['x'\]\)"):
        measure_shards(model, [*refs[:3], *discover_shards([str(bad)]), *refs[3:]], workers=3)
