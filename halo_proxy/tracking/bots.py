"""Is a request's client a bot, crawler, link unfurler, monitor or HTTP library rather than a person's browser?"""

from __future__ import annotations

from halo_proxy.tracking.agent import classify_agent


def is_bot(user_agent: str | None) -> bool:
    """user-agents' `is_bot` plus the tokens it misses; an empty or missing User-Agent counts as a bot. Cached."""
    return classify_agent(user_agent).is_bot
