"""Ad-platform forwarders: conversions in, HTTP requests out, responses classified.

One module per platform (`meta`, `ga4`, `google_ads`, `tiktok`), each with the same surface: ``MAX_BATCH``,
``MAX_AGE``, ``check(event, now)``, ``batches(events)``, ``build_request(settings, events)``,
``classify(status, headers, body)``, ``async send(session, settings, events, timeout)`` and
``deduplicates(event)`` (whether the platform drops a second copy of this event, so that a send that may have
arrived can safely be sent again). `PLATFORMS` maps
the tenant YAML's forwarder names to them.
"""

from __future__ import annotations

from types import MappingProxyType

from . import ga4, google_ads, meta, tiktok
from .models import ForwarderError, ForwardEvent, InvalidEvent, SendResult

__all__ = ["PLATFORMS", "ForwardEvent", "ForwarderError", "InvalidEvent", "SendResult"]

PLATFORMS = MappingProxyType({"meta": meta, "ga4": ga4, "google_ads": google_ads, "tiktok": tiktok})
