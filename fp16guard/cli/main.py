"""The ``fp16guard`` command line: a thin dispatcher over ``fp16guard.cli.commands.*``.

Each command module exposes ``register(subparsers)``, which adds its parser and sets
``func(args) -> int``. Command modules import heavy libraries (prefect, onnxruntime, pyarrow)
inside ``func``, so ``fp16guard stats`` never pays for importing Prefect.

Exit status: 0 success / verified, 1 verification failed, 2 bad input (one line on stderr,
no traceback, no artifact), 3 environment failure (Prefect server or store unavailable; one line).
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: Command modules, in the order ``--help`` lists them.
COMMANDS = ("run", "convert", "stats", "demo", "history", "show", "verify_store", "register", "server")


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every available command registered."""
    from fp16guard import __version__
    from fp16guard.cli.common import EXIT_STATUS_HELP

    parser = _Parser(
        prog="fp16guard",
        description="Find FP16 overflow on real data, keep those nodes in FP32, verify against FP32.",
        epilog=EXIT_STATUS_HELP,
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"fp16guard {__version__} (a model's version is --model-version)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"fp16guard.cli.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"fp16guard.cli.commands.{name}":
                continue  # command not built yet
            raise
        module.register(sub)
    # Every command's --help has a description and lists the exit statuses.
    helps = {action.dest: action.help for action in sub._choices_actions}
    for name, command in sub.choices.items():
        command.formatter_class = _HelpFormatter
        command.epilog = EXIT_STATUS_HELP
        if not command.description:
            command.description = helps.get(name)
    return parser


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (exit 2), not a usage dump; the command's
    parsers inherit it (argparse builds subparsers with the parent's class)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


class _HelpFormatter(argparse.HelpFormatter):
    """Wraps descriptions as usual but keeps the exit-status table's line breaks."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("exit status:"):
            return "\n".join(indent + line for line in text.splitlines())
        return super()._fill_text(text, width, indent)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script. Returns (and exits with) the exit status."""
    from fp16guard.errors import EnvironmentFailure, UserError

    parser = build_parser()
    args = parser.parse_args(argv)  # argparse itself exits 2 with one usage line on bad flags
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code = int(args.func(args) or 0)
    except (UserError, EnvironmentFailure) as exc:
        print(f"fp16guard: error: {exc}", file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt:
        print("fp16guard: interrupted", file=sys.stderr)
        code = 130
    except BrokenPipeError:
        # The reader went away (``fp16guard show ... | head``): not an error of ours. Point
        # stdout at /dev/null so the interpreter's final flush does not raise again.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    except OSError as exc:
        # A full disk, a read-only or missing mount met while writing run files (the store's
        # own calls already raise StoreIOError): the environment failed, one line, status 3.
        from fp16guard.store.fs import ENVIRONMENT_ERRNOS, describe_os_error

        if exc.errno not in ENVIRONMENT_ERRNOS:
            raise
        print(f"fp16guard: error: cannot write {exc.filename or 'a file'}: {describe_os_error(exc)}", file=sys.stderr)
        code = EnvironmentFailure.exit_code
    sys.exit(code) if argv is None else None
    return code


if __name__ == "__main__":
    main()
