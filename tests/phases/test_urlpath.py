"""Where --url and the scenario's paths send requests (agent.urlpath), and the run config's use of it."""

from __future__ import annotations

import pytest

from agent.errors import InputError
from agent.runner import RunConfig
from agent.urlpath import plan_url, scenario_path, targets_sent, wire_path

H = "http://127.0.0.1:8000"

# (--url, a scenario or --path names the paths, scenario path or None, prefix, sent target)
RULES = [
    pytest.param(H, False, None, "", "/", id="bare-origin-loads-slash"),
    pytest.param(f"{H}/", False, None, "", "/", id="origin-slash-loads-slash"),
    pytest.param(f"{H}/api/items/7", False, None, "", "/api/items/7",
                 id="endpoint-loads-itself-no-slash-appended"),
    pytest.param(f"{H}/api/items/", False, None, "", "/api/items/", id="endpoint-keeps-its-slash"),
    pytest.param(f"{H}/search?q=a&n=2", False, None, "", "/search?q=a&n=2",
                 id="endpoint-keeps-its-query"),
    pytest.param(H, True, "/hello", "", "/hello", id="origin-with-scenario-path"),
    pytest.param(f"{H}/", True, "/hello", "", "/hello", id="origin-slash-with-scenario-path"),
    pytest.param(f"{H}/api", True, "/hello", "/api", "/api/hello", id="mount-prefix"),
    pytest.param(f"{H}/api/", True, "/hello", "/api", "/api/hello", id="mount-prefix-slash-dropped"),
    pytest.param(f"{H}/api/items/7", True, "/hello", "/api/items/7", "/api/items/7/hello",
                 id="endpoint-url-with-scenario-is-a-prefix-not-its-parent"),
    pytest.param(f"{H}/api", True, "/", "/api", "/api/", id="explicit-slash-under-prefix"),
    pytest.param(f"{H}/api", True, "/q?x=1", "/api", "/api/q?x=1", id="scenario-query-kept"),
]


@pytest.mark.parametrize("url, named, path, prefix, sent", RULES)
def test_the_url_path_rule(url, named, path, prefix, sent):
    plan = plan_url(url, named)
    assert plan.prefix == prefix
    assert plan.origin == H
    assert plan.base_url == H + prefix
    target = plan.wire(path) if named else plan.load_path
    assert target == sent
    if named:
        assert plan.load_path is None
        assert scenario_path(plan.prefix, target) == path, "the checks map it back to the scenario"


@pytest.mark.parametrize("prefix, target, path", [
    pytest.param("", "/a", "/a", id="no-prefix"),
    pytest.param("/api", "/api/a", "/a", id="under-prefix"),
    pytest.param("/api", "/api/", "/", id="prefix-root"),
    pytest.param("/api", "/apix/a", "/apix/a", id="not-a-segment-of-the-prefix"),
    pytest.param("/api", "/other", "/other", id="outside-the-prefix"),
    pytest.param("/api", "/api", "/api", id="the-prefix-alone-is-no-scenario-path"),
])
def test_scenario_path_strips_only_a_whole_prefix(prefix, target, path):
    assert scenario_path(prefix, target) == path


def test_wire_path_gives_a_bare_path_its_slash():
    assert wire_path("/api", "y") == "/api/y"
    assert wire_path("", "y") == "/y"


def test_a_query_in_a_prefix_url_is_refused_naming_the_option():
    with pytest.raises(InputError, match=r"--url .*a query is only allowed when the URL names the endpoint"):
        plan_url(f"{H}/api?x=1", True)


def test_targets_sent_most_first_then_in_first_sent_order():
    sent = [("GET", "/b"), ("get", "/a"), ("GET", "/a"), ("POST", "/c"), ("GET", "/b")]
    assert targets_sent(sent) == ({"GET /b": 2, "GET /a": 2, "POST /c": 1}, 3)
    assert targets_sent(sent, limit=1) == ({"GET /b": 2}, 3)


@pytest.mark.parametrize("cfg, load, metrics", [
    pytest.param(RunConfig(url=f"{H}/api/items/7", pid=1), ["/api/items/7"], None,
                 id="endpoint-url-is-the-load-path"),
    pytest.param(RunConfig(url=f"{H}/api/items/7", pid=1, metrics_url=f"{H}/metrics"),
                 ["/api/items/7"], f"{H}/metrics", id="endpoint-url-with-metrics-url"),
    pytest.param(RunConfig(url=f"{H}/api", pid=1, paths=["/a", "/b"]), ["/a", "/b"], None,
                 id="paths-stay-scenario-paths"),
    pytest.param(RunConfig(url=f"{H}/api/", pid=1,
                           scenario={"load": [{"path": "/x"}], "metrics_path": "/metrics"}),
                 ["/x"], f"{H}/api/metrics", id="scenario-metrics-path-under-the-prefix"),
])
def test_run_config_resolves_load_paths_and_metrics_url(cfg, load, metrics):
    scenario = cfg.resolved_scenario()
    assert [r["path"] for r in scenario["load"]] == load
    assert cfg.metrics_url_for(scenario) == metrics
