"""DIR/report.html: self-contained, the key numbers on it, rebuilt from a partial folder, and
rendered by a real browser (headless Chromium) when one is installed."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from exitflow.app.cli import main
from exitflow.app.report import collect, write_report


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _key_numbers(out: Path) -> list[str]:
    """Figures of the run as the report prints them."""
    pareto = json.loads((out / "sweep" / "pareto.json").read_text())
    cosim = json.loads((out / "cosim" / "report.json").read_text())
    chosen = pareto["chosen"]
    return [
        f"{chosen['fps']:,.0f} samples/s",
        f"{pareto['gain_vs_no_exit']:,.2f}x",
        f"{100 * chosen['test_accuracy']:.2f} %",
        f"{pareto['no_exit_baseline']['fps']:,.0f}",
        f"{cosim['cycle']['simulated_fps']:,.1f} samples/s",
        f"{cosim['cycle']['predicted_fps']:,.1f} samples/s",
        "bit-exact",
    ]


@pytest.mark.slow
def test_report_is_self_contained_with_the_key_numbers(finished_run):
    html = (finished_run.out / "report.html").read_text()
    images = re.findall(r'<img [^>]*src="([^"]*)"', html)
    assert len(images) == 3 and all(src.startswith("data:image/png;base64,") for src in images)
    assert not re.search(r"(src|href)=\"(?!data:)", html)  # nothing to fetch
    assert "http://" not in html and "https://" not in html and "<script" not in html
    for number in _key_numbers(finished_run.out):
        assert number in html, number
    design = (finished_run.out / "sweep" / "design.yaml").read_text()
    for stage in re.findall(r"- name: (\S+)", design):
        assert stage in html


@pytest.mark.slow
def test_report_names_what_was_not_run_with_its_command(finished_run):
    data = collect(finished_run.out)
    build = json.loads((finished_run.out / "hw" / "build.json").read_text())
    if build["bitfile"]["missing"]:
        (bitfile,) = [n for n in data.not_run if n.what.startswith("bitfile")]
        assert bitfile.command.startswith(build["bitfile"]["command"])
        assert "Vivado" in bitfile.why
        html = (finished_run.out / "report.html").read_text()
        assert build["bitfile"]["command"] in html
    else:  # a machine with Vivado: the bitfile was built
        assert (finished_run.out / "hw" / "deploy" / "exitflow.bit").is_file()
    assert not [n for n in data.not_run if n.what in ("design search", "hardware build", "cosimulation", "profile")]


@pytest.mark.parametrize(
    "keep",
    [
        [],
        ["model.pt", "config.yaml", "profile.json", "profile.png", "profile.npz"],
        ["model.pt", "config.yaml", "profile.json", "sweep"],
    ],
)
@pytest.mark.slow
def test_report_of_a_partial_folder_lists_the_rest_as_not_run(finished_run, tmp_path, keep, capsys):
    out = tmp_path / "partial"
    out.mkdir()
    for name in keep:
        source = finished_run.out / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, out / name)
    assert main(["report", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out / 'report.html'}"
    html = (out / "report.html").read_text()
    missing = collect(out).not_run
    whats = [n.what for n in missing]
    assert "cosimulation" in whats and "hardware build" in whats
    assert ("design search" in whats) == ("sweep" not in keep)
    assert ("training" in whats) == ("model.pt" not in keep)
    for item in missing:
        assert item.command.replace("'", "&#39;") in html
    assert len(re.findall(r"<img ", html)) == ("profile.png" in keep) + 2 * ("sweep" in keep)


@pytest.mark.slow
def test_report_survives_corrupt_files(finished_run, tmp_path):
    out = tmp_path / "corrupt"
    shutil.copytree(finished_run.out, out)
    (out / "sweep" / "pareto.json").write_text("{not json")
    (out / "profile.png").write_bytes(b"not a png")
    write_report(out)
    data = collect(out)
    assert any(p.startswith("pareto.json: unreadable") for p in data.problems)
    assert "profile" not in data.figures and "pareto" in data.figures


def test_report_of_a_missing_folder_is_one_line_exit_2(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such run folder" in err
    assert not (tmp_path / "nope").exists()


CHECK = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images).map(
    i => ({complete: i.complete, width: i.naturalWidth, height: i.naturalHeight}));
  const out = document.createElement("pre");
  out.id = "browser-check";
  out.textContent = JSON.stringify({images: images, text: document.body.innerText});
  document.body.appendChild(out);
});
</script>
</body>"""


@pytest.mark.skipif(
    _chromium() is None,
    reason="headless Chromium not found: neither `chromium` nor `chromium-browser` "
    "is on PATH (on Debian/Ubuntu: apt-get install chromium)",
)
@pytest.mark.slow
def test_report_renders_in_a_real_browser(finished_run, tmp_path):
    """Chromium loads every embedded image (naturalWidth > 0) and shows the key numbers, offline."""
    page = tmp_path / "report.html"
    html = (finished_run.out / "report.html").read_text()
    assert html.count("</body>") == 1
    page.write_text(html.replace("</body>", CHECK))  # a copy with a probe; the report itself has no script
    cmd = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-extensions",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=10000",
        "--dump-dom",
        page.as_uri(),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    match = re.search(r'<pre id="browser-check">(.*?)</pre>', out.stdout, re.S)
    assert match, f"the probe did not run; Chromium printed: {out.stdout[:500]} {out.stderr[-1000:]}"
    text = match.group(1).replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    result = json.loads(text)
    assert len(result["images"]) == 3
    assert all(i["complete"] and i["width"] > 0 and i["height"] > 0 for i in result["images"]), result["images"]
    for number in _key_numbers(finished_run.out):
        assert number in result["text"], number
