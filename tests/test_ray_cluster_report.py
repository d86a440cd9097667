"""docs/ray.md's cluster measurements are bench/results/ray_cluster.json's, by script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "ray_cluster_report.py"


def test_the_docs_hold_the_text_rendered_from_the_committed_results() -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


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
