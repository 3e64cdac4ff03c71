"""HTML pages HaloTrack serves itself (the operators' dashboard): what a page shows, computed from plain data
(`dashboard.py`, pure), and the Jinja2 templates that render it with autoescaping (`templates/`)."""

from __future__ import annotations

import functools

import jinja2


@functools.cache
def environment() -> jinja2.Environment:
    """The templates, autoescaped (every value a template prints is HTML-escaped unless marked safe), and strict:
    a name the context lacks is an error, not an empty string."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader("halo_proxy", "views/templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render(template: str, context: dict[str, object]) -> str:
    return environment().get_template(template).render(context)
