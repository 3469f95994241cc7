"""The inbound trust policy for session ids that arrive in W3C baggage.

Baggage is written by whoever calls a service, so on an internet-facing edge it is attacker
input. The policy decides which inbound values may become a span's session:

- ``accept``: any well-formed id (``[A-Za-z0-9._:-]``, at most 128 chars);
- ``ignore``: none; sessions only come from this process's API or its default;
- ``signed``: only ``id~signature`` values whose HMAC-SHA256 under the shared secret matches
  the id, so an id cannot be forged and a signature cannot be replayed onto another id.

Rejections are counted and the first one is logged, so a misconfigured upstream is visible.
"""

from __future__ import annotations

import itertools
import logging
from typing import Optional, Tuple

from lucidic_otel.config import Settings
from lucidic_otel.ids import is_valid_session_id, verify_signed_session_id

logger = logging.getLogger(__name__)


class BaggageTrust:
    """Turns a raw baggage value into a trusted session id or None; cheap on repeats.

    The last verdict is memoised: in a service every span of a request sees the same value,
    and an HMAC per span would be wasted work on the application thread.
    """

    __slots__ = ("mode", "_secret", "_last", "_rejected", "rejected_count")

    def __init__(self, settings: Settings) -> None:
        self.mode = settings.baggage_trust
        self._secret = settings.baggage_secret
        # (raw, verdict) in one tuple, read and replaced whole: with two attributes, a thread
        # could pair another thread's verdict with its own value.
        self._last: Tuple[object, Optional[str]] = (None, None)
        self._rejected = itertools.count(1)
        self.rejected_count = 0

    def session_from_baggage(self, raw: object) -> Optional[str]:
        """The trusted session id carried by ``raw``, or None (and the rejection is counted)."""
        last_raw, result = self._last
        if type(raw) is not str or raw != last_raw:
            result = self._judge(raw)
            self._last = (raw, result)
        if result is None:
            self._reject(raw)
        return result

    def _judge(self, raw: object) -> Optional[str]:
        if self.mode == "ignore" or type(raw) is not str:
            return None
        # W3C baggage properties (``id;prop=1``) are metadata, not part of the value.
        raw = raw.partition(";")[0].strip()
        if self.mode == "signed":
            if self._secret is None:
                return None
            return verify_signed_session_id(raw, self._secret)
        return raw if is_valid_session_id(raw) else None

    def _reject(self, raw: object) -> None:
        if self.mode == "ignore":
            return
        self.rejected_count = n = next(self._rejected)
        if n == 1:
            shown = repr(raw)[:100]
            if self.mode == "signed":
                why = "it carries no valid signature (LUCIDIC_BAGGAGE_TRUST=signed)"
            else:
                why = "a session id must be 1-128 chars of [A-Za-z0-9._:-]"
            logger.warning(
                "lucidic-otel: ignored inbound baggage lucidic.session_id=%s: %s; further "
                "rejections are only counted",
                shown,
                why,
            )
