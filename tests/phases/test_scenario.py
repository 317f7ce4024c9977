"""Scenario files: the reference scenario validates and resolves; every malformed one is a
one-line error that names the field and what is allowed (exit 1 through the CLI)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agent import scenario as S
from agent.errors import InputError
from examples.refservice import CATALOGUE_PATH, SCENARIO_PATH

ROOT = Path(__file__).resolve().parents[2]
MINIMAL = {"load": [{"path": "/a"}]}


def test_the_reference_scenario_validates_and_resolves():
    raw = json.loads(SCENARIO_PATH.read_text())
    s = S.from_file(SCENARIO_PATH)
    assert s["source"] == str(SCENARIO_PATH)
    assert s["routes"] == raw["routes"]
    assert s["fanout"] == raw["fanout"]
    assert (s["metric"], s["metrics_path"], s["health_path"], s["biz_code_header"]) == (
        raw["metric"], "/metrics", "/healthz", "X-Biz-Code")
    # The catalogue path is relative to the scenario file; entries are kept raw.
    assert s["errcodes_source"] == str(CATALOGUE_PATH)
    assert s["errcodes"] == json.loads(CATALOGUE_PATH.read_text())["errcodes"]
    assert s["errcodes_error"] == "" and "catalogue" not in s
    assert [(r["method"], r["path"], r["weight"]) for r in s["load"]] == [
        (r["method"], r["path"], 1) for r in raw["load"]]
    assert S.is_fanout(s, "/orders") and not S.is_fanout(s, "/items/1")


def test_a_resolved_scenario_validates_again_and_resolves_to_itself():
    s = S.from_file(SCENARIO_PATH)
    S.validate(s, "resolved")
    assert S.from_inline(json.loads(json.dumps(s))) == s


def test_yaml_and_json_scenarios_resolve_alike(tmp_path):
    raw = json.loads(SCENARIO_PATH.read_text())
    raw["catalogue"] = str(CATALOGUE_PATH)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    (tmp_path / "s.json").write_text(json.dumps(raw))
    from_yaml, from_json = S.from_file(tmp_path / "s.yaml"), S.from_file(tmp_path / "s.json")
    assert {**from_yaml, "source": ""} == {**from_json, "source": ""}


def test_the_default_scenario_comes_from_the_paths():
    s = S.from_paths(["/a", "/b?x=1", "/a"], metrics_url="http://h:1/prom")
    assert s["source"] == "default"
    assert s["routes"] == {"/a": "/a", "/b?x=1": "/b"}
    assert [r["path"] for r in s["load"]] == ["/a", "/b?x=1"]
    assert s["fanout"] == {"routes": []}
    assert (s["errcodes"], s["errcodes_source"], s["errcodes_error"]) == ([], "", "")
    assert s["metrics_path"] == "/prom" and s["uninstrumented"] == ["/prom"]
    assert S.from_paths(["/"])["metrics_path"] == ""  # no --metrics-url: nothing is scraped


def test_a_fanout_list_is_normalised_to_the_object_form():
    s = S.resolve({"load": [{"path": "/f"}], "fanout": ["/f"]}, source="t", base_dir=None)
    assert s["fanout"] == {"routes": ["/f"]} and S.is_fanout(s, "/f")


def with_(**fields):
    return {**MINIMAL, **fields}


INVALID = [
    pytest.param(with_(routes={"/a": "/a", "/x": 5}), "routes./x: must be a string route template", id="route-not-string"),
    pytest.param(with_(routes={"x": "/x"}), "routes.x: not allowed as a key; must be a concrete path", id="route-key-no-slash"),
    pytest.param({"load": []}, "load: must be a non-empty list of requests", id="empty-load"),
    pytest.param({"routes": {}}, "load: is required", id="no-load"),
    pytest.param({"load": [{"path": "/a", "method": "get"}]}, "load[0].method: must be an upper-case HTTP method", id="lower-case-method"),
    pytest.param({"load": [{"method": "GET"}]}, "load[0].path: is required", id="request-without-path"),
    pytest.param({"load": [{"path": "/a b"}]}, "load[0].path: must be a request target starting with /", id="path-with-space"),
    pytest.param({"load": [{"path": "/a", "headers": {"X-A": 1}}]}, "load[0].headers.X-A: must be a string header value", id="header-not-string"),
    pytest.param({"load": [{"path": "/a", "headers": {"bad name": "v"}}]}, "load[0].headers.bad name: not allowed as a key", id="bad-header-name"),
    pytest.param({"load": [{"path": "/a", "weight": 0}]}, "load[0].weight: must be an integer 1..1000", id="zero-weight"),
    pytest.param({"load": [{"path": "/a", "extra": 1}]}, "load[0].extra: unknown field; allowed: body, headers", id="unknown-request-field"),
    pytest.param(with_(fanout={"routes": ["nope"]}), "fanout.routes[0]: must be a route starting with /", id="fanout-route-no-slash"),
    pytest.param(with_(fanout={"routes": ["/zz"]}), "fanout.routes[0]: /zz is neither a path nor a template", id="fanout-route-unknown"),
    pytest.param(with_(fanout={"route": ["/a"]}), "fanout: must be {routes: [...]", id="fanout-bad-shape"),
    pytest.param(with_(routes={"/b": "/b"}), "load[0].path: /a is not a key of routes", id="load-path-not-a-route"),
    pytest.param(with_(metric=7), "metric: must be a metric name, or {name, labels", id="metric-number"),
    pytest.param(with_(metric={"name": "m", "labels": {"verb": "x"}}), "metric.labels.verb: unknown field; allowed: method, route, status", id="metric-label-key"),
    pytest.param(with_(profile="errortrace-0.3"), "profile: must be errortrace-0.4", id="unknown-profile"),
    pytest.param(with_(schema=2), "schema: must be 1", id="schema-version"),
    pytest.param(with_(health_path="healthz"), "health_path: must be a path starting with /", id="health-path"),
    pytest.param(with_(biz_code_header="X Biz"), "biz_code_header: must be an HTTP header name", id="biz-header"),
    pytest.param(with_(catalogue=""), "catalogue: must be a path to the errcode catalogue", id="empty-catalogue"),
    pytest.param(with_(catalogue="c.json", errcodes=[]), "catalogue: give either a catalogue path or inline errcodes", id="catalogue-and-inline"),
    pytest.param(with_(rotes={}), "rotes: unknown field; allowed: biz_code_header, catalogue", id="unknown-top-level-field"),
    pytest.param(["/a"], "(top level): must be a mapping of scenario fields", id="not-a-mapping"),
]


@pytest.mark.parametrize(("data", "fragment"), INVALID)
def test_an_invalid_scenario_names_the_field(tmp_path, data, fragment):
    path = tmp_path / "scenario.json"
    path.write_text(json.dumps(data))
    with pytest.raises(InputError) as e:
        S.from_file(path)
    message = str(e.value)
    assert message.startswith("scenario.json: ") and fragment in message, message
    assert "\n" not in message


@pytest.mark.parametrize(("name", "text", "fragment"), [
    ("s.json", '{"load": [', "s.json: not valid JSON (line 1 column 11"),
    ("s.yaml", "load: [\n  - {path: /a\n", "s.yaml: not valid YAML (line 2 column 3"),
    ("s.txt", "load: [: ]]", "s.txt: not valid YAML"),
], ids=["json", "yaml", "unknown-suffix"])
def test_a_scenario_that_does_not_parse_says_where(tmp_path, name, text, fragment):
    (tmp_path / name).write_text(text)
    with pytest.raises(InputError, match="fix the scenario file") as e:
        S.from_file(tmp_path / name)
    assert fragment in str(e.value)


def test_a_missing_scenario_file_says_check_scenario(tmp_path):
    with pytest.raises(InputError, match=r"cannot read scenario .*nope\.json: No such file.*check --scenario"):
        S.from_file(tmp_path / "nope.json")


def test_an_inline_scenario_may_not_make_the_agent_read_files():
    with pytest.raises(InputError, match="inline scenario cannot name a catalogue file"):
        S.from_inline(with_(catalogue="/etc/passwd"))


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={**os.environ})


@pytest.mark.parametrize(("option", "content", "fragment"), [
    ("--scenario", json.dumps(with_(routes={"/a": "/a", "/x": 5})), "scenario.json: routes./x: must be a string route template"),
    ("--scenario", "{", "scenario.json: not valid JSON"),
    ("--scenario", None, "cannot read scenario"),
    ("--catalog", None, "cannot read errcode catalogue"),
], ids=["schema", "syntax", "missing-scenario", "missing-catalogue"])
def test_the_cli_exits_1_with_one_line_and_makes_no_run(tmp_path, option, content, fragment):
    path = tmp_path / "scenario.json"
    if content is not None:
        path.write_text(content)
    out = tmp_path / "out"
    r = cli("run", "--no-ebpf", "--pid", str(os.getpid()), "--url", "http://127.0.0.1:9", "--out", str(out),
            option, str(path))
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("obsconform: error: ") and fragment in lines[0], r.stderr
    assert not out.exists(), "a bad scenario is refused before any run directory is made"


@pytest.mark.parametrize(("args", "fragment"), [
    (["--scenario", str(SCENARIO_PATH), "--path", "/x"], "give only one of --scenario and --path"),
    (["--profile", "errortrace-9"], "--profile 'errortrace-9' is not supported; supported: errortrace-0.4"),
], ids=["scenario-and-path", "unknown-profile"])
def test_conflicting_or_unknown_options_exit_1(tmp_path, args, fragment):
    r = cli("run", "--no-ebpf", "--pid", str(os.getpid()), "--url", "http://127.0.0.1:9",
            "--out", str(tmp_path / "out"), *args)
    assert r.returncode == 1 and fragment in r.stderr, r.stderr


def test_a_resolved_scenario_travels_inline_in_a_daemon_run_spec(tmp_path):
    # `run --agent --scenario F` sends the resolved scenario; the daemon resolves it unchanged.
    from agent.daemon.spec import run_config, validate

    resolved = S.from_file(SCENARIO_PATH)
    spec = validate(json.loads(json.dumps({"url": "http://127.0.0.1:9", "pid": 1, "scenario": resolved})),
                    allow_exec=False)
    cfg = run_config(spec, tmp_path)
    assert cfg.resolved_scenario() == resolved
    assert cfg.metrics_url_for(resolved) == "http://127.0.0.1:9/metrics"
