"""``qwen-batch report --plot``: latency and throughput over the run as a PNG (matplotlib, optional)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from pipeline.errors import ConfigError
from pipeline.report import OutputReport

INSTALL_HINT = "pip install 'qwen-batch[plot]'"


def plot_report(report: OutputReport, path: str) -> None:
    """Draw latency (a sample of every record's duration) and records finished per bucket.

    Raises ConfigError when matplotlib is not installed, OSError if ``path`` cannot be written.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed (cron, servers)
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ConfigError(f"--plot needs matplotlib, which is not installed: {INSTALL_HINT}") from exc

    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(10, 6.5))
    try:
        points = sorted(report.points)
        times = [datetime.fromtimestamp(t, timezone.utc) for t, _ in points]
        top.scatter(times, [ms / 1000 for _, ms in points], s=6, alpha=0.5)
        top.set_ylabel("latency (s)")
        top.set_title(f"{report.output}: {report.records} records")
        top.grid(True, alpha=0.3)
        width, buckets = report.throughput()
        bottom.bar([start for start, _ in buckets], [count for _, count in buckets],
                   width=timedelta(minutes=width), align="edge", edgecolor="white")
        bottom.set_ylabel(f"records per {width} min")
        bottom.set_xlabel("finished at (UTC)")
        bottom.grid(True, alpha=0.3)
        fig.autofmt_xdate()
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=100)
    finally:
        plt.close(fig)
