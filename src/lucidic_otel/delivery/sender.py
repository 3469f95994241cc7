"""Delivery's entry points, under the name the rest of the package imports them by.

The exporter calls :func:`notify` after each outbox write, :func:`prestart` and
:func:`register_flush` when it is built; the exit sequence calls :func:`deliver_at_exit`;
``lucidic-otel upload`` drives a :class:`Sender` itself. Where each lives:

- :mod:`~lucidic_otel.delivery.supervisor`: one delivery per process and store (threads or
  the helper process), fork safety, and the exit delivery;
- :mod:`~lucidic_otel.delivery.thread_sender` (the :class:`Sender`: its public face) and
  :mod:`~lucidic_otel.delivery.dispatcher` (its loop), over a worker pool
  (:mod:`~lucidic_otel.delivery.pool`) and :mod:`~lucidic_otel.delivery.resolve`;
- :mod:`~lucidic_otel.delivery.policy`: backoff, pauses, rejects, stopping, and what is said;
- :mod:`~lucidic_otel.delivery.attempt` and :mod:`~lucidic_otel.delivery.transport`: one
  item's requests, over HTTP;
- :mod:`~lucidic_otel.delivery.contract`: the backend's wire contract (pure);
- :mod:`~lucidic_otel.delivery.helper` and :mod:`~lucidic_otel.delivery.helper_main`: the
  helper process, the application's side and its own.
"""

from __future__ import annotations

import logging

from lucidic_otel.delivery.policy import DeliveryStats
from lucidic_otel.delivery.supervisor import (
    deliver_at_exit,
    notify,
    prestart,
    process_sender,
    register_flush,
)
from lucidic_otel.delivery.thread_sender import Sender

logger = logging.getLogger(__name__)

__all__ = [
    "DeliveryStats",
    "Sender",
    "deliver_at_exit",
    "notify",
    "prestart",
    "process_sender",
    "register_flush",
]
