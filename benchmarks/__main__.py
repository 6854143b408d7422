"""``python -m benchmarks`` lists the benchmarks; ``python -m benchmarks NAME [args]`` runs one.

Exit status: the benchmark's own, or 2 with one line when NAME is unknown, the module lacks the
harness entry point, or a file given to it is not what it expects (``harness.results.BadInput``).
"""

from __future__ import annotations

import sys
from pathlib import Path

# So that ``python -m benchmarks`` works from any folder (the benchmarks import fp16guard, tasks).
_REPO = str(Path(__file__).resolve().parents[1])
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

from benchmarks.harness import registry  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark named by ``argv[0]`` with the rest, or list them all."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "list"):
        width = max(len(n) for n in registry.names())
        print("python -m benchmarks NAME [--help | args]; results go to benchmarks/results/\n")
        for name in registry.names():
            try:
                text = registry.summary(name)
            except registry.BenchmarkError as exc:
                text = f"(broken: {exc})"
            print(f"  {name:<{width}}  {text}")
        return 0
    try:
        module = registry.load(argv[0])
    except registry.BenchmarkError as exc:
        print(f"benchmarks: {exc}", file=sys.stderr)
        return 2
    from benchmarks.harness.results import BadInput

    try:
        return int(module.main(argv[1:]) or 0)
    except BadInput as exc:
        print(f"benchmarks {argv[0]}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
