"""The benchmark docs cannot drift from their results.

docs/benchmarks.md and docs/ray.md are regenerated in memory by bench/report.py from the
committed bench/results/*.json and compared byte for byte with the committed files; the
prose outside the generated blocks must hold no figure with a unit (a typed number fails).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from pipeline.settings import default_of

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
sys.path.insert(0, str(BENCH))

import report  # noqa: E402


def test_both_docs_are_exactly_what_their_results_give() -> None:
    docs = report.generated_docs("full")
    assert set(docs) == {REPO / "docs" / "benchmarks.md", REPO / "docs" / "ray.md"}
    for path, text in docs.items():
        committed = path.read_text(encoding="utf-8")
        assert committed == text, (
            f"{path.relative_to(REPO)} differs from what bench/report.py writes from "
            "bench/results/: run `.venv/bin/python bench/report.py` and commit the result")


@pytest.mark.parametrize("doc", ["docs/benchmarks.md", "docs/ray.md"])
def test_no_figure_is_typed_outside_the_generated_blocks(doc: str) -> None:
    text = (REPO / doc).read_text(encoding="utf-8")
    assert report.typed_figures(text, report.ALLOWED.get(doc)) == [], (
        "a measured figure belongs in a generated block (bench/report.py), not in the prose")


@pytest.mark.parametrize("sentence", [
    "`Timeout.__aenter__` in the stream read 2.3 % → 1.3 % of samples",
    "loop turn 39 µs → 6 µs at window 128, 325 µs → 6 µs at 1,024",
    "| 1 | CPU within 1.2x | **1.187** for the whole process (1.80 vs 1.47 s) | met |",
    "Ray adds a fixed cost of 10-20 s and about 2.5-3 GiB of memory",
    "costs 6.3x ours and takes 1.8x the wall time",
    "start-up 0.58 s / 87 MB → 0.20 s / 37 MB",
    "pushed 566 rows/s through 256 requests",
    "the ratio is **0.77** now",
    "about 0.02 ms per record, 2 × slower",
])
def test_the_scan_finds_typed_figures(sentence: str) -> None:
    assert report.typed_figures(f"Some prose: {sentence}\n")


def test_the_scan_leaves_code_versions_and_generated_blocks_alone() -> None:
    text = ("On these 2 cores with gradio 4.44.1 and Ray 2.60, `--timeout 120 s` and 4 x batch "
            "rows, plan (1) then (2).\n\n```bash\nrun_all.py   # ~15 min, 3 s\n```\n\n"
            "<!-- BEGIN GENERATED: x -->\nwall 1.80 s, **1.187**\n<!-- END GENERATED: x -->\n")
    assert report.typed_figures(text) == []
    assert report.typed_figures("prose 0.5 s\n", {"0.5 s": "a setting"}) == []


@pytest.mark.parametrize("doc", sorted(report.ALLOWED))
def test_allowed_figures_are_the_settings_they_name(doc: str) -> None:
    """A figure allowed in the prose is a setting of the code, and must still be its value."""
    units = {"s": 1.0, "MiB": 2**20, "KiB": 2**10}
    for figure, dotted in report.ALLOWED[doc].items():
        module, _, attr = dotted.rpartition(".")
        try:
            owner = importlib.import_module(module)
        except ModuleNotFoundError:  # ActorConfig.flush_interval: a class in a module
            module, _, cls = module.rpartition(".")
            owner = getattr(importlib.import_module(module), cls)
        number, unit = figure.split()
        # A slotted dataclass keeps its defaults in its fields, not as class attributes.
        value = default_of(owner, attr) if dataclasses.is_dataclass(owner) else getattr(owner, attr)
        assert value == float(number) * units[unit], (doc, figure, dotted)


def test_block_errors_are_reported() -> None:
    renderers = {"a": lambda size: "A\n"}
    good = "x\n<!-- BEGIN GENERATED: a -->\nold\n<!-- END GENERATED: a -->\ny\n"
    assert report.regenerate(good, renderers, "full") == (
        "x\n<!-- BEGIN GENERATED: a -->\nA\n<!-- END GENERATED: a -->\ny\n")
    with pytest.raises(report.DocError, match="no renderer"):
        report.regenerate(good.replace(": a", ": b"), renderers, "full")
    with pytest.raises(report.DocError, match="missing"):
        report.regenerate("x\n", renderers, "full")
    with pytest.raises(report.DocError, match="well-formed"):
        report.regenerate(good + "<!-- END GENERATED: a -->\n", renderers, "full")
    with pytest.raises(report.DocError, match="twice"):
        report.regenerate(good + good, renderers, "full")


def test_a_changed_result_changes_the_doc_and_check_fails(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    results = tmp_path / "results"
    shutil.copytree(BENCH / "results", results)
    overhead = json.loads((results / "full_overhead.json").read_text())
    overhead["cpu_ratio"] = 1.333
    (results / "full_overhead.json").write_text(json.dumps(overhead))
    ray = json.loads((results / "ray_vs_local.json").read_text())
    ray["results"][0]["wall_s"] = 99.25
    (results / "ray_vs_local.json").write_text(json.dumps(ray))
    monkeypatch.setattr(report, "RESULTS_DIR", results)
    docs = report.generated_docs("full")
    bench_doc, ray_doc = docs[report.DOC], docs[report.RAY_DOC]
    assert "**1.333** for the whole process" in bench_doc and "| 1.333 | ≤ 1.2 | **not met** |" \
        in bench_doc
    assert "| 99.2 s |" in ray_doc
    assert report.main(["--check"]) == 1


def test_report_check_passes_on_the_committed_docs() -> None:
    proc = subprocess.run([sys.executable, str(BENCH / "report.py"), "--check"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _png_software(path: Path) -> str:
    """The ``Software`` tEXt chunk of a PNG (matplotlib writes its version there)."""
    data = path.read_bytes()
    pos = 8
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"tEXt" and body.startswith(b"Software\0"):
            return body.split(b"\0", 1)[1].decode("latin-1")
        if kind == b"zTXt" and body.startswith(b"Software\0"):
            return zlib.decompress(body.split(b"\0", 1)[1][1:]).decode("latin-1")
        pos += 12 + length
    return ""


def test_the_plot_is_what_its_results_give(tmp_path: Path) -> None:
    """The PNG is deterministic for a given matplotlib: compared when the versions match."""
    matplotlib = pytest.importorskip("matplotlib")
    committed = REPO / "docs" / "benchmarks_throughput.png"
    if _png_software(committed) != f"Matplotlib version{matplotlib.__version__}, https://matplotlib.org/":
        pytest.skip(f"the PNG was drawn by another matplotlib ({_png_software(committed)!r})")
    out = tmp_path / "plot.png"
    proc = subprocess.run([sys.executable, str(BENCH / "plot.py"),
                           str(BENCH / "results" / "full_sweep.json"), str(out),
                           "--startup", str(BENCH / "results" / "full_startup.json")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == committed.read_bytes(), "run bench/report.py to redraw the plot"
