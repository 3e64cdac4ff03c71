"""Device type, browser family and OS family of a visitor, from the User-Agent header."""

from __future__ import annotations

from halo_proxy.tracking.agent import classify_agent
from halo_proxy.tracking.models import Device


def parse_device(user_agent: str | None) -> Device:
    """mobile | tablet | desktop | other, with browser and OS family (None when unknown). Bots are `other`.

    Shares one cached parse with `is_bot`, so a request pays for at most one user-agent parse.
    """
    return classify_agent(user_agent).device
