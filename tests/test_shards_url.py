"""Shards by URL (issue 18 item 3): calibration and holdout data behind an fsspec URL, read by
whoever measures them, with the checks, errors, digests and lineage of local folders.

``memory://`` for the rules (one process); a real S3-compatible server (moto, tests/fixtures_s3.py)
for ``fp16guard stats``, ``fp16guard run`` and the per-shard cache. Nothing is mocked.
"""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fixtures_s3 import s3_server  # noqa: F401  (session fixture: moto on loopback)
from fp16guard.cli.main import main
from fp16guard.errors import DataError
from fp16guard.io import shards as data
from fp16guard.stats.collect import read_shard_stats, read_stats, write_stats

STATS_NAME_COLUMNS = ("max_shard", "nonfinite_shard")


# ----------------------------------------------------------------------------------- helpers
def _npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


@pytest.fixture
def bucket(s3_server):
    """A fresh bucket on the moto server; yields ``(name, s3fs file system)``."""
    import boto3
    import s3fs

    name = "shards-" + uuid.uuid4().hex[:12]
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=name)
    yield name, s3fs.S3FileSystem(endpoint_url=s3_server, use_listings_cache=False)


def _upload(fs, folder: str | Path, url_prefix: str) -> list[str]:
    """Put every file of a local folder under ``url_prefix`` (``bucket/key``); their keys."""
    keys = []
    for f in sorted(Path(folder).iterdir()):
        fs.pipe_file(f"{url_prefix}/{f.name}", f.read_bytes())
        keys.append(f"{url_prefix}/{f.name}")
    return keys


def _names_mapped(table, mapping: dict[str, str], columns=STATS_NAME_COLUMNS):
    """``table`` with shard names in ``columns`` replaced through ``mapping`` (URL -> local)."""
    import pyarrow as pa

    for column in columns:
        idx = table.schema.get_field_index(column)
        values = [mapping[v] if v else v for v in table.column(column).to_pylist()]  # "" or None: no shard
        table = table.set_column(idx, table.schema.field(idx), pa.array(values, pa.string()))
    return table


def _url_to_local(url_prefix: str, local_folder: str) -> dict[str, str]:
    return {f"{url_prefix}/{f.name}": str(f) for f in Path(local_folder).iterdir()}


def _assert_same_bytes_but_names(remote_stats: Path, local_stats: Path, mapping: dict[str, str], tmp: Path) -> None:
    """stats.parquet from URLs is the local one, byte for byte, once the shard names it records
    (where the max was seen) are the local names: the names are the only difference."""
    remote_table = read_stats(remote_stats)
    assert set(remote_table.column("max_shard").to_pylist()) <= set(mapping), "names are the object URLs"
    mapped = tmp / "mapped.parquet"
    write_stats(_names_mapped(remote_table, mapping), mapped)
    assert mapped.read_bytes() == local_stats.read_bytes()


# ----------------------------------------------------------------------- rules (memory://, fast)
def test_url_locations_follow_the_local_rules(tmp_path):
    """A prefix gives its .npz then .json objects, sorted, not recursing; a glob its matches; an
    object itself; a Polygraphy JSON object one shard per feed dict; the same object reached twice
    is kept once. Headers, arrays and digests are those of the same files on disk."""
    import fsspec
    from polygraphy.json import save_json

    fs = fsspec.filesystem("memory")
    root = f"/calib-{uuid.uuid4().hex[:8]}"
    local = tmp_path / "calib"
    local.mkdir()
    np.savez(local / "b.npz", x=np.arange(6, dtype=np.float32).reshape(3, 2))
    np.savez(local / "a.npz", x=np.ones((2, 2), np.float32))
    save_json([{"x": np.full((1, 2), 3.0, np.float32)}, {"x": np.full((1, 2), 4.0, np.float32)}], str(local / "feeds.json"))
    (local / "notes.txt").write_text("not a shard")
    for f in local.iterdir():
        fs.pipe_file(f"{root}/{f.name}", f.read_bytes())
    fs.pipe_file(f"{root}/deeper/c.npz", (local / "a.npz").read_bytes())  # not recursed into

    url = f"memory://{root}"
    refs = data.discover_shards([url, f"{url}/a.npz"])  # a.npz twice: kept once
    names = [r.name for r in refs]
    assert names == [f"memory://{root}/a.npz", f"memory://{root}/b.npz", f"memory://{root}/feeds.json[0]", f"memory://{root}/feeds.json[1]"]
    local_refs = data.discover_shards([str(local)])
    assert [r.name.rsplit("/", 1)[-1] for r in local_refs] == [n.rsplit("/", 1)[-1] for n in names]
    for remote_ref, local_ref in zip(refs, local_refs):
        assert data.peek_shard(remote_ref) == data.peek_shard(local_ref)
        assert data.shard_digest(remote_ref) == data.shard_digest(local_ref)
        arrays, digest = data.read_shard(remote_ref)
        assert digest == data.shard_digest(local_ref)
        np.testing.assert_array_equal(arrays["x"], data.load_shard(local_ref)["x"])
        assert data.shard_location(remote_ref) == remote_ref.path + ("" if remote_ref.index is None else f"#{remote_ref.index}")
    assert data.shard_digests(refs) == [data.shard_digest(r) for r in local_refs]
    assert [r.name for r in data.discover_shards([f"{url}/*.npz"])] == names[:2]
    # the .npz digest is the sha256 of the object's bytes (not an ETag)
    assert data.shard_digest(refs[0]) == hashlib.sha256((local / "a.npz").read_bytes()).hexdigest()
    assert data.shard_bytes(refs[0]) == (local / "a.npz").stat().st_size


def test_a_shard_changed_after_the_run_hashed_it_is_refused():
    """The digest a run keys the shard's result on is checked against the bytes read, so a
    result is never cached under the digest of other data."""
    import fsspec

    fs = fsspec.filesystem("memory")
    path = f"/changing-{uuid.uuid4().hex[:8]}/a.npz"
    fs.pipe_file(path, _npz_bytes(x=np.ones((1, 2), np.float32)))
    ref = data.discover_shards([f"memory://{path}"])[0]
    hashed = replace(ref, sha256=data.shard_digest(ref))
    assert data.read_shard(hashed)[1] == hashed.sha256
    fs.pipe_file(path, _npz_bytes(x=np.zeros((1, 2), np.float32)))
    with pytest.raises(DataError, match="changed while the run was using it"):
        data.load_shard(hashed)
    assert hashed == ref  # the digest is not part of a shard's identity


# --------------------------------------------------------------------- fp16guard stats on S3 (moto)
def test_stats_reads_s3_shards_like_the_same_files_on_disk(demo_files, bucket, tmp_path, capsys):
    name, fs = bucket
    _upload(fs, demo_files["calib"], f"{name}/calib")
    local_out, remote_out = tmp_path / "local.parquet", tmp_path / "remote.parquet"
    assert main(["stats", demo_files["model"], "--calib", demo_files["calib"], "--out", str(local_out), "--shard-stats", str(tmp_path / "local_shards.parquet")]) == 0
    assert main(["stats", demo_files["model"], "--calib", f"s3://{name}/calib", "--out", str(remote_out), "--shard-stats", str(tmp_path / "remote_shards.parquet")]) == 0
    printed = capsys.readouterr().out
    assert f"shard s3://{name}/calib/" in printed
    _assert_same_bytes_but_names(remote_out, local_out, _url_to_local(f"s3://{name}/calib", demo_files["calib"]), tmp_path)
    # the per-shard table records each object's sha256: that of the same file's bytes
    per_shard = read_shard_stats(tmp_path / "remote_shards.parquet").to_pylist()
    local_digest = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in Path(demo_files["calib"]).iterdir()}
    assert {r["shard_sha256"] for r in per_shard} == set(local_digest.values())
    assert all(r["shard_sha256"] == local_digest[r["shard"].rsplit("/", 1)[-1]] for r in per_shard)


def _bad_location(case: str, name: str, fs, demo_files) -> tuple[str, str]:
    """Set up one kind of bad URL in bucket ``name``; ``(URL, text the one-line error holds)``."""
    calib = sorted(Path(demo_files["calib"]).iterdir())
    if case == "missing bucket":
        return f"s3://{name}-missing/calib", f"bucket '{name}-missing' does not exist"
    if case == "empty prefix":
        fs.pipe_file(f"{name}/other/a.npz", calib[0].read_bytes())
        return f"s3://{name}/calib", "no object at or under it"
    if case == "no shards under the prefix":
        fs.pipe_file(f"{name}/calib/readme.txt", b"shards come later")
        return f"s3://{name}/calib", "holds no .npz or .json objects (it holds 1 other object)"
    if case == "non-shard object":
        fs.pipe_file(f"{name}/calib/readme.txt", b"not a shard")
        return f"s3://{name}/calib/readme.txt", "has suffix '.txt'; expected .npz"
    if case == "unreadable shard":
        fs.pipe_file(f"{name}/calib/a.npz", b"PK\x03\x04 truncated")
        return f"s3://{name}/calib", f"shard s3://{name}/calib/a.npz is not a readable .npz file"
    if case == "wrong dtype":
        arrays = dict(np.load(calib[0]))
        first = sorted(arrays)[0]
        arrays[first] = (arrays[first] * 100).astype(np.int32)
        fs.pipe_file(f"{name}/calib/a.npz", _npz_bytes(**arrays))
        return f"s3://{name}/calib", f"shard s3://{name}/calib/a.npz: input '{first}' has dtype int32"
    if case == "wrong shape":
        arrays = dict(np.load(calib[0]))
        first = sorted(arrays)[0]
        arrays[first] = arrays[first][..., :1]
        fs.pipe_file(f"{name}/calib/a.npz", _npz_bytes(**arrays))
        return f"s3://{name}/calib", f"shard s3://{name}/calib/a.npz: input '{first}' has shape"
    raise AssertionError(case)


BAD_CASES = ["missing bucket", "empty prefix", "no shards under the prefix", "non-shard object", "unreadable shard", "wrong dtype", "wrong shape"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_url_is_one_line_exit_2_and_writes_nothing(case, demo_files, bucket, tmp_path, capsys, monkeypatch):
    """``fp16guard stats`` and ``fp16guard run`` (before any server is contacted) refuse a bad
    URL in one line with the bad-input status, and write nothing."""
    name, fs = bucket
    url, needle = _bad_location(case, name, fs, demo_files)
    out = tmp_path / "stats.parquet"
    assert main(["stats", demo_files["model"], "--calib", url, "--out", str(out)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and needle in err[0] and "Traceback" not in err[0], err
    assert not out.exists()

    def _reached(*_a, **_k):
        raise AssertionError("the command reached the Prefect server: the bad URL was not found before the flow")

    monkeypatch.setattr("fp16guard.cli.server.ensure_api", _reached)
    store = tmp_path / "store"
    code = main(["run", demo_files["model"], "--calib", url, "--holdout", demo_files["holdout"], "--name", "m", "--model-version", "1", "--store", str(store)])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and needle in err[0], err
    assert not store.exists() or not any(store.rglob("*"))


# ------------------------------------------------------------------ the cache and the flow (moto)
def test_a_changed_remote_shard_is_the_only_one_measured_again(prefect_api_url, demo_files, bucket, tmp_path):
    """The per-shard cache is keyed on the sha256 of each object's bytes: after one object is
    replaced, the group task measures that shard alone; the others are cache hits."""
    from prefect import flow

    from fp16guard.io.model import model_digest
    from tasks.caching import code_digest
    from tasks.inputs import discover
    from tasks.stats import STATS_MODULES, shard_group_stats_task

    name, fs = bucket
    keys = _upload(fs, demo_files["calib"], f"{name}/calib")
    store = str(tmp_path / "store")
    sha, code = model_digest(demo_files["model"]), code_digest(*STATS_MODULES)

    @flow
    def measure():
        found = discover([f"s3://{name}/calib"], "calibration")
        refs = [f["shard"] for f in found]
        return found, shard_group_stats_task(store, demo_files["model"], sha, refs, [f["sha256"] for f in found], code, label="all")

    found, first = measure()
    assert [f["shard"].path for f in found] == [f"s3://{k}" for k in keys]
    assert all(f["shard"].sha256 == f["sha256"] == hashlib.sha256(fs.cat_file(k)).hexdigest() for f, k in zip(found, keys))
    assert not any(r["cached"] for r in first)

    arrays = dict(np.load(io.BytesIO(fs.cat_file(keys[1]))))
    first_input = sorted(arrays)[0]
    arrays[first_input] = arrays[first_input] * 0.5
    fs.pipe_file(keys[1], _npz_bytes(**arrays))
    found2, second = measure()
    assert [r["cached"] for r in second] == [True, False, True, True]
    assert found2[1]["sha256"] != found[1]["sha256"] and [f["sha256"] for i, f in enumerate(found2) if i != 1] == [f["sha256"] for i, f in enumerate(found) if i != 1]
    assert second[1]["computed_by"] != first[1]["computed_by"] and second[0]["computed_by"] == first[0]["computed_by"]


def _run(demo_files: dict, calib: str, holdout: str, store: Path, version: str, capsys, *extra: str) -> dict:
    code = main(["run", demo_files["model"], "--calib", calib, "--holdout", holdout, "--name", "demo", "--model-version", version, "--store", str(store), "--json", *extra])
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out.strip().splitlines()[-1])


def test_run_reads_s3_shards_by_url(prefect_api_url, demo_files, bucket, tmp_path, capsys):
    """``fp16guard run --calib s3://… --holdout s3://…``: the flow measures and verifies the
    objects by URL; its stats.parquet is that of the same shards on disk (names aside), and the
    manifest records each object's URL and the sha256 of its bytes."""
    name, fs = bucket
    _upload(fs, demo_files["calib"], f"{name}/calib")
    _upload(fs, demo_files["holdout"], f"{name}/holdout")
    summary = _run(demo_files, f"s3://{name}/calib", f"s3://{name}/holdout", tmp_path / "store", "1", capsys)
    run_dir = Path(summary["run_dir"])
    assert summary["passed"] and summary["independent"]

    local = tmp_path / "local.parquet"
    assert main(["stats", demo_files["model"], "--calib", demo_files["calib"], "--out", str(local)]) == 0
    _assert_same_bytes_but_names(run_dir / "stats.parquet", local, _url_to_local(f"s3://{name}/calib", demo_files["calib"]), tmp_path)

    manifest = json.loads((run_dir / "manifest.json").read_text())
    for role, folder in (("calibration", "calib"), ("holdout", "holdout")):
        records = manifest["inputs"][role]
        files = sorted(Path(demo_files[folder]).iterdir())
        assert [r["location"] for r in records] == [f"s3://{name}/{folder}/{f.name}" for f in files]
        assert [r["sha256"] for r in records] == [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]

    # verify-store re-hashes the inputs at their URLs: clean now, a finding once an object changes
    from fp16guard.store.audit import verify_run

    assert verify_run(str(tmp_path / "store"), "demo", "1", summary["run_id"], check_inputs=True) == []
    fs.pipe_file(f"{name}/holdout/{sorted(Path(demo_files['holdout']).iterdir())[0].name}", b"replaced")
    problems = verify_run(str(tmp_path / "store"), "demo", "1", summary["run_id"], check_inputs=True)
    assert len(problems) == 1 and f"input s3://{name}/holdout/" in problems[0] and "does not match the manifest" in problems[0], problems


@pytest.mark.slow  # two flow runs on the loaded 2-core machine
def test_run_on_s3_recomputes_a_changed_shard_alone(prefect_api_url, demo_files, bucket, tmp_path, capsys):
    """A second run after one calibration object changed: that shard is measured by the new run,
    every other comes from the first run's cache entries (manifest ``computed_by``)."""
    name, fs = bucket
    keys = _upload(fs, demo_files["calib"], f"{name}/calib")
    _upload(fs, demo_files["holdout"], f"{name}/holdout")
    store = tmp_path / "store"
    first = _run(demo_files, f"s3://{name}/calib", f"s3://{name}/holdout", store, "1", capsys)
    arrays = dict(np.load(io.BytesIO(fs.cat_file(keys[2]))))
    first_input = sorted(arrays)[0]
    arrays[first_input] = arrays[first_input] * 0.5
    fs.pipe_file(keys[2], _npz_bytes(**arrays))
    second = _run(demo_files, f"s3://{name}/calib", f"s3://{name}/holdout", store, "2", capsys)
    m1, m2 = (json.loads((Path(r["run_dir"]) / "manifest.json").read_text()) for r in (first, second))
    computed = [c["computed_by"] for c in m2["inputs"]["calibration"]]
    assert computed == [m1["flow_run"]["id"]] * 2 + [m2["flow_run"]["id"]] + [m1["flow_run"]["id"]]
    assert m2["inputs"]["calibration"][2]["sha256"] == hashlib.sha256(fs.cat_file(keys[2])).hexdigest() != m1["inputs"]["calibration"][2]["sha256"]


@pytest.mark.slow  # a local Dask cluster of two processes
def test_dask_workers_read_s3_shards_themselves(prefect_api_url, demo_files, bucket, tmp_path):
    """Worker processes of a local Dask cluster open the objects by URL (the endpoint comes from
    their environment, as on another host): the same stats.parquet as the default runner."""
    pytest.importorskip("prefect_dask")
    from flows.calibrate import calibrate
    from fp16guard.settings import RunParameters

    name, fs = bucket
    _upload(fs, demo_files["calib"], f"{name}/calib")
    _upload(fs, demo_files["holdout"], f"{name}/holdout")
    base = {"model": demo_files["model"], "calib": [f"s3://{name}/calib"], "holdout": [f"s3://{name}/holdout"], "name": "demo", "version": "1"}
    threads = calibrate(RunParameters(**base, store=str(tmp_path / "t")))
    dask = calibrate(RunParameters(**base, store=str(tmp_path / "d"), execution={"task_runner": "dask", "workers": 2, "group_samples": 8}))
    for file in ("stats.parquet", "shard_stats.parquet"):
        assert (Path(threads["run_dir"]) / file).read_bytes() == (Path(dask["run_dir"]) / file).read_bytes(), file
    manifest = json.loads((Path(dask["run_dir"]) / "manifest.json").read_text())
    assert {c["computed_by"] for c in manifest["inputs"]["calibration"]} == {manifest["flow_run"]["id"]}
