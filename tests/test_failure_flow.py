"""Bad input met inside the flow leaves nothing behind: no run, no staging folder, no cache
entry or payload for the failed work, no lock."""

from __future__ import annotations

import json

import pytest

from fp16guard.errors import NonFiniteError
from fp16guard.settings import RunParameters
from conftest import calib_with_nan


def test_bad_shard_inside_the_flow_leaves_no_cache_entry_lock_or_staging(prefect_api_url, demo_files, tmp_path):
    from flows.calibrate import calibrate

    bad = tmp_path / "bad"
    calib_with_nan(demo_files["calib"], bad, index=0)
    store = tmp_path / "store"
    params = RunParameters(model=demo_files["model"], calib=[str(bad)], holdout=[demo_files["holdout"]], name="demo", version="1", store=str(store))
    with pytest.raises(NonFiniteError):
        calibrate(params)  # the flow itself (no CLI preflight): the shard task meets the NaN

    version = store / "demo" / "1"
    assert not (version / "runs").exists() or not any((version / "runs").iterdir())
    assert not (version / ".staging").exists(), "no staging folder, not even an empty .staging/"
    cache = store / ".cache" / "stats"
    records = sorted((cache / "records").iterdir()) if (cache / "records").exists() else []
    payloads = sorted(p for p in (cache / "results").rglob("*") if p.is_file()) if (cache / "results").exists() else []
    # Only shards that succeeded may be cached, each as a data payload named by its record;
    # the failure itself (a pickled exception before) is not stored.
    assert len(records) <= 3
    referenced = {json.loads(r.read_text())["storage_key"] for r in records}
    assert {p.name for p in payloads} <= referenced, "a payload no record names: the failure was stored"
    assert all(p.read_bytes().startswith(b"{") for p in payloads)
    locks = store / ".cache" / "locks"
    assert not list(locks.rglob("*.lock")), "no lock is left behind"
