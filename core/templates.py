"""The one Jinja environment factory of exitflow: HLS C++ test benches, Vivado Tcl and C++ stubs,
and the HTML report are all rendered through :func:`template_env`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def template_env(
    folder: str | Path,
    *,
    autoescape: bool = False,
    keep_trailing_newline: bool = True,
    filters: dict[str, Callable] | None = None,
):
    """A ``jinja2.Environment`` loading templates from ``folder``: an undefined name is an error
    (``StrictUndefined``), block tags take their own line out (``trim_blocks``, ``lstrip_blocks``);
    ``autoescape`` for HTML, ``keep_trailing_newline`` for source files, ``filters`` added by name."""
    # jinja2: only when something is rendered, so the command line starts fast
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(folder)),
        undefined=jinja2.StrictUndefined,
        autoescape=autoescape,
        keep_trailing_newline=keep_trailing_newline,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(filters or {})
    return env
