"""``fp16guard verify-store NAME --model-version V [--run ID] [--inputs] [--store S]``: re-check recorded hashes.

Re-hashes every file of the release (or of ``--run``) against ``status.json`` and the manifest's
``outputs``; with ``--inputs`` also the model and data files the manifest names. Exit 0 when
everything matches, 1 listing each problem, 2 when the run does not exist.
"""

from __future__ import annotations

import argparse

from fp16guard.cli.common import add_run_selection, model_version


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``verify-store`` command."""
    p = sub.add_parser(
        "verify-store",
        help="re-hash a stored run and compare with its recorded hashes",
        description="Re-hash every file of the release (or of --run) against status.json and the manifest; with --inputs also the model and data files the manifest names. Exit 1 lists each mismatch.",
    )
    add_run_selection(p)
    p.add_argument("--inputs", action="store_true", help="also re-hash the input model and data files named in the manifest")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Print the verdict; returns 0 (all match) or 1 (problems)."""
    from fp16guard.store.audit import verify_run
    from fp16guard.store.runs import Store

    args.model_version = model_version(args)
    store = Store(args.store)
    run_id = args.run_id or (store.current_release(args.name, args.model_version) or {}).get("run_id")
    # Damaged records (status.json, release records, manifest) come back as problems: exit 1.
    problems = verify_run(store, args.name, args.model_version, run_id, check_inputs=args.inputs)
    where = f"{args.name}/{args.model_version}/{run_id or '(release)'}"
    if problems:
        print(f"{where}: {len(problems)} problem(s)")
        for p in problems:
            print(f"  {p}")
        return 1
    status = store.run_status(args.name, args.model_version, run_id)
    print(f"{where}: all {len(status.get('files', {}))} recorded files match")
    return 0
