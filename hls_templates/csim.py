"""C simulation of exitflow's HLS templates with g++ and the open ap_types headers.

:func:`render` fills a thin Jinja2 wrapper (``StrictUndefined``: a missing value fails loudly);
:func:`compile_cpp` builds it with g++ against ``hls_templates/`` and the ``ap_types`` headers of
the hls4ml wheel, caching binaries by the hash of their source; :func:`run` feeds a binary text
on stdin and returns its stdout. No vendor tool is involved.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

from exitflow.core.errors import NotAvailableError
from exitflow.core.templates import template_env

from . import TEMPLATE_DIR, ap_types_include_dir


def render(template: str, **values) -> str:
    return template_env(TEMPLATE_DIR).get_template(template).render(**values)


def compile_cpp(source: str, workdir: Path, name: str = "csim") -> Path:
    """Compile ``source`` (C++14) into ``workdir``; an identical source is compiled once."""
    gpp = shutil.which("g++")
    if gpp is None:
        raise NotAvailableError("g++ is not on PATH; C simulation needs it (apt-get install g++)")
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    workdir.mkdir(parents=True, exist_ok=True)
    binary = workdir / f"{name}_{digest}"
    if binary.exists():
        return binary
    cpp = workdir / f"{name}_{digest}.cpp"
    cpp.write_text(source)
    cmd = [
        gpp,
        "-std=c++14",
        "-O0",
        "-w",
        f"-I{TEMPLATE_DIR}",
        f"-I{ap_types_include_dir()}",
        str(cpp),
        "-o",
        str(binary),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"g++ failed on {cpp}:\n{result.stderr[-4000:]}")
    return binary


def run(binary: Path, stdin: str) -> str:
    result = subprocess.run([str(binary)], input=stdin, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{binary.name} exited with {result.returncode}: {result.stderr[-2000:]}")
    return result.stdout
