"""The distribution: package layout, pins, the README's commands and .ci/run."""

import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

import exitflow

USER_FOLDERS = ["quant", "hls_templates", "dse", "cosim", "boards"]


@pytest.mark.parametrize("folder", USER_FOLDERS)
def test_user_folders_are_exitflow_subpackages(folder, repo):
    module = __import__(f"exitflow.{folder}", fromlist=["_"])
    assert Path(module.__file__).resolve() == repo / folder / "__init__.py"


def test_exitflow_package_is_the_exitflow_folder(repo):
    assert Path(exitflow.__file__).resolve() == repo / "exitflow" / "__init__.py"
    assert exitflow.__version__ == metadata.version("exitflow")


def test_no_generic_top_level_names(tmp_path):
    """Outside the repository, only `exitflow` is importable: no `quant`, `boards`, `core`..."""
    names = USER_FOLDERS + ["core", "hw", "app", "flow", "tests", "benchmarks"]
    code = (
        "import importlib.util, json; "
        f"print(json.dumps({{n: importlib.util.find_spec(n) is not None for n in {names!r}}}))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    found = {k: v for k, v in __import__("json").loads(out.stdout).items() if v}
    assert found == {}
    ok = subprocess.run([sys.executable, "-c", "import exitflow.boards"], cwd=tmp_path)
    assert ok.returncode == 0


def _lock(repo) -> dict[str, str]:
    pins = {}
    for line in (repo / "requirements.lock").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def test_lock_pins_the_required_versions(repo):
    pins = _lock(repo)
    assert pins["torch"] == "2.13.0"
    assert pins["brevitas"] == "0.13.4"
    assert pins["qonnx"] == "1.0.0"
    assert pins["finn-plus"] == "1.6.1"
    for name in [
        "hls4ml",
        "numpy",
        "onnx",
        "onnxruntime",
        "protobuf",
        "jinja2",
        "psutil",
        "pyyaml",
        "matplotlib",
        "pytest",
        "tqdm",
        "hypothesis",
        "mlxtend",
        "scikit-learn",
    ]:
        assert name in pins, name


def test_every_declared_dependency_is_pinned_in_the_lock(repo):
    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    pins = _lock(repo)
    declared = project["dependencies"] + project["optional-dependencies"]["test"]
    for dep in declared:
        name = re.sub(r"[-_.]+", "-", re.split(r"[<>=!\[; ]", dep)[0]).lower()
        assert name in pins, f"{dep} is declared in pyproject.toml but not pinned in requirements.lock"
        assert dep == re.split(r"[<>=!;]", dep)[0], f"{dep}: versions belong in requirements.lock only"


def test_installed_versions_match_the_lock(repo):
    mismatched = {}
    for name, version in _lock(repo).items():
        installed = metadata.version(name).split("+")[0]
        if installed != version:
            mismatched[name] = (version, installed)
    assert mismatched == {}


def test_pip_check_reports_only_the_documented_finn_plus_findings():
    out = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    problems = {line for line in out.stdout.splitlines() if line.strip()}
    assert problems == {
        "finn-plus 1.6.1 requires cmake, which is not installed.",
        "finn-plus 1.6.1 has requirement brevitas==0.13.0, but you have brevitas 0.13.4.",
    }


def test_no_cuda_packages_installed():
    cuda = [
        d.metadata["Name"]
        for d in metadata.distributions()
        if d.metadata["Name"].lower().startswith(("nvidia", "triton", "cuda"))
    ]
    assert cuda == []
    import torch

    assert torch.version.cuda is None


def _readme_commands(repo) -> dict[str, str]:
    """The commands README.md labels `set up`, `test` and `main job` (first code line after each label)."""
    text = (repo / "README.md").read_text()
    commands = {}
    for label in ("set up", "test", "main job"):
        match = re.search(rf"<!-- {label} -->\s*```(?:bash|sh)?\n(.+?)\n", text)
        assert match, f"README.md has no command marked <!-- {label} -->"
        commands[label] = match.group(1).strip()
    return commands


def test_readme_shows_the_commands_near_the_top(repo):
    text = (repo / "README.md").read_text()
    first_lines = "\n".join(text.splitlines()[:40])
    for label in ("set up", "test", "main job"):
        assert f"<!-- {label} -->" in first_lines
    assert "Python 3.11" in first_lines


def test_ci_runs_exactly_the_readme_commands(repo):
    """.ci/run reads its three commands out of README.md: what it would run is what the README prints."""
    commands = _readme_commands(repo)
    printed = subprocess.run([str(repo / ".ci" / "run"), "--print"], capture_output=True, text=True, check=True)
    assert printed.stdout.splitlines() == [commands["set up"], commands["test"], commands["main job"]]
    lines = (repo / ".ci" / "run").read_text().splitlines()
    for call in (commands["set up"], commands["test"], f'(cd "$work" && {commands["main job"]})'):
        assert call in lines  # run verbatim, as a line of its own
    assert "--out" in commands["main job"] and not Path(commands["main job"].split("--out")[1].split()[0]).is_absolute()


def test_ci_stops_when_the_readme_command_differs(repo, tmp_path):
    copy = tmp_path / "repo"
    (copy / ".ci").mkdir(parents=True)
    shutil.copy(repo / ".ci" / "run", copy / ".ci" / "run")
    text = (repo / "README.md").read_text().replace("exitflow run --out runs/default", "exitflow run --out runs/other")
    (copy / "README.md").write_text(text)
    done = subprocess.run([str(copy / ".ci" / "run"), "--print"], capture_output=True, text=True)
    assert done.returncode == 2 and "main job command is 'exitflow run --out runs/other'" in done.stderr


def test_pytest_markers_in_pyproject_match_the_plugin(repo):
    from exitflow.testing import MARKERS

    config = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    declared = dict(m.split(": ", 1) for m in config["markers"])
    assert declared == MARKERS


def test_package_data_covers_the_data_files(repo):
    """A non-editable install must carry the board files, templates and their READMEs."""
    import fnmatch

    data = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    for package, patterns in data.items():
        folder = (
            repo
            / {
                "exitflow.core": "core",
                "exitflow.app": "app",
                "exitflow.boards": "boards",
                "exitflow.hls_templates": "hls_templates",
                "exitflow.cosim": "cosim",
            }[package]
        )
        files = [
            p.relative_to(folder).as_posix()
            for p in folder.rglob("*")
            if p.is_file() and p.suffix != ".py" and "__pycache__" not in p.parts
        ]
        uncovered = [f for f in files if not any(fnmatch.fnmatch(f, pat) for pat in patterns)]
        assert uncovered == [], f"{package}: add to package-data: {uncovered}"


def test_every_python_package_is_listed(repo):
    """Editable installs find subpackages by folder; a wheel only ships the listed ones."""
    setuptools = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    roots = {folder: package for package, folder in setuptools["package-dir"].items()}
    found = set()
    for folder, package in roots.items():
        for init in (repo / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(repo / folder).parts
            found.add(".".join((package, *rel)))
    assert found == listed
