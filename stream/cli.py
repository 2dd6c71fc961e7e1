"""The `segstream` command: argparse front, one module per subcommand (stream.commands)."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from engines.errors import SegstreamError
from stream import __version__
from stream.commands import COMMANDS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segstream",
        description="Real-time video semantic segmentation: run pipelines, publish masks, "
        "train/evaluate/export/compile models.",
    )
    parser.add_argument("--version", action="version", version=f"segstream {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, modname in COMMANDS:
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as e:
            if e.name == modname:  # command not built yet: leave it out rather than break --help
                continue
            raise
        p = sub.add_parser(name, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP))
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["run"] and not {"-h", "--help"} & set(argv):
        # stages are forked from a template process that imports numpy, cv2, av, ... once: start it
        # before anything else (even building the parser) so that its imports overlap all of the run's
        # own preparation (stream.launch)
        from stream.launch import prestart

        try:
            prestart()
        except SegstreamError as e:  # e.g. SEGSTREAM_LAUNCHER names no launcher: one line, no traceback
            print(f"segstream run: error: {e}", file=sys.stderr)
            return 2
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
    except SystemExit:
        _shutdown_launcher(argv[:1])
        raise
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except SegstreamError as e:
        print(f"segstream {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"segstream {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    finally:
        _shutdown_launcher([args.command])


def entry() -> None:
    """The `segstream` console script (and ``python -m stream``): ``main`` as a process.

    After a pipeline run the interpreter's own teardown is skipped: exit handlers run and the output
    is flushed, then the process ends. That teardown is a last garbage collection over every numpy,
    OpenCV, PyAV and pyzmq object the supervisor imported, 25-35 ms measured, all of it after the run's
    work is done (its files are closed by then: the stages wrote them, and the supervisor's own are
    written whole). Other commands exit normally."""
    argv = sys.argv[1:]
    code = main(argv)
    if argv[:1] != ["run"]:
        raise SystemExit(code)
    import atexit
    import os

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken pipe: nothing left to lose
            pass
    os._exit(code)


def _shutdown_launcher(command: list[str]) -> None:
    if command == ["run"]:
        from stream.launch import shutdown

        shutdown()


if __name__ == "__main__":
    raise SystemExit(main())
