"""docs/ray.md's cluster measurements are bench/results/ray_cluster.json's, by script."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "ray_cluster_report.py"


def test_the_docs_hold_the_text_rendered_from_the_committed_results() -> None:
    data = json.loads((REPO / "bench" / "results" / "ray_cluster.json").read_text())
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import ray_cluster_report
    finally:
        sys.path.remove(str(SCRIPT.parent))
    doc = (REPO / "docs" / "ray.md").read_text(encoding="utf-8")
    block = doc.split("<!-- BEGIN GENERATED: ray_cluster -->\n", 1)[1].split(
        "<!-- END GENERATED: ray_cluster -->", 1)[0]
    assert block.strip() == ray_cluster_report.render(data).strip()


def test_every_number_in_the_generated_text_comes_from_the_results() -> None:
    data = json.loads((REPO / "bench" / "results" / "ray_cluster.json").read_text())
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import ray_cluster_report
    finally:
        sys.path.remove(str(SCRIPT.parent))
    text = ray_cluster_report.render(data)
    killed = next(r for r in data["results"] if r["case"] == "killed")
    killed["sent"] = 4321
    assert "4321 requests sent" in ray_cluster_report.render(data)
    assert "4321" not in text
