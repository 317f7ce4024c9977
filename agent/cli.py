"""The `obsconform` command line (click): doctor, demo, run, analyze, report."""

from __future__ import annotations

import json
import logging
import signal
import socket
import sys
from pathlib import Path

import click

from agent import __version__
from agent.errors import ObsconformError

EXIT_USAGE = 1


def _fail(message: str) -> None:
    click.echo(f"obsconform: error: {message}", err=True)
    sys.exit(EXIT_USAGE)


def _progress(msg: str) -> None:
    click.echo(f"· {msg}", err=True)


def _sigterm_to_exit(signum, frame) -> None:
    # SIGTERM unwinds like Ctrl-C, so every cleanup (probe detach, SUT stop) runs.
    raise KeyboardInterrupt


class Cli(click.Group):
    """Turns ObsconformError and interrupts into one line on stderr and exit code 1."""

    def invoke(self, ctx: click.Context):
        signal.signal(signal.SIGTERM, _sigterm_to_exit)
        try:
            return super().invoke(ctx)
        except ObsconformError as e:
            _fail(str(e))
        except KeyboardInterrupt:
            _fail("interrupted; probes detached, evidence recorded so far kept")
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as e:  # a bug of ours: still one line and exit 1, traceback with -v
            logging.getLogger("obsconform").debug("internal error", exc_info=True)
            _fail(f"internal error: {type(e).__name__}: {e} (run with -v for the traceback; please report it)")


@click.group(cls=Cli, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="obsconform")
@click.option("-v", "--verbose", is_flag=True, help="Log debug details to stderr.")
def cli(verbose: bool) -> None:
    """Does a service's telemetry tell the truth? eBPF kernel truth vs its spans and metrics."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


@cli.command()
@click.option("--print-bpf", is_flag=True, help="Print the eBPF C source and the -D flags a run compiles, then exit.")
@click.option("--capture-bytes", default=1024, type=click.IntRange(256, 4096), help="With --print-bpf: capture size.")
def doctor(print_bpf: bool, capture_bytes: int) -> None:
    """Check that this host can run the agent, and say what to fix."""
    from agent.doctor import render, run_doctor

    if print_bpf:
        from agent.kernel.probes import ProbeConfig, bpf_source

        click.echo(bpf_source(ProbeConfig(capture_bytes=capture_bytes)))
        return

    items = run_doctor()
    click.echo(render(items))
    sys.exit(0 if all(i.status != "fail" for i in items) else EXIT_USAGE)


def _finish(result, html: Path | None = None) -> None:
    from conformance import render_summary

    if html is not None:
        from conformance.html import write_html

        write_html(result.report, html, result.run_dir)
    click.echo(render_summary(result.report, report_path=result.report_path))
    sys.exit(result.exit_code)


def _common_run_options(f):
    opts = [
        click.option("--requests", "-n", default=200, envvar="OBSCONFORM_REQUESTS", help="Requests to send in the load phase."),
        click.option("--concurrency", "-c", default=4, envvar="OBSCONFORM_CONCURRENCY", help="Concurrent keep-alive connections."),
        click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("reports"), envvar="OBSCONFORM_OUT",
                     help="Where run directories and the latest report land."),
        click.option("--junit", type=click.Path(path_type=Path), default=None, help="Also write a JUnit XML file."),
        click.option("--capture-bytes", default=1024, type=click.IntRange(256, 4096), help="Request bytes captured in the kernel."),
        click.option("--check", "checks", multiple=True,
                     help="Run only these check IDs or prefixes (repeatable); the verdict is then at best inconclusive."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


@cli.command()
@click.option("--exec", "exec_cmd", help="Launch the SUT with this command and target its process tree.")
@click.option("--pid", type=int, help="Target this running process and its descendants.")
@click.option("--port", "target_port", type=int, help="Target the process tree listening on this TCP port.")
@click.option("--cgroup", help="Target every process of this cgroup v2 directory (filtered in the kernel).")
@click.option("--ringbuf-pages", default=4096, envvar="OBSCONFORM_RINGBUF_PAGES",
              help="Kernel ring-buffer size in pages (a power of two; 4096 = 16 MiB).")
@click.option("--max-connections", default=65536, envvar="OBSCONFORM_MAX_CONNECTIONS",
              help="Connections the kernel tracks at once (64..4194304).")
@click.option("--url", required=True,
              help="Base URL of the SUT, e.g. http://127.0.0.1:8080; its path prefixes every scenario "
                   "path and --path; with neither, the URL is the endpoint to load, requested exactly.")
@click.option("--metrics-url", help="The SUT's Prometheus /metrics URL.")
@click.option("--path", "paths", multiple=True,
              help="Path to GET in the load phase, under --url's path (repeatable; default: the --url "
                   "endpoint itself) when no --scenario is given.")
@click.option("--scenario", "scenario_file", type=click.Path(path_type=Path), envvar="OBSCONFORM_SCENARIO",
              help="Scenario file (JSON or YAML): routes, fan-out routes, catalogue, load mix. See docs/SCENARIO.md.")
@click.option("--catalog", type=click.Path(path_type=Path), envvar="OBSCONFORM_CATALOG",
              help="Errcode catalogue file (JSON or YAML); overrides the scenario's catalogue.")
@click.option("--profile", default="errortrace-0.4", envvar="OBSCONFORM_PROFILE", help="Conformance profile.")
@click.option("--no-ebpf", is_flag=True, help="Degraded mode: no kernel truth; KT checks are inconclusive.")
@click.option("--otlp-listen", envvar="OBSCONFORM_OTLP_LISTEN", show_default=False,
              help="HOST:PORT of the OTLP/HTTP receiver the SUT exports to "
                   "[default: 127.0.0.1:4318; a free port with --exec].")
@click.option("--otlp-grpc-listen", envvar="OBSCONFORM_OTLP_GRPC_LISTEN", show_default=False,
              help="Also receive OTLP/gRPC on HOST:PORT (e.g. 127.0.0.1:4317); an --exec SUT then "
                   "exports over gRPC [default: off].")
@click.option("--sink-listen", envvar="OBSCONFORM_SINK_LISTEN", show_default=False,
              help="HOST:PORT of the downstream sink the SUT's fan-out routes call [default: a free port].")
@click.option("--html", type=click.Path(path_type=Path), default=None, help="Also write a self-contained HTML report.")
@click.option("--agent", "agent_url", envvar="OBSCONFORM_AGENT",
              help="Run on a remote `obsconform serve` at this URL instead of locally.")
@click.option("--token-file", type=click.Path(path_type=Path), envvar="OBSCONFORM_TOKEN_FILE",
              help="File holding the remote agent's bearer token (with --agent).")
@_common_run_options
def run(exec_cmd, pid, target_port, cgroup, ringbuf_pages, max_connections, url, metrics_url, paths,
        scenario_file, catalog, profile, no_ebpf, otlp_listen, otlp_grpc_listen, sink_listen, html, agent_url, token_file, requests, concurrency, out_dir,
        junit, capture_bytes, checks) -> None:
    """Run the conformance checks against a service; exit 0 compliant, 2 non-compliant, 3 inconclusive."""
    from agent.runner import RunConfig, run as do_run

    cfg = RunConfig(url=url, exec_cmd=exec_cmd, pid=pid, port=target_port, cgroup=cgroup,
                    ringbuf_pages=ringbuf_pages, max_connections=max_connections,
                    metrics_url=metrics_url, paths=list(paths) or None,
                    requests=requests, concurrency=concurrency, out_dir=out_dir, junit=junit,
                    capture_bytes=capture_bytes, no_ebpf=no_ebpf, checks=list(checks) or None,
                    scenario_file=scenario_file, catalog=catalog, profile=profile,
                    otlp_listen=otlp_listen, otlp_grpc_listen=otlp_grpc_listen, sink_listen=sink_listen)
    if agent_url:
        from agent.remote import run_from_cli

        from agent.scenario import PROFILES

        if profile not in PROFILES:
            raise ObsconformError(f"--profile {profile!r} is not supported; supported: {', '.join(PROFILES)}")
        cfg.validate_checks()  # before anything is submitted
        # Files are read here, on the client: the agent gets the scenario inline, catalogue included.
        scenario = cfg.resolved_scenario() if scenario_file or catalog else None
        _finish(run_from_cli(agent_url, token_file, out_dir=out_dir, junit=junit, progress=_progress,
                             exec_cmd=exec_cmd, pid=pid, port=target_port, cgroup=cgroup,
                             ringbuf_pages=ringbuf_pages, max_connections=max_connections,
                             url=url, metrics_url=metrics_url,
                             paths=None if scenario else list(paths), scenario=scenario,
                             no_ebpf=no_ebpf, otlp_listen=otlp_listen, otlp_grpc_listen=otlp_grpc_listen,
                             sink_listen=sink_listen,
                             requests=requests, concurrency=concurrency,
                             capture_bytes=capture_bytes, checks=list(checks)), html)
    _finish(do_run(cfg, progress=_progress), html)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@cli.command()
@click.option("--no-ebpf", is_flag=True, help="Degraded mode: no kernel truth.")
@_common_run_options
def demo(no_ebpf, requests, concurrency, out_dir, junit, capture_bytes, checks) -> None:
    """Run the bundled reference service end to end and print the report path."""
    from agent.runner import RunConfig, run as do_run
    from examples.refservice import SCENARIO_PATH

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    # The reference service's scenario exercises every phase: fan-out, bizCode, errcodes, load.
    cfg = RunConfig(url=url, exec_cmd=f"{sys.executable} -m examples.refservice --port {port}",
                    metrics_url=f"{url}/metrics", scenario_file=SCENARIO_PATH, requests=requests,
                    concurrency=concurrency, out_dir=out_dir, junit=junit, capture_bytes=capture_bytes,
                    no_ebpf=no_ebpf, checks=list(checks) or None)
    _finish(do_run(cfg, progress=_progress))


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Where the latest report is copied (default: the run directory's reports root).")
@click.option("--check", "checks", multiple=True, help="Run only these check IDs (repeatable).")
def analyze(run_dir: Path, out_dir: Path | None, checks) -> None:
    """Recompute the report of RUN_DIR from its evidence, offline."""
    from agent.evidence import load_meta
    from agent.runner import judge

    load_meta(run_dir)  # a clear error when RUN_DIR is not a run directory
    out = out_dir or (run_dir.parent.parent if run_dir.parent.name == "runs" else run_dir)
    _finish(judge(run_dir, out, checks=list(checks) or None))


@cli.command()
@click.option("--listen", default="127.0.0.1:9477", envvar="OBSCONFORM_LISTEN",
              help="HOST:PORT to listen on; a non-loopback address needs --token-file.")
@click.option("--token-file", type=click.Path(path_type=Path), envvar="OBSCONFORM_TOKEN_FILE",
              help="Bearer token clients must send (default on loopback: generated in --reports-dir).")
@click.option("--tls-cert", type=click.Path(path_type=Path), help="Serve HTTPS with this certificate (PEM).")
@click.option("--tls-key", type=click.Path(path_type=Path), help="Private key of --tls-cert (PEM).")
@click.option("--allow-exec", is_flag=True, help="Accept run specs that launch a command (exec).")
@click.option("--reports-dir", type=click.Path(path_type=Path), default=Path("/var/lib/obsconform/reports"),
              envvar="OBSCONFORM_REPORTS_DIR", help="Run index, run directories and reports.")
@click.option("--run-timeout", type=click.FloatRange(min=1), default=1800.0, help="Seconds before a run is aborted.")
def serve(listen, token_file, tls_cert, tls_key, allow_exec, reports_dir, run_timeout) -> None:
    """Run the agent as a daemon: HTTP API under /v1, one run at a time, others queued."""
    from agent.daemon import DaemonConfig, serve as run_daemon

    sys.exit(run_daemon(DaemonConfig(listen=listen, token_file=token_file, tls_cert=tls_cert, tls_key=tls_key,
                                     allow_exec=allow_exec, reports_dir=reports_dir, run_timeout_s=run_timeout)))


@cli.group()
def report() -> None:
    """Show, validate or convert a CNCF-compliance-report.json."""


def _load_report(path: Path, *, check_schema: bool = True) -> dict:
    """The decoded report; with ``check_schema``, refused unless it matches the report schema."""
    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise ObsconformError(f"cannot read {path}: {e.strerror}") from e
    except ValueError as e:
        raise ObsconformError(f"{path} is not JSON ({e}); give a CNCF-compliance-report.json") from e
    if check_schema:
        from conformance import validate_report

        errors = validate_report(report)
        if errors:
            more = f"; +{len(errors) - 1} more" if len(errors) > 1 else ""
            raise ObsconformError(f"{path} is not a CNCF-compliance-report.json ({errors[0]}{more}); "
                                  f"see `obsconform report validate {path}`")
    return report


@report.command("show")
@click.argument("file", type=click.Path(path_type=Path))
def report_show(file: Path) -> None:
    """Print the human summary of a report."""
    from conformance import render_summary

    click.echo(render_summary(_load_report(file), report_path=file))


@report.command("validate")
@click.argument("file", type=click.Path(path_type=Path))
def report_validate(file: Path) -> None:
    """Validate a report against the shipped JSON Schema."""
    from conformance import validate_report

    errors = validate_report(_load_report(file, check_schema=False))
    if errors:
        for e in errors:
            click.echo(f"invalid: {e}", err=True)
        raise ObsconformError(f"{file} does not match the report schema ({len(errors)} problems)")
    click.echo(f"{file}: valid")


@report.command("junit")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None, help="Write here instead of stdout.")
def report_junit(file: Path, output: Path | None) -> None:
    """Convert a report to JUnit XML."""
    from agent.evidence import write_text_atomic
    from conformance import render_junit

    xml = render_junit(_load_report(file))
    if output:
        write_text_atomic(output, xml)
    else:
        click.echo(xml)


@report.command("html")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None, help="Default: FILE with .html.")
@click.option("--evidence", type=click.Path(path_type=Path), default=None,
              help="The run's evidence directory, for the charts (default: the report's, or the one "
                   "downloaded next to FILE by run --agent).")
def report_html(file: Path, output: Path | None, evidence: Path | None) -> None:
    """Write a self-contained HTML page: verdict, check table, charts."""
    from conformance.html import find_evidence, write_html

    report = _load_report(file)
    path = write_html(report, output or file.with_suffix(".html"), evidence or find_evidence(report, file))
    click.echo(f"wrote {path}")


def main() -> None:
    # Usage errors exit 1 like every other harness error (click's own code 2 would read as
    # "non-compliant" to a CI gate) and say it in one line.
    try:
        code = cli.main(prog_name="obsconform", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as e:  # a bare group: show its help
        click.echo(e.format_message())
        sys.exit(0)
    except click.UsageError as e:
        where = f"obsconform {e.ctx.command_path.split(' ', 1)[1]}" if e.ctx and " " in e.ctx.command_path else "obsconform"
        _fail(f"{e.format_message()} (see `{where} --help`)")
    except click.ClickException as e:
        _fail(e.format_message())
    except click.exceptions.Abort:
        _fail("aborted")
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
