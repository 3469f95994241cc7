"""The launcher's at-fork hooks and the ``os._exit`` that flushes first, each installed once.

Why one place: a forked child inherits the parent's threads' state but not its threads, so
every piece of process-wide state of the launcher (SIGTERM handling, the session registry, the
flushing ``os._exit``) must be reset in the child, in a known order, after the SDK's own hooks.
Before this module each piece registered its own hook; here :func:`add` collects them and
:func:`install` registers one ``os.register_at_fork`` that runs them in the order added.

``os._exit`` matters because fork and forkserver children (multiprocessing, pre-fork servers)
end with it, which skips ``atexit`` and with it the exit sequence: :func:`flush_before_os_exit`
makes it run the flush first (bounded), so the documented worker patterns lose nothing.
(The SDK's own components and lucidic's SDK plug-ins reset themselves: they also run without
the launcher.)
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, List, Optional

logger = logging.getLogger(__name__)

Hook = Callable[[], None]

_before: List[Hook] = []
_after_in_parent: List[Hook] = []
_after_in_child: List[Hook] = []
_installed = False
_original_os_exit: Optional[Callable[[int], Any]] = None
_flush: Optional[Hook] = None


def add(before: Optional[Hook] = None, after_in_parent: Optional[Hook] = None,
        after_in_child: Optional[Hook] = None) -> None:
    """Run these around every ``fork()`` from now on (after the hooks added before them)."""
    for hooks, hook in ((_before, before), (_after_in_parent, after_in_parent),
                        (_after_in_child, after_in_child)):
        if hook is not None:
            hooks.append(hook)


def _run(hooks: List[Hook]) -> Hook:
    def run() -> None:
        for hook in list(hooks):
            hook()

    return run


def install() -> None:
    """Register the hooks with ``os.register_at_fork``, once (where the platform has it)."""
    global _installed
    if _installed or not hasattr(os, "register_at_fork"):
        return
    _installed = True
    os.register_at_fork(
        before=_run(_before),
        after_in_parent=_run(_after_in_parent),
        after_in_child=_run(_after_in_child),
    )


def _flushing_exit(status: int) -> Any:
    """``os._exit`` for forked children: flush this child's spans first (bounded)."""
    try:
        if _flush is not None:
            _flush()
    except BaseException:  # noqa: BLE001 - exiting regardless: never change how the child ends
        pass
    assert _original_os_exit is not None
    return _original_os_exit(status)


def flush_before_os_exit(flush: Hook) -> None:
    """Make ``os._exit`` call ``flush`` first (once; ``flush`` bounds its own time)."""
    global _original_os_exit, _flush
    if _original_os_exit is None:
        _flush = flush
        _original_os_exit = os._exit
        os._exit = _flushing_exit  # type: ignore[assignment]
