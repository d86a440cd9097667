"""Turn ``bench/results/ray_cluster.json`` (from ``bench/ray_cluster.py``) into the
"Measured on a local two-node cluster" text of docs/ray.md: ``bench/report.py`` fills
the doc's ``ray_cluster`` block with :func:`render` (``python bench/report.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "ray_cluster.json"


def _case(results: list[dict[str, Any]], name: str) -> dict[str, Any]:
    for entry in results:
        if entry.get("case") == name:
            return entry
    raise SystemExit(f"{RESULTS}: no {name!r} case; run bench/ray_cluster.py again")


def render(data: dict[str, Any]) -> str:
    meta, results = data["meta"], data["results"]
    fits, fitted = _case(results, "fits"), _case(results, "fitted")
    stopped, killed = _case(results, "sigint"), _case(results, "killed")
    nothing, token = _case(results, "nothing_listens"), _case(results, "no_token_mode")
    nodes = " + ".join(str(n) for n in fits["actors_per_node"])
    fitted_to = fitted["fitted_message"].split("running ", 1)[1].split(" actors", 1)[0]
    still = fitted["stalled"].split("; ")[-1]
    return "\n".join([
        f"**Measured on a local two-node cluster** (`bench/ray_cluster.py`, results in "
        f"`bench/results/ray_cluster.json`: {meta['cluster']}, ray {meta['ray']}, the fake "
        f"Space answering in {meta['latency_s']:g} s, this {meta['cpus']}-core machine shared "
        f"with other jobs, load average {meta['load_avg_end']:.1f} at the end):",
        "",
        "| case | what happened |",
        "|---|---|",
        f"| cluster start | head listening {meta['head_start_s']:.1f} s after `ray start`; "
        f"second node joined {meta['second_node_joined_s']:.1f} s after |",
        f"| `--actors {fits['actors_asked']} --per-actor-concurrency {fits['per_actor']}`, "
        f"{fits['rows']:,} rows | exit {fits['exit']} in {fits['wall_s']:.1f} s; first record "
        f"after {fits['first_record_s']:.1f} s; {fits['rows_per_s_after_first']:.1f} rows/s "
        f"after it ({fits['in_flight_ceiling']} in flight at most); actors {nodes} on the "
        "nodes |",
        f"| `--actors {fitted['actors_asked']}` | fitted to {fitted_to}; exit "
        f"{fitted['exit']} after the start timeout, {fitted['wall_s']:.1f} s in all "
        f"({still}) |",
        f"| Ctrl-C after {stopped['saved']} records | exit {stopped['exit']} "
        f"{stopped['exit_after_signal_s']:.1f} s after the signal, summary written "
        f"(`interrupted`: {str(stopped['summary_interrupted']).lower()}); no actor left "
        f"{stopped['actors_gone_after_exit_s']:.2f} s after |",
        f"| `kill -9` of the driver after {killed['saved']} records | no actor process left "
        f"{killed['actors_gone_after_kill_s']:.2f} s after the kill; {killed['sent']} requests "
        f"sent, {killed['saved']} saved ({killed['lost']} lost); spool left behind: "
        f"{'yes' if killed['spool_left_by_kill'] else 'no'}; a local-engine resume (exit "
        f"{killed['local_resume_exit']}) sent {killed['local_resume_sent']} requests for "
        f"{killed['missing_before_resume']} missing rows, every id once: "
        f"{'yes' if killed['ids_once'] else 'no'}; spool after it: "
        f"{'yes' if killed['spool_after_resume'] else 'none'} |",
        f"| nothing listening at `--address` | exit {nothing['exit']} in "
        f"{nothing['wall_s']:.1f} s (process start included) |",
        f"| token cluster, no `RAY_AUTH_MODE=token` | exit {token['exit']} in "
        f"{token['wall_s']:.1f} s, naming `RAY_AUTH_MODE=token`: "
        f"{'yes' if 'RAY_AUTH_MODE=token' in token['stalled'] else 'no'} |",
    ])
