"""The README's walk-throughs, run as a user runs them: every bash block of the sections below,
in order, from one relative working folder, with ``exitflow`` on PATH as ``./setup.sh`` leaves
it. The example configs the blocks name are copied into that folder with fewer epochs (the
README offers them as configs to start from); nothing else is changed. A block marked
``<!-- needs: ... -->`` (a Vivado host) shows as skipped with that reason."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
WALKTHROUGHS = ("Three jobs, step by step", "Multi-exit networks: train, profile, export")
EPOCHS = 1


def _sections(text: str) -> dict[str, str]:
    parts = re.split(r"^## (.+)$", text, flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


def walkthrough_blocks() -> list[tuple[str, str, str | None]]:
    """(section, bash block, the reason it cannot run here or None), in README order."""
    sections = _sections((REPO / "README.md").read_text())
    blocks = []
    for title in WALKTHROUGHS:
        assert title in sections, f"README.md has no section '## {title}'"
        for match in re.finditer(r"(?:<!-- needs: (.+?) -->\s*\n)?```bash\n(.*?)```", sections[title], flags=re.S):
            blocks.append((title, match.group(2).strip(), match.group(1)))
    return blocks


BLOCKS = walkthrough_blocks()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A user's folder: the example configs they start from, with fewer epochs."""
    folder = tmp_path_factory.mktemp("readme user")
    (folder / "examples").mkdir()
    for config in (REPO / "examples").glob("*.yaml"):
        data = yaml.safe_load(config.read_text())
        data.setdefault("train", {})["epochs"] = EPOCHS
        (folder / "examples" / config.name).write_text(yaml.safe_dump(data, sort_keys=False))
    return folder


def test_the_walkthroughs_have_blocks():
    runnable = [b for b in BLOCKS if b[2] is None]
    assert len(runnable) >= 5, BLOCKS
    assert any("exitflow run" in b[1] for b in runnable)
    assert any("exitflow cosim" in b[1] for b in runnable)


@pytest.mark.slow
@pytest.mark.parametrize(("section", "block", "needs"), BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_block(section, block, needs, workdir):
    if needs:
        pytest.skip(f"needs {needs}")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(
        ["bash", "-e", "-c", block], cwd=workdir, env=env, capture_output=True, text=True, timeout=1800
    )
    assert done.returncode == 0, f"{section}:\n{block}\nexit {done.returncode}\n{done.stderr[-3000:]}"
    assert "Traceback" not in done.stderr
    for path in re.findall(r"--out (\S+)", block):  # every run folder a block names is there, relative to cwd
        assert (workdir / path / "model.pt").is_file()
