"""The ``lucidic-otel`` command: argument parsing and dispatch to the commands.

Local-first means the store holds every span even with no API key, so the first thing a new
user can do after ``opentelemetry-instrument python app.py`` is ``lucidic-otel sessions``.
The commands live beside this module: :mod:`.views` (``sessions``, ``show``),
:mod:`.doctor_view` (``doctor``), :mod:`.upload`, :mod:`.ui` and the demo, the last three
imported only when they run. The commands only read: they open the store read-only first
(:mod:`.store_access`) and refuse, in one line, a path that is not a readable store.

Every failure is one line on stderr and a non-zero exit status: 1 for errors, 2 for usage
errors and for commands that are not part of this installation. Never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import Callable, List, Optional

from lucidic_otel.cli.doctor_view import cmd_doctor
from lucidic_otel.cli.store_access import CommandError, store_path_for
from lucidic_otel.cli.text import one_line
from lucidic_otel.cli.views import cmd_sessions, cmd_show
from lucidic_otel.config import DEFAULT_UPLOAD_DEADLINE_S, load_settings
from lucidic_otel.version import __version__

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_UPLOAD_DEADLINE_S", "PROG", "CommandError", "__version__", "build_parser",
           "main"]

PROG = "lucidic-otel"
DEFAULT_LIMIT = 50


# -------------------------------------------------------------------- demo and upload


def _delegate(module: str, function: str, what: str) -> Callable[[argparse.Namespace], int]:
    """A command implemented in another module, imported only when it runs (it may pull in
    heavier dependencies, and may be absent from this installation)."""

    def run(args: argparse.Namespace) -> int:
        try:
            target = getattr(importlib.import_module(module), function)
        except (ImportError, AttributeError) as exc:
            raise CommandError(
                f"the '{what}' command is not available in this installation ({exc})", status=2
            ) from exc
        status = target(args)
        return 0 if status is None else int(status)

    return run


# ------------------------------------------------------------------------------- parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


class _CommandParser(argparse.ArgumentParser):
    """A command's parser, for which an argument it does not know is its own usage error.

    argparse hands a command's unknown arguments back to the top-level parser, whose error
    shows the top-level usage (``lucidic-otel [-h] ... COMMAND``) instead of the options of
    the command that was mistyped.
    """

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[no-untyped-def]
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


def _store_option(help_text: str) -> argparse.ArgumentParser:
    option = argparse.ArgumentParser(add_help=False)
    option.add_argument("--store", metavar="PATH", default=argparse.SUPPRESS, help=help_text)
    return option


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; ``--store`` is accepted before or after the command name."""
    default = "default: $LUCIDIC_STORE_PATH or the XDG data directory"
    store_option = _store_option(f"the local store to read ({default})")
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Look at the Lucidic sessions recorded on this machine, and check the set-up.",
        parents=[_store_option(f"the local store ({default}; demo: a temporary one)")],
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=_CommandParser
    )

    sessions = commands.add_parser(
        "sessions", parents=[store_option], help="list recorded sessions, newest first"
    )
    sessions.add_argument("--limit", type=_positive_int, default=DEFAULT_LIMIT, metavar="N",
                          help=f"show at most N sessions (default {DEFAULT_LIMIT})")
    sessions.add_argument("--json", action="store_true", help="print a JSON array")
    sessions.set_defaults(handler=cmd_sessions)

    show = commands.add_parser(
        "show", parents=[store_option], help="show one session's spans as a tree"
    )
    show.add_argument("session_id", metavar="SESSION_ID")
    show.add_argument("--json", action="store_true", help="print session, spans and events")
    show.set_defaults(handler=cmd_show)

    doctor = commands.add_parser(
        "doctor", parents=[store_option], help="check the configuration and where data goes"
    )
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    doctor.set_defaults(handler=cmd_doctor)

    demo = commands.add_parser(
        "demo", help="run the two-service demo offline",
        parents=[_store_option(
            "record the demo into PATH, and keep it there (default: a temporary store, "
            "deleted afterwards unless --keep)"
        )],
    )
    demo.add_argument("--keep", action="store_true", help="keep the temporary store")
    demo.set_defaults(handler=_delegate("lucidic_otel.demo.run", "main", "demo"))

    upload = commands.add_parser(
        "upload", parents=[store_option], help="deliver what the outbox still holds"
    )
    upload.add_argument(
        "--deadline", type=_positive_seconds, default=DEFAULT_UPLOAD_DEADLINE_S,
        metavar="SECONDS", help=f"give up after SECONDS (default {DEFAULT_UPLOAD_DEADLINE_S:g})",
    )
    upload.add_argument("--json", action="store_true", help="print the result as JSON")
    upload.set_defaults(handler=_delegate("lucidic_otel.cli.upload", "run", "upload"))

    ui = commands.add_parser(
        "ui", parents=[store_option], help="browse the sessions in a local, read-only web page"
    )
    ui.add_argument("--port", type=int, default=0, metavar="N",
                    help="port to listen on (default: a free one)")
    ui.add_argument("--host", default="127.0.0.1", metavar="ADDRESS",
                    help="address to listen on (default 127.0.0.1; anything but loopback "
                         "needs --allow-remote)")
    ui.add_argument("--allow-remote", action="store_true",
                    help="allow a --host that is not loopback (prints a warning)")
    ui.add_argument("--no-browser", action="store_true", help="do not open a browser")
    ui.add_argument("--session", metavar="SESSION_ID", help="print and open this session's page")
    ui.set_defaults(handler=_delegate("lucidic_otel.cli.ui.server", "run", "ui"))
    return parser


def _safe_streams() -> None:
    """Never fail on a character the terminal's encoding cannot show."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            try:
                reconfigure(errors="backslashreplace")
            except (ValueError, OSError):
                pass


def _fail(message: str) -> None:
    try:
        print(f"{PROG}: {one_line(message)}", file=sys.stderr)
    except (OSError, ValueError):
        pass


def _resolve_store(args: argparse.Namespace) -> None:
    """Set ``args.store`` to the path the command reads and ``args.store_option`` to what
    ``--store`` said (``doctor`` reports where the path came from)."""
    store = getattr(args, "store", None)
    args.store_option = store
    if store is not None or args.command != "demo":  # the demo uses a temporary store
        args.store = store_path_for(load_settings(), store)


def main(argv: Optional[List[str]] = None) -> int:
    """The console script. Returns the exit status; never lets a traceback out."""
    _safe_streams()
    try:
        args = build_parser().parse_args(argv)
        _resolve_store(args)
        return args.handler(args)
    except SystemExit as exc:  # argparse: --help, --version, usage errors (already printed)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    except CommandError as exc:
        _fail(str(exc))
        return exc.status
    except KeyboardInterrupt:
        _fail("interrupted")
        return 130
    except BrokenPipeError:
        # The reader went away (`lucidic-otel sessions | head`): not an error worth a line.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 1
    except Exception as exc:  # noqa: BLE001 - the promise: one line, never a traceback
        _fail(f"error: {type(exc).__name__}: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
