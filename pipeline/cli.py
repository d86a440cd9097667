"""The ``qwen-batch`` command line (Click). Commands stay thin: they parse, then call :mod:`.app`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import cloup
from click.core import ParameterSource

from . import __version__
from .alloc import pin_mmap_threshold, prefer_system_arrow_pool
from .app import (
    EXIT_ENDPOINT_DOWN,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    RunOptions,
    RunOutcome,
    run,
)
from .config import env_name, load_config
from .durations import seconds_until
from .endpoints import MAX_COOLDOWN
from .engines import ENGINES
from .errors import (
    ConfigError,
    InputFileError,
    LockedError,
    ModelNotFoundError,
    OutputError,
    QwenBatchError,
)
from .provider import Qwen_Qwen_2_72B
from .proxies import check_proxy, proxy_for
from .readers import FORMAT_CHOICES
from .rowspec import RowSpec
from .sessions import tls_context
from .settings import (
    BatchSettings,
    ClientSettings,
    EngineSettings,
    RetryPolicy,
    Timeouts,
    default_of,
)
from .writers import default_errors_path, default_output_path, legacy_output_path

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

# The commands, by what they are for, in `qwen-batch --help`.
BATCH = cloup.Section("Batch jobs")
ENDPOINTS = cloup.Section("Endpoints")
TRY_OUT = cloup.Section("Trying it out (no network)")


def _load_config_file(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Eager ``--config``: its values become the command's defaults (below env and CLI)."""
    if value:
        # Keys are the options' long names (url, errors, system...), as on the command line.
        known = {opt[2:]: p.name for p in ctx.command.params if p.name and p.name != "config"
                 for opt in p.opts if opt.startswith("--")}
        multiple = {p.name for p in ctx.command.params if getattr(p, "multiple", False)}
        try:
            values = load_config(value, ctx.info_name or "run", known)
        except ConfigError as exc:
            raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
        for name in multiple & set(values):
            if isinstance(values[name], str):
                values[name] = [values[name]]
        ctx.default_map = {**(ctx.default_map or {}), **values}
    return value


_F = TypeVar("_F", bound=Callable[..., Any])


def _d(cls: type, name: str) -> Any:
    """An option's default: the settings field's own (see :mod:`.settings`), never a copy."""
    return default_of(cls, name)


def opt(*decls: str, **kwargs: Any) -> Callable[[_F], _F]:
    """A Click option that can also come from ``QWEN_BATCH_<NAME>``."""
    long_name = next(d for d in decls if d.startswith("--"))
    kwargs.setdefault("envvar", env_name(long_name))
    kwargs.setdefault("show_envvar", True)
    return click.option(*decls, **kwargs)


def _check_proxy(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """``--proxy`` checked before anything runs: a usage error (exit 2) that masks the password."""
    if not value:
        return None
    try:
        return check_proxy(value)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


def _check_ca_bundle(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value:
        try:
            tls_context(value)
        except ConfigError as exc:
            raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
    return value


def _endpoint_proxies(urls: tuple[str, ...], proxy: str | None) -> None:
    """Fail with a usage error now if a proxy variable of the environment is malformed."""
    for url in urls:
        try:
            proxy_for(url, proxy)
        except ConfigError as exc:
            raise click.UsageError(str(exc)) from None


def endpoint_options(url_help: str) -> Callable[[_F], _F]:
    """``--url`` (repeatable), ``--proxy``, ``--ca-bundle`` and ``--hf-token``: how every command reaches the Space."""
    options = [
        opt("--url", "urls", multiple=True, default=list(_d(ClientSettings, "urls")),
            show_default=True, help=url_help),
        opt("--proxy", callback=_check_proxy,
            help="HTTP(S) proxy URL, http://[user:password@]host:port; wins over HTTP_PROXY/"
            "HTTPS_PROXY/NO_PROXY (honoured otherwise). Credentials are never logged."),
        opt("--ca-bundle", type=click.Path(dir_okay=False), callback=_check_ca_bundle,
            help="PEM file of the CA certificates to trust instead of the system's "
            "(SSL_CERT_FILE is honoured without it)."),
        opt("--hf-token", envvar=["QWEN_BATCH_HF_TOKEN", "HF_TOKEN"],
            help="Hugging Face token (env HF_TOKEN); never logged or written."),
    ]

    def apply(command: _F) -> _F:
        for option in reversed(options):
            command = option(command)
        return command

    return apply


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Logs to whatever ``sys.stderr`` is at the time (tests swap it), never to stdout."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        """The stream is always the current stderr."""


@cloup.group(context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "-V", "--version", prog_name="qwen-batch")
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv for debug).")
def main(verbose: int) -> None:
    """Batch prompts through the Qwen2-72B-Instruct Space, crash-safe and resumable.

    \b
    Quick start (no network needed):
      qwen-batch demo
    Real work:
      qwen-batch run prompts.jsonl -o completions.jsonl
    """
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)


@main.command("run", context_settings=CONTEXT_SETTINGS, section=BATCH)
@click.argument("input_path", metavar="INPUT", envvar="QWEN_BATCH_INPUT")
@cloup.option_group(
    "Input",
    opt("--input-format", type=click.Choice(list(FORMAT_CHOICES)),
        help="Override the suffix (.gz/.zst are still decompressed)."),
    opt("--csv-infer-types", is_flag=True, help="CSV/TSV input: let pyarrow type the columns "
        "(numbers, booleans, timestamps) instead of reading every cell as text."),
    opt("--max-record-bytes", type=click.IntRange(min=1), default=_d(RunOptions, "max_record_bytes"),
        show_default=True,
        help="Largest accepted input line/row."),
)
@cloup.option_group(
    "Prompt building",
    opt("--prompt-field", default=_d(RowSpec, "prompt_field"), show_default=True,
        help="Column holding the prompt text."),
    opt("--id-field", default=_d(RowSpec, "id_field"), show_default=True,
        help="Unique row id (rows without one get an id from their content)."),
    opt("--system-field", default=_d(RowSpec, "system_field"), show_default=True,
        help="Column holding a row's own system prompt, if any."),
    opt("--messages-field", default=_d(RowSpec, "messages_field"), show_default=True,
        help="A chat list of {role, content}, folded into one prompt."),
    opt("--template", help='Build the prompt from columns, e.g. "Summarise: {text}".'),
    opt("--system", "default_system", help="System prompt for rows without one."),
    opt("--samples", type=click.IntRange(1, 10_000), default=_d(BatchSettings, "samples"),
        show_default=True,
        help="Completions per prompt (records get a `sample` field)."),
)
@cloup.option_group(
    "Output",
    opt("-o", "--output", help="Completions file (.jsonl or .parquet) or - for stdout.  "
        "[default: <input name>.completions.jsonl beside the input; needed with - as INPUT]"),
    opt("--errors", "errors_path", help="Errors file.  [default: <output stem>.errors.jsonl; "
        "<input name>.errors.jsonl when the output is stdout; stdin to stdout needs it]"),
    opt("--output-format", type=click.Choice(["jsonl", "parquet"]), help="Override the suffix."),
    opt("--keep", multiple=True, help="Input column to copy into each output record (repeatable)."),
    opt("--rows-per-file", type=click.IntRange(min=1),
        help="Write OUTPUT as a directory of part files of at most N records each "
        "(part-000000.jsonl, ...; format from --output-format or the directory's suffix)."),
    opt("--summary", "summary_path", help="Also write the summary as JSON to this file."),
)
@cloup.option_group(
    "Endpoint",
    endpoint_options("The Space, or a copy of it; repeat for several endpoints sharing the work."),
    opt("--model", default=_d(BatchSettings, "model"), show_default=True,
        help="Model to ask for: " + ", ".join(Qwen_Qwen_2_72B.models) + "."),
)
@cloup.option_group(
    "Retries and timeouts",
    opt("--max-attempts", type=click.IntRange(1, 100), default=_d(RetryPolicy, "max_attempts"),
        show_default=True,
        help="Attempts per row, the first included."),
    opt("--retry-delay", type=click.FloatRange(min=0), default=_d(RetryPolicy, "base_delay"),
        show_default=True,
        help="Base of the exponential backoff between attempts, in seconds."),
    opt("--retry-max-delay", type=click.FloatRange(min=0), default=_d(RetryPolicy, "max_delay"),
        show_default=True,
        help="Cap of one backoff wait (a server's Retry-After is honoured up to 300 s)."),
    opt("--min-chars", type=click.IntRange(min=1), default=_d(BatchSettings, "min_chars"),
        show_default=True,
        help="Shorter answers are incomplete and retried (empty ones always are)."),
    opt("--max-response-chars", type=click.IntRange(min=1),
        help="Fail a row whose answer grows past this many characters."),
    opt("--timeout", type=click.FloatRange(min=0, min_open=True), default=_d(Timeouts, "total"),
        show_default=True, help="Seconds per attempt, queue wait included."),
    opt("--idle-timeout", type=click.FloatRange(min=0, min_open=True), default=_d(Timeouts, "idle"),
        show_default=True, help="Seconds without new text once generation started."),
    opt("--read-timeout", type=click.FloatRange(min=0, min_open=True), default=_d(Timeouts, "read"),
        show_default=True, help="Seconds without any byte, from sending a request and then "
        "between reads (heartbeats come every 15 s)."),
    opt("--request-timeout", type=click.FloatRange(min=0, min_open=True),
        default=_d(Timeouts, "request"),
        show_default=True, help="Seconds for /config and the queue join to be answered, and for "
        "the answer stream (or an error page) to start, from sending; capped by --read-timeout."),
    opt("--connect-timeout", type=click.FloatRange(min=0, min_open=True),
        default=_d(Timeouts, "connect"),
        show_default=True, help="Seconds to open a connection (TCP and TLS)."),
    opt("--max-outage", type=click.FloatRange(min=0), default=_d(BatchSettings, "max_outage"),
        show_default=True,
        help="Seconds to wait for a failing or sleeping endpoint before stopping with exit 4."),
    opt("--connect-grace", type=click.FloatRange(min=0), default=_d(BatchSettings, "connect_grace"),
        show_default=True,
        help="Seconds to keep trying when no endpoint has been reached yet (refused, DNS, TLS, "
        "401/403/407, proxy down) before stopping with exit 4; no row is failed meanwhile."),
    opt("--failure-threshold", type=click.IntRange(min=1),
        default=_d(BatchSettings, "failure_threshold"), show_default=True,
        help="Failures in a row that bench an endpoint (its circuit opens) until a probe "
        "succeeds; the others take its share meanwhile."),
    opt("--probe-cooldown", type=click.FloatRange(min=0, min_open=True),
        default=_d(BatchSettings, "probe_cooldown"), show_default=True,
        help=f"Seconds a benched endpoint rests before one probe request; doubled after each "
        f"failed probe, up to {MAX_COOLDOWN:g} s."),
)
@cloup.option_group(
    "Pacing",
    opt("--concurrency", type=click.IntRange(1, 1024), default=_d(BatchSettings, "concurrency"),
        show_default=True,
        help="Most requests in flight at once (be polite to a free Space); the run adapts "
        "below it when the Space's queue pushes back."),
    opt("--fixed-concurrency", is_flag=True, help="Keep --concurrency fixed instead of adapting."),
    opt("--rate", type=click.FloatRange(min=0, min_open=True),
        help="Max request starts per second (retries included)."),
)
@cloup.option_group(
    "Run control",
    opt("--limit", type=click.IntRange(min=0), help="Do at most N rows this run."),
    opt("--deadline", help="Stop starting requests after this long (55m, 1h30m) or at this "
        "clock time (06:30); unfinished rows are left for the next run."),
    opt("--grace", type=click.FloatRange(min=0), default=_d(BatchSettings, "grace"),
        show_default=True,
        help="Seconds requests in flight may take after the deadline."),
    opt("--max-consecutive-failures", type=click.IntRange(min=1),
        default=_d(BatchSettings, "max_consecutive_failures"), show_default=True,
        help="Stop with exit 4 after this many rows fail in a row."),
    opt("--overwrite", is_flag=True, help="Start fresh instead of resuming."),
    opt("--resume-any", is_flag=True, help="Resume even if OUTPUT was made from another input "
        "(by default that is refused: its ids would skip rows never done)."),
    opt("--no-progress", is_flag=True, help="No progress bar (also off when stderr is no TTY)."),
    opt("--config", type=click.Path(dir_okay=False), is_eager=True, expose_value=False,
        callback=_load_config_file, help="TOML file of option defaults (see configs/default.toml)."),
)
@cloup.option_group(
    "Engine",
    opt("--engine", type=click.Choice(list(ENGINES)), default=_d(EngineSettings, "kind"),
        show_default=True,
        help="Where requests run: this process, or Ray Data actors (pip install "
        "'qwen-batch[ray]'); output, resume and exit codes are the same."),
    opt("--address", "ray_address", help="Ray: the cluster to join ('auto': the one running "
        "here).  [default: start a private local Ray for the run]"),
    opt("--actors", type=click.IntRange(1, 1024), default=_d(EngineSettings, "actors"),
        show_default=True,
        help="Ray: actors, each with one pooled session and its own in-flight limit."),
    opt("--per-actor-concurrency", type=click.IntRange(1, 1024),
        help="Ray: requests in flight per actor.  [default: --concurrency / --actors]"),
    opt("--engine-connect-timeout", type=click.FloatRange(min=0, min_open=True),
        default=_d(EngineSettings, "connect_timeout"), show_default=True,
        help="Ray: seconds to join the cluster at --address, then exit 4."),
    opt("--engine-start-timeout", type=click.FloatRange(min=0, min_open=True),
        default=_d(EngineSettings, "start_timeout"), show_default=True,
        help="Ray: seconds for the first actor to start, then exit 4."),
)
def run_command(input_path: str, **o: Any) -> None:
    """Run every prompt of INPUT: JSONL (.gz/.zst too), Parquet (a file or a dataset
    directory), CSV/TSV, or - for JSONL on stdin (with -o).

    Output is appended as rows finish; run the same command again to resume:
    rows already in OUTPUT are skipped and failed rows are retried.

    \b
    Example:
      qwen-batch run prompts.jsonl -o out.jsonl --concurrency 8 --template "Summarise: {text}"
    \b
    Exit codes: 0 all rows done, 3 some rows failed, 2 usage/config/input file,
    4 endpoint unreachable or failing, 130 interrupted, 1 anything else.
    """
    sys.exit(_execute(run_options(input_path, o)))


def run_options(input_path: str, o: dict[str, Any]) -> RunOptions:
    """The run's options and settings from ``run``'s parsed parameters (in a Click context).

    Usage errors (exit 2) are raised here; every default comes from the settings
    classes through the options' own defaults (``_d``).
    """
    try:
        model = Qwen_Qwen_2_72B.get_model(o["model"])
        spec = RowSpec(prompt_field=o["prompt_field"], id_field=o["id_field"],
                       system_field=o["system_field"], messages_field=o["messages_field"],
                       template=o["template"], default_system=o["default_system"],
                       keep=tuple(o["keep"]))
    except (ConfigError, ModelNotFoundError) as exc:
        raise click.UsageError(str(exc)) from None
    try:
        deadline = seconds_until(o["deadline"]) if o["deadline"] else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--deadline") from None
    _endpoint_proxies(tuple(o["urls"]), o["proxy"])
    if o["output"] is None:
        legacy = legacy_output_path(input_path)
        if legacy is not None and os.path.exists(legacy) \
                and not os.path.exists(default_output_path(input_path)):
            raise click.UsageError(
                f"{legacy} exists: earlier versions wrote there by default; now the default is "
                f"{default_output_path(input_path)} (so that inputs differing only in suffix "
                f"never share an output). Resume it with -o {legacy}, or rename it.")
    if input_path == "-" and o["output"] is None:
        raise click.UsageError("reading stdin (-) needs -o OUTPUT: a file, with the errors "
                               "beside it, or - for stdout, with --errors FILE")
    output = o["output"] or default_output_path(input_path)
    if o["rows_per_file"] is not None and output != "-":
        output = output.rstrip("/") or output  # the lock and errors file go beside it
    client = ClientSettings(
        urls=tuple(dict.fromkeys(o["urls"])), proxy=o["proxy"], hf_token=o["hf_token"],
        ca_bundle=o["ca_bundle"], max_response_chars=o["max_response_chars"],
        timeouts=Timeouts(connect=o["connect_timeout"], read=o["read_timeout"],
                          idle=o["idle_timeout"], total=o["timeout"],
                          request=o["request_timeout"]))
    batch = BatchSettings(
        concurrency=o["concurrency"], adaptive=not o["fixed_concurrency"], rate=o["rate"],
        policy=RetryPolicy(max_attempts=o["max_attempts"], base_delay=o["retry_delay"],
                           max_delay=o["retry_max_delay"]),
        samples=o["samples"], limit=o["limit"], model=model, min_chars=o["min_chars"],
        deadline=deadline, grace=o["grace"],
        max_consecutive_failures=o["max_consecutive_failures"],
        failure_threshold=o["failure_threshold"], probe_cooldown=o["probe_cooldown"],
        max_outage=o["max_outage"], connect_grace=o["connect_grace"])
    engine = EngineSettings(kind=o["engine"], address=o["ray_address"], actors=o["actors"],
                            per_actor_concurrency=o["per_actor_concurrency"],
                            connect_timeout=o["engine_connect_timeout"],
                            start_timeout=o["engine_start_timeout"])
    return RunOptions(
        input=input_path,
        output=output,
        errors=_errors_path(input_path, output, o["errors_path"]),
        client=client,
        batch=batch,
        engine=engine,
        input_format=o["input_format"],
        output_format=o["output_format"],
        spec=spec,
        overwrite=o["overwrite"],
        resume_any=o["resume_any"],
        require_id=click.get_current_context().get_parameter_source("id_field")
        is not ParameterSource.DEFAULT,
        rows_per_file=o["rows_per_file"],
        progress=not o["no_progress"] and sys.stderr.isatty(),
        summary_path=o["summary_path"],
        max_record_bytes=o["max_record_bytes"],
        csv_infer_types=o["csv_infer_types"],
    )


def _errors_path(input_path: str, output: str, errors: str | None) -> str:
    """``--errors``, else beside the output, else (stdout) beside the input, never shared."""
    if errors:
        return errors
    if output != "-":
        return default_errors_path(output)
    if input_path == "-":
        raise click.UsageError("stdin to stdout leaves no file to put the errors beside: "
                               "give --errors FILE")
    return input_path.rstrip("/") + ".errors.jsonl"


def _execute(options: RunOptions) -> int:
    # Process-wide, so here and not in app.run: a program calling the library keeps its own.
    pin_mmap_threshold()  # before the run's big buffers: keeps a long run's RSS flat
    prefer_system_arrow_pool()  # applied on the first Parquet use (JSONL never loads Arrow)
    try:
        outcome = asyncio.run(run(options))
    except KeyboardInterrupt:  # Ctrl-C before the run installed its own handler
        click.echo("qwen-batch: interrupted before the run started; nothing was written", err=True)
        return EXIT_INTERRUPTED
    except (InputFileError, ConfigError) as exc:
        click.echo(f"qwen-batch: error: {exc}", err=True)
        return EXIT_USAGE
    except LockedError as exc:
        click.echo(f"qwen-batch: {exc}", err=True)
        return EXIT_FAILURE
    except (OutputError, QwenBatchError) as exc:
        click.echo(f"qwen-batch: error: {exc}", err=True)
        return EXIT_FAILURE
    click.echo(outcome.summary.render(), err=True)
    return outcome.exit_code


@main.command(context_settings=CONTEXT_SETTINGS, section=ENDPOINTS)
@cloup.option_group("Endpoint", endpoint_options("Endpoint to check (repeatable)."))
@cloup.option_group(
    "Probe",
    opt("--timeout", type=click.FloatRange(min=0, min_open=True), default=120.0,
        show_default=True, help="Seconds for the probe request, queue wait included."),
)
def check(urls: tuple[str, ...], timeout: float, proxy: str | None, hf_token: str | None,
          ca_bundle: str | None) -> None:
    """Tell what an endpoint is and whether a batch would work against it.

    Prints the Gradio version, protocol, API prefix, whether model_chat was
    found, and the latency of one tiny request. Exit 0 when every endpoint
    works, 4 when one would not.

    \b
    Example:
      qwen-batch check --url https://qwen-qwen2-72b-instruct.hf.space
    """
    from .check import check_endpoint

    usual = Timeouts()
    timeouts = Timeouts(total=timeout, read=min(usual.read, timeout),
                        idle=min(usual.idle, timeout))
    _endpoint_proxies(urls, proxy)

    async def go() -> list[Any]:
        return [await check_endpoint(url, timeouts=timeouts, proxy=proxy, hf_token=hf_token,
                                     ca_bundle=ca_bundle)
                for url in dict.fromkeys(urls)]

    reports = asyncio.run(go())
    for report in reports:
        click.echo(report.render())
    sys.exit(0 if all(r.ok for r in reports) else EXIT_ENDPOINT_DOWN)


@main.command(context_settings=CONTEXT_SETTINGS, section=TRY_OUT)
@cloup.option_group(
    "Prompts and results",
    click.option("--input", "input_path", type=click.Path(exists=True, dir_okay=False),
                 help="Prompts to run.  [default: the sample prompts shipped with qwen-batch]"),
    click.option("--output-dir", type=click.Path(file_okay=False),
                 help="Where to write the results.  [default: the demo folder above]"),
    click.option("--fresh", is_flag=True, help="Start over: drop the results of earlier runs first."),
)
@cloup.option_group(
    "Fake Space",
    click.option("--gradio", type=click.Choice(["4", "6"]), default="4", show_default=True,
                 help="Which Gradio shape the fake Space speaks."),
    click.option("--latency", type=float, default=0.3, show_default=True,
                 help="Seconds the fake Space takes per answer."),
)
def demo(input_path: str | None, output_dir: str | None, fresh: bool, gradio: str,
         latency: float) -> None:
    """Run the sample prompts through the whole pipeline against a local fake Space.

    Needs no network: the fake Space listens on 127.0.0.1. Some sample prompts
    ask it for faults (a cut connection, a full queue, an app error) so the
    retries show.

    Results go to a fixed folder in your cache, so running the demo again
    resumes: rows already done are skipped and the summary says how many.
    --fresh starts over; --output-dir writes elsewhere. The demo folder:

    \b
      $XDG_CACHE_HOME/qwen-batch/demo        when XDG_CACHE_HOME is set
      ~/.cache/qwen-batch/demo               else, on Linux and others
      ~/Library/Caches/qwen-batch/demo       on macOS
      %LOCALAPPDATA%\\qwen-batch\\Cache\\demo   on Windows
    """
    from .demo import demo_work_dir, sample_prompts

    out_dir = Path(output_dir) if output_dir else demo_work_dir()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise click.UsageError(f"cannot create the demo folder {out_dir}: {exc}; pass --output-dir") from None
    with contextlib.ExitStack() as stack:
        source = Path(input_path) if input_path else stack.enter_context(sample_prompts())
        output = str(out_dir / Path(default_output_path(str(source))).name)
        click.echo(f"Demo folder: {out_dir} (run again to resume, --fresh to start over)", err=True)
        code = _run_demo(str(source), output, fresh=fresh, gradio=int(gradio), latency=latency)
    click.echo(f"\nCompletions: {output}\nFirst records:", err=True)
    with open(output, encoding="utf-8") as handle:
        for _, line in zip(range(3), handle, strict=False):
            click.echo(line.rstrip())
    sys.exit(code)


def _run_demo(source: str, output: str, *, fresh: bool, gradio: int, latency: float) -> int:
    """One run of ``source`` against a fake Space started for it; the exit code, as ``run``'s."""
    from .fake_space import FakeSpaceConfig, run_fake_space

    async def go() -> RunOutcome:
        config = FakeSpaceConfig(gradio_major=gradio, latency=latency, chunks=10)
        async with run_fake_space(config) as space:
            click.echo(f"fake Space (Gradio {gradio} shape) on {space.url}: its answers echo "
                       "the prompt and end in a fixed line of non-ASCII text (an encoding "
                       "check); some sample prompts ask it for faults, so retries show",
                       err=True)
            options = RunOptions(
                input=source, output=output, errors=default_errors_path(output),
                client=ClientSettings(urls=(space.url,)),
                batch=BatchSettings(concurrency=8, policy=RetryPolicy(base_delay=0.05,
                                                                      max_delay=0.5)),
                progress=sys.stderr.isatty(), overwrite=fresh)
            return await run(options)

    try:
        outcome = asyncio.run(go())
    except LockedError as exc:  # the folder is fixed, so two demos at once meet here
        click.echo(f"qwen-batch: {exc}", err=True)
        sys.exit(EXIT_FAILURE)
    click.echo(outcome.summary.render(), err=True)
    if outcome.summary.skipped_done:
        click.echo(f"Resumed: {outcome.summary.skipped_done} rows were already done "
                   "(--fresh starts over).", err=True)
    return outcome.exit_code


@main.command("fake-space", context_settings=CONTEXT_SETTINGS, section=TRY_OUT)
@cloup.option_group(
    "Listening",
    click.option("--host", default="127.0.0.1", show_default=True,
                 help="Address to listen on (keep it on loopback for trials)."),
    click.option("--port", type=click.IntRange(0, 65535), default=7860, show_default=True,
                 help="Port to listen on (0: any free port)."),
)
@cloup.option_group(
    "Answers",
    click.option("--gradio", type=click.Choice(["4", "6"]), default="4", show_default=True,
                 help="Which Gradio version's wire format to speak."),
    click.option("--latency", type=click.FloatRange(min=0), default=0.3, show_default=True,
                 help="Seconds each answer takes to stream."),
    click.option("--chunks", type=click.IntRange(min=1), default=10, show_default=True,
                 help="Text chunks each answer is streamed in."),
    click.option("--heartbeat", type=click.FloatRange(min=0, min_open=True), default=15.0,
                 show_default=True, help="Seconds between heartbeats while a job waits."),
)
@cloup.option_group(
    "Queue",
    click.option("--concurrency-limit", type=click.IntRange(min=1),
                 help="Jobs running at once (others queue).  [default: no limit]"),
    click.option("--max-size", type=click.IntRange(min=0),
                 help="Waiting jobs allowed before joins get 503 Queue is full.  "
                 "[default: no limit]"),
)
@cloup.option_group(
    "Faults",
    click.option("--fault", multiple=True, metavar="NAME=RATE",
                 help="Fail this share of the joins with fault NAME (listed above), e.g. cut=0.1; "
                 "repeatable, rates add up to at most 1."),
)
def fake_space(port: int, host: str, gradio: str, latency: float, chunks: int,
               concurrency_limit: int | None, max_size: int | None, heartbeat: float,
               fault: tuple[str, ...]) -> None:
    """Serve a local fake of the Space, for trials without the network.

    \b
    Example:
      qwen-batch fake-space --port 7860 --fault cut=0.1
      qwen-batch run prompts.jsonl --url http://127.0.0.1:7860

    A prompt can ask for a fault itself: [fault:NAME] fails its first attempt,
    [fault:NAME:N] its first N. The faults (NAME), for --fault and for prompts:

    \b
      queue_full        the join answers 503 "Queue is full"
      cut               the connection drops halfway through the answer
      app_error         the job ends with success: false after 3 chunks
      unexpected_error  "Server stopped unexpectedly" halfway, then the connection drops
      stall             one chunk, then only heartbeats
      bad_json          a data line that is not JSON after the first chunk, then normal
      empty             the job completes with an empty answer
    """
    from .fake_space import FakeSpaceConfig, serve

    rates: dict[str, float] = {}
    for item in fault:
        name, _, rate = item.partition("=")
        try:
            rates[name] = float(rate)
        except ValueError:
            raise click.BadParameter(f"{item!r} is not NAME=RATE", param_hint="--fault") from None
    try:
        config = FakeSpaceConfig(gradio_major=int(gradio), latency=latency, chunks=chunks,
                                 concurrency_limit=concurrency_limit, max_size=max_size,
                                 heartbeat_interval=heartbeat, fault_rates=rates)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        serve(config, host, port)
    except OSError as exc:  # the port is taken, or the host is not an address of this machine
        click.echo(f"qwen-batch fake-space: cannot listen on {host}:{port}: "
                   f"{exc.strerror or exc}", err=True)
        sys.exit(EXIT_USAGE)


@main.command("sort", context_settings=CONTEXT_SETTINGS, section=BATCH)
@click.argument("output", type=click.Path(dir_okay=True))
def sort_command(output: str) -> None:
    """Rewrite the JSONL OUTPUT of a finished run in input order (position, then sample).

    A run appends records as they finish, so that a crash loses nothing; this puts
    them back in the order of the input. The file is replaced atomically (a sorted
    copy beside it, fsynced, then renamed) and memory stays bounded however big it
    is. Refused (exit 1) while a run writes OUTPUT. Parquet output needs no sorting:
    it is in input order already.

    \b
    Example:
      qwen-batch sort prompts.completions.jsonl
    """
    from .sort import sort_output

    if Path(output).suffix.lower() in (".parquet", ".pq"):
        click.echo(f"qwen-batch sort: {output} is Parquet, which is already in input order",
                   err=True)
        return
    try:
        count, changed = sort_output(output)
    except LockedError as exc:
        click.echo(f"qwen-batch sort: {exc}", err=True)
        sys.exit(EXIT_FAILURE)
    except OutputError as exc:
        click.echo(f"qwen-batch sort: error: {exc}", err=True)
        sys.exit(EXIT_FAILURE)
    click.echo(f"{output}: {count} records " + ("now in input order" if changed
                                                else "already in input order, left as is"),
               err=True)


@main.command("report", context_settings=CONTEXT_SETTINGS, section=BATCH)
@click.argument("output")
@cloup.option_group(
    "Input",
    click.option("--errors", "errors_path", help="The errors file of the run.  "
                 "[default: <output stem>.errors.jsonl beside OUTPUT]"),
)
@cloup.option_group(
    "Output",
    click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of text."),
    click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
                 help="Also draw latency and throughput over the run into this PNG "
                 "(needs matplotlib: pip install 'qwen-batch[plot]')."),
)
def report_command(output: str, errors_path: str | None, as_json: bool,
                   plot_path: str | None) -> None:
    """Summarise a finished OUTPUT: counts, latency and first-token percentiles,
    throughput over time and failing rows by error type.

    OUTPUT is a JSONL or Parquet output, or a --rows-per-file directory of parts;
    the errors file beside it is read too. Exit 2 when OUTPUT cannot be read.

    \b
    Example:
      qwen-batch report prompts.completions.jsonl --plot run.png
    """
    import json

    from .report import read_report, render

    output = output.rstrip("/") or output
    try:
        report = read_report(output, errors_path or default_errors_path(output))
    except OutputError as exc:
        click.echo(f"qwen-batch report: error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else render(report))
    if plot_path:
        from .report_plot import plot_report

        try:
            plot_report(report, plot_path)
        except ConfigError as exc:
            click.echo(f"qwen-batch report: {exc}", err=True)
            sys.exit(EXIT_USAGE)
        except OSError as exc:
            click.echo(f"qwen-batch report: cannot write {plot_path}: {exc.strerror or exc}",
                       err=True)
            sys.exit(EXIT_FAILURE)
        click.echo(f"plot written to {plot_path}", err=True)


if __name__ == "__main__":  # pragma: no cover
    main()
