"""Helpers of the hostile-user suite: run the console script, checksum folders, check results."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from hostile_cases import TRAINED_CONFIG, Case

EXITFLOW = str(Path(sys.executable).parent / "exitflow")
LOCK = ".exitflow.lock"


def checksums(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (symlinks by their target's name), by relative path."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            path = Path(root, name)
            rel = str(path.relative_to(folder))
            if path.is_symlink():
                out[rel] = "link:" + os.readlink(path)
            else:
                try:
                    out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
                except OSError as err:
                    out[rel] = f"unreadable:{err.errno}"
    return out


def env_for(cwd: Path, extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "EXITFLOW"))}
    home = cwd.with_name(cwd.name + ".home")  # the user's own, beside the working folder (never the developer's)
    (home / ".config").mkdir(parents=True, exist_ok=True)
    env.update(
        {
            "XDG_CONFIG_HOME": str(home / ".config"),
            "HOME": str(home),
            "PYTHONDONTWRITEBYTECODE": "1",
            "OMP_NUM_THREADS": "1",
            "COLUMNS": "200",
        }
    )
    env.update(extra or {})
    return env


@dataclass
class Done:
    args: list[str]
    code: int
    stdout: str
    stderr: str

    def describe(self) -> str:
        out, err = self.stdout[-2000:], self.stderr[-3000:]
        return f"exitflow {' '.join(self.args)} -> {self.code}\nstdout: {out}\nstderr: {err}"


def exitflow(
    args: list[str], cwd: Path, env: dict | None = None, timeout: float = 600, prefix: list[str] | None = None
) -> Done:
    """``exitflow ARGS`` in ``cwd``, as a user types it."""
    done = subprocess.run(
        [*(prefix or []), EXITFLOW, *args],
        cwd=cwd,
        env=env_for(cwd, env),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    return Done(args, done.returncode, done.stdout, done.stderr)


def start(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [EXITFLOW, *args],
        cwd=cwd,
        env=env_for(cwd, env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )


def assert_one_line_error(done: Done, code: int = 2) -> None:
    assert done.code == code, done.describe()
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, f"stderr is {len(lines)} lines, not one:\n{done.describe()}"
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr, done.describe()
    assert "weights_only=False" not in done.stderr, done.describe()


def assert_unchanged(
    before: dict[str, str], after: dict[str, str], may_write: tuple[str, ...] = (), new_ok: bool = False
) -> None:
    """Every file that was there is there and unchanged, but those the command may write
    (glob patterns); no new file either, unless ``new_ok`` (besides an empty lock file)."""
    from fnmatch import fnmatch

    def allowed(rel: str) -> bool:
        return any(fnmatch(rel, pattern) for pattern in may_write)

    changed = sorted(rel for rel, digest in before.items() if after.get(rel) != digest and not allowed(rel))
    assert not changed, f"files changed or deleted: {changed[:10]}"
    if not new_ok:
        empty = hashlib.sha256(b"").hexdigest()
        new = sorted(
            rel
            for rel in after
            if rel not in before and not allowed(rel) and not (Path(rel).name == LOCK and after[rel] == empty)
        )
        assert not new, f"files created: {new[:10]}"


def copy_run(trained: Path, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(trained, dest, symlinks=True)
    return dest


@dataclass
class Outcome:
    case: Case
    cwd: Path
    done: Done
    before: dict[str, str]
    after: dict[str, str]
    seconds: float


def run_case(case: Case, cwd: Path, trained: Path | None) -> Outcome:
    """Prepare ``cwd`` for ``case``, checksum it, run the command, checksum it again."""
    import time

    cwd.mkdir(parents=True, exist_ok=True)
    if case.trained:
        assert trained is not None
        copy_run(trained, cwd / case.where)
        (cwd / "hostile.yaml").write_text(TRAINED_CONFIG)
    if case.setup is not None:
        case.setup(cwd)
    before = checksums(cwd)
    t0 = time.monotonic()
    done = exitflow(list(case.args), cwd, env=case.env, timeout=900)
    seconds = time.monotonic() - t0
    return Outcome(case, cwd, done, before, checksums(cwd), seconds)


def check_outcome(out: Outcome) -> None:
    case, done = out.case, out.done
    if case.code == 0:
        assert done.code == 0, done.describe()
        assert "Traceback" not in done.stderr, done.describe()
    else:
        assert_one_line_error(done, case.code)
        for text in case.stderr_has:
            assert text.lower() in done.stderr.lower(), done.describe()
    assert_unchanged(out.before, out.after, case.may_write, new_ok=case.new_ok or case.code == 0)
    if case.check is not None:
        case.check(out.cwd, done)
