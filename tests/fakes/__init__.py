"""Fake third-party services for tests: real aiohttp applications served on loopback."""
