"""pyarrow is imported only on Parquet paths: a JSONL job never pays its start-up time and memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]

# A whole run in a fresh interpreter: the fake Space in-process, then app.run; prints
# the modules that matter and the outcome as one JSON line.
RUN_IN_CHILD = textwrap.dedent("""
    import asyncio, json, sys
    from pipeline.app import RunOptions, run
    from pipeline.settings import ClientSettings, Timeouts
    from pipeline.fake_space import FakeSpaceConfig, run_fake_space

    async def main(source, output, errors):
        async with run_fake_space(FakeSpaceConfig(gradio_major=4, latency=0.0, chunks=2)) as space:
            client = ClientSettings(urls=(space.url,), timeouts=Timeouts(connect=5, read=5, total=20))
            options = RunOptions(input=source, output=output, errors=errors, client=client,
                                 progress=False)
            return (await run(options)).exit_code

    code = asyncio.run(main(*sys.argv[1:4]))
    print(json.dumps({"exit": code, "pyarrow": "pyarrow" in sys.modules,
                      "numpy": "numpy" in sys.modules}))
""")


def run_child(source: Path, output: Path) -> dict[str, object]:
    errors = output.with_suffix(".errors.jsonl")
    result = subprocess.run([sys.executable, "-c", RUN_IN_CHILD, str(source), str(output),
                             str(errors)], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    report: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return report


def test_importing_the_cli_and_the_app_does_not_import_pyarrow() -> None:
    code = "import pipeline.cli, pipeline.app, sys; assert 'pyarrow' not in sys.modules, 'pyarrow'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr


def test_a_jsonl_to_jsonl_run_never_imports_pyarrow(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": str(i), "prompt": f"q{i}"}) + "\n"
                              for i in range(5)) + "not json\n")
    output = tmp_path / "out.jsonl"
    report = run_child(source, output)
    assert report == {"exit": 3, "pyarrow": False, "numpy": False}  # 3: the bad line
    assert len(output.read_text().splitlines()) == 5
    report = run_child(source, output)  # a resumed run reads the output and errors back
    assert report == {"exit": 3, "pyarrow": False, "numpy": False}


def test_a_parquet_input_does_import_it(tmp_path: Path) -> None:
    # The check above could pass vacuously if the child never reported its modules.
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "prompt": ["q1", "q2"]}), source)
    report = run_child(source, tmp_path / "out.jsonl")
    assert report["exit"] == 0 and report["pyarrow"] is True
