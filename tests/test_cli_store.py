"""CLI: history, show and verify-store on a local folder and on a real S3-compatible server."""

from __future__ import annotations

import json

import pytest

from fixtures_s3 import commit_run, s3_root, s3_server  # noqa: F401
from fp16guard.cli.main import main
from fp16guard.store.runs import Store


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    return str(tmp_path / "store") if request.param == "local" else request.getfixturevalue("s3_root")


@pytest.fixture
def two_runs(root):
    """Version 7 of 'net': run a released, run b verified later (not released), run c rejected."""
    store = Store(root)
    commit_run(store, "net", "7", "a", rel_error=0.004)
    store.release("net", "7", "a")
    commit_run(store, "net", "7", "b", rel_error=0.002, trigger="event")
    assert not store.release("net", "7", "b").released
    commit_run(store, "net", "7", "c", passed=False, fp32=5, rel_error=0.5, trigger="schedule")
    return root


def test_history_table_and_json(two_runs, capsys):
    assert main(["history", "net", "--store", two_runs]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[2]: line for line in out.splitlines() if line.startswith("2026")}
    assert set(lines) == {"a", "b", "c"}
    assert "RELEASED" in lines["a"] and "RELEASED" not in lines["b"]
    assert "rejected" in lines["c"] and "schedule" in lines["c"] and " 5 " in lines["c"]
    assert "releases of net/7:" in out and "first verified run" in out

    assert main(["history", "net", "--model-version", "7", "--json", "--store", two_runs]) == 0
    data = json.loads(capsys.readouterr().out)
    runs = {r["run_id"]: r for r in data["runs"]}
    assert runs["a"]["released"] == "current" and runs["b"]["trigger"] == "event"
    assert runs["b"]["worst_rel_error"] == pytest.approx(0.002) and runs["c"]["status"] == "rejected"
    assert [r["run_id"] for r in data["releases"]["7"]] == ["a"]


def test_promote_then_history_keeps_previous(two_runs, capsys):
    Store(two_runs).release("net", "7", "b", promote=True)
    main(["history", "net", "--json", "--store", two_runs])
    data = json.loads(capsys.readouterr().out)
    assert {r["run_id"]: r["released"] for r in data["runs"]} == {"a": "previous", "b": "current", "c": ""}


def test_show_release_and_run(two_runs, capsys):
    assert main(["show", "net", "--model-version", "7", "--store", two_runs]) == 0
    out = capsys.readouterr().out
    assert out.startswith("run net/7/a: verified (current release)")
    assert '"trigger"' in out and '"max_rel_error": 0.004' in out
    assert main(["show", "net", "7", "--run", "c", "--store", two_runs]) == 0
    assert "rejected (not released)" in capsys.readouterr().out


def test_show_errors_are_one_line(two_runs, capsys):
    assert main(["show", "net", "8", "--store", two_runs]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fp16guard: error: net/8 has no release") and err.count("\n") == 1
    assert main(["show", "net", "7", "--run", "zzz", "--store", two_runs]) == 2
    assert main(["show", "../etc", "7", "--store", two_runs]) == 2
    assert main(["history", "nobody", "--store", two_runs]) == 2


def test_verify_store_ok_then_tampered(two_runs, capsys):
    assert main(["verify-store", "net", "7", "--store", two_runs]) == 0
    assert "all 4 recorded files match" in capsys.readouterr().out
    Store(two_runs).fs.write_bytes("net/7/runs/a/plan.json", b"{}")
    assert main(["verify-store", "net", "7", "--store", two_runs]) == 1
    out = capsys.readouterr().out
    assert "problem(s)" in out and "plan.json: sha256" in out
    assert main(["verify-store", "net", "7", "--run", "b", "--store", two_runs]) == 0


def test_store_from_environment(two_runs, monkeypatch, capsys):
    monkeypatch.setenv("FP16GUARD_STORE", two_runs)
    assert main(["verify-store", "net", "7", "--run", "c"]) == 0


@pytest.mark.parametrize("root", ["local"], indirect=True)
def test_model_version_spellings(two_runs, capsys):
    """--model-version everywhere; the earlier spellings (positional VERSION, --version) still parse."""
    assert main(["verify-store", "net", "--model-version", "7", "--store", two_runs]) == 0
    assert main(["verify-store", "net", "7", "--store", two_runs]) == 0
    assert main(["history", "net", "--version", "7", "--store", two_runs]) == 0
    capsys.readouterr()
    assert main(["show", "net", "7", "--model-version", "8", "--store", two_runs]) == 2
    assert "given twice" in capsys.readouterr().err
    assert main(["show", "net", "--store", two_runs]) == 2
    assert "--model-version" in capsys.readouterr().err


def test_history_and_release_speak_one_vocabulary(two_runs, capsys, monkeypatch):
    # Issue 19 item 6: verified / rejected everywhere, no API internals, no "None" for a missing version.
    assert main(["history", "net", "--store", two_runs]) == 0
    out = capsys.readouterr().out
    assert "verified" in out and "rejected" in out
    assert not any(word in out.lower().split() for word in ("passed", "failed"))
    reason = Store(two_runs).release("net", "7", "b").reason
    assert "--promote" in reason and "promote=True" not in reason
    monkeypatch.setattr("fp16guard.store.audit.history", lambda *a, **k: [])
    assert main(["history", "net", "--store", two_runs]) == 0
    out = capsys.readouterr().out
    assert out.startswith("net: no runs in ") and "None" not in out


def test_history_reads_old_status_words():
    from fp16guard.store.audit import _STATUS_WORDS

    assert _STATUS_WORDS["passed"] == "verified" and _STATUS_WORDS["failed"] == "rejected"
