"""Strict mode under the launcher, and the one boundary every launcher plug-in runs inside.

Why a boundary of its own: the launcher catches every exception from a distro, configurator or
hook, prints it and skips *all* instrumentation, so none of ours may raise; except in strict
mode (``LUCIDIC_STRICT=true``), where the user asked for a bad setting to stop the program,
which the launcher would otherwise turn into an uninstrumented run with status 0.
"""

from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from typing import Iterator, NoReturn

from lucidic_otel.config import ConfigError

logger = logging.getLogger(__name__)

STRICT_EXIT_STATUS = 2


def stop_for_strict_mode(error: ConfigError) -> NoReturn:
    """``LUCIDIC_STRICT=true`` under the launcher: the program does not run.

    This runs in the launched interpreter's start-up (``sitecustomize``), before any of the
    program's code, where ``SystemExit`` would only give "Fatal Python error": say it in one
    line and exit now.
    """
    try:
        sys.stderr.write(
            f"lucidic-otel: {error}; the program was not started (exit status "
            f"{STRICT_EXIT_STATUS}). Fix the variable or unset LUCIDIC_STRICT.\n"
        )
        sys.stderr.flush()
    finally:
        os._exit(STRICT_EXIT_STATUS)


@contextmanager
def plugin_boundary(failure: str) -> Iterator[None]:
    """Run a plug-in's work: a strict-mode error stops the program, any other is logged.

    Args:
        failure: what to log when the block raises ("the distro could not apply its
            defaults"), after ``lucidic-otel:``, with the traceback.
    """
    try:
        yield
    except ConfigError as exc:
        stop_for_strict_mode(exc)
    except Exception:  # noqa: BLE001 - the launcher would skip all instrumentation
        logger.exception("lucidic-otel: %s", failure)
