"""The page for people that the Serve app shows at ``/``: choose a served model, upload
or paste a long table (SPEC 10 columns), get every experiment's estimate with its
intervals, and plots of the fitted trajectories with their bands. Plain HTML, CSS and
JavaScript written here (``static/``), no library and no CDN: it works offline, inside a
cluster. Everything it shows comes from the public HTTP API (``/v1/...``), which it
calls by paths relative to its own, so it also works under a route prefix.

The three files are served as one document (the style and the script inlined), so the
page needs no other route."""

from __future__ import annotations

import functools
from importlib import resources


@functools.cache
def html() -> str:
    static = resources.files(__package__).joinpath("static")
    page = static.joinpath("index.html").read_text(encoding="utf-8")
    style = static.joinpath("page.css").read_text(encoding="utf-8")
    script = static.joinpath("page.js").read_text(encoding="utf-8")
    return page.replace("/*STYLE*/", style).replace("/*SCRIPT*/", script)
