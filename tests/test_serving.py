"""The Serve application over real HTTP (SPEC 7): answers, batching, refine, bad input."""

import json

import numpy as np
import pytest
import requests
from processes import free_port

import mechinfer
from mechinfer.evaluate import baseline
from mechinfer.serve import handlers as service

pytestmark = [pytest.mark.slow, pytest.mark.serve]

# Short enough that the fits of the slowest E. coli test sets (SLOW_ECOLI) run into it,
# so that deadlines are answered, and that a flood of refinements fills the Refiner's queue.
REFINE_TIMEOUT_S = 0.2


@pytest.fixture(scope="module")
def server(ray_local):
    from ray import serve

    from serving.app import application

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    # two ingress replicas (so one can be killed while the other answers), no compilation
    # (it would add ~1 min of replica start; the compiled solver is tested in test_fitting)
    app = application(
        {
            "max_observations": 64,
            "max_batch": 16,
            "max_body_bytes": 65536,
            "compile": False,
            "refine_timeout_s": REFINE_TIMEOUT_S,
            "max_refine_cases": 4,
            # wide enough to let 3e38 through to the network (it overflows there): the
            # per-case isolation behind the bounds is tested too
            "value_bounds": {"mmk": {"P": [-1e39, 1e39]}},
        },
        {
            "Api": {"num_replicas": 2, "ray_actor_options": {"num_cpus": 0.5}},
            # a short queue, so that a test can flood it
            "Refiner": {"ray_actor_options": {"num_cpus": 0.5}, "max_ongoing_requests": 4, "max_queued_requests": 4},
        },
    )
    serve.run(app, name="mechinfer", route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


def test_config_file_builds_the_application():
    """serving/config.yaml as `serve run` / `serve deploy` read it: Serve's own config
    schema, then its application-builder call on import_path with the config's args."""
    from pathlib import Path

    import yaml
    from ray._common.utils import import_attr
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(
        yaml.safe_load((Path(__file__).resolve().parents[1] / "serving" / "config.yaml").read_text())
    )
    assert config.http_options.host == "127.0.0.1"
    (app_config,) = config.applications
    app = call_user_app_builder_with_args_if_necessary(import_attr(app_config.import_path), app_config.args)
    assert type(app).__name__ == "Application"
    assert {d.name for d in app_config.deployments} == {"Api", "Refiner"}


def _observations(model, i):
    rows, _ = baseline.load_test_set(model, None, i + 1)
    m = mechinfer.get_model(model)
    obs = service.to_observations(m, rows["t"][i], rows["channel"][i], rows["value"][i])
    return obs, rows


def test_models_and_health(server):
    assert requests.get(f"{server}/healthz", timeout=30).json()["status"] == "ok"
    models = {m["name"]: m for m in requests.get(f"{server}/v1/models", timeout=30).json()["models"]}
    assert set(models) == {"mmk", "ecoli"}
    ecoli = mechinfer.get_model("ecoli")
    assert models["ecoli"]["channels"] == list(ecoli.channels) and models["ecoli"]["T"] == ecoli.T
    assert [p["name"] for p in models["ecoli"]["parameters"]] == list(ecoli.parameter_names)
    assert models["ecoli"]["checkpoint_id"] == mechinfer.load_estimator("ecoli").checkpoint_id
    assert "/v1/models/{model}/infer" in requests.get(f"{server}/openapi.json", timeout=30).json()["paths"]


@pytest.mark.parametrize("model", ["mmk", "ecoli"])
def test_answers_agree_with_the_estimator(server, model):
    est = mechinfer.load_estimator(model)
    obs, rows = _observations(model, 2)
    r = requests.post(f"{server}/v1/models/{model}/infer", json={"observations": obs}, timeout=60)
    assert r.status_code == 200, r.text
    got = r.json()
    want = est.estimate(rows["t"][2:3], rows["channel"][2:3], rows["value"][2:3])[0]
    np.testing.assert_allclose([got["parameters"][n] for n in est.model.parameter_names], want, rtol=1e-5)
    assert got["refined"] is False and got["checkpoint_id"] == est.checkpoint_id
    assert np.isfinite(got["nll"]) and {"network", "nll_and_intervals", "total"} <= set(got["timing_ms"])
    assert set(got["units"]) == set(est.model.parameter_names)
    # intervals at the default level, as the Python API gives them
    res = est.infer(rows["t"][2:3], rows["channel"][2:3], rows["value"][2:3])
    assert got["level"] == 0.95 and list(got["intervals"]) == list(est.model.parameter_names)
    np.testing.assert_allclose(
        [got["intervals"][n] for n in est.model.parameter_names], np.stack([res.lower[0], res.upper[0]], 1), rtol=1e-5
    )
    np.testing.assert_allclose(got["gof_pvalue"], res.gof_pvalue[0], rtol=1e-4)
    assert all(lo < hi for lo, hi in got["intervals"].values())
    assert got["determined"] == dict(zip(est.model.parameter_names, res.determined[0].tolist()))
    wider = requests.post(
        f"{server}/v1/models/{model}/infer", json={"observations": obs, "level": 0.99}, timeout=60
    ).json()
    assert all(
        wider["intervals"][n][0] < got["intervals"][n][0] and got["intervals"][n][1] < wider["intervals"][n][1]
        for n in est.model.parameter_names
    )


@pytest.mark.parametrize(
    "body, message",
    [
        ({"level": 0.2}, "level"),
        ({"level": 1.0}, "level"),
        ({"level": "high"}, "level"),
        ({"refine": "sometimes"}, "refine"),
        ({"refine": 1}, "refine"),
    ],
)
def test_bad_level_or_refine_is_422(server, body, message):
    obs, _ = _observations("mmk", 0)
    r = requests.post(f"{server}/v1/models/mmk/infer", json={"observations": obs, **body}, timeout=60)
    assert r.status_code == 422 and message in r.json()["error"], r.text


def test_auto_refines_only_the_cases_that_fail_the_fit_check(server):
    from mechinfer.config import AUTO_PVALUE

    est = mechinfer.load_estimator("mmk")
    rows, _ = baseline.load_test_set("mmk", None, 64)
    gof = est.infer(rows["t"], rows["channel"], rows["value"]).gof_pvalue
    misfit, fits = int(np.argmax(gof < AUTO_PVALUE)), int(np.argmax(gof >= AUTO_PVALUE))
    assert gof[misfit] < AUTO_PVALUE <= gof[fits]
    cases = [
        service.to_observations(est.model, rows["t"][i], rows["channel"][i], rows["value"][i]) for i in (misfit, fits)
    ]
    r = requests.post(f"{server}/v1/models/mmk/infer", json={"batch": cases, "refine": "auto"}, timeout=300)
    assert r.status_code == 200, r.text
    refined, skipped = r.json()["results"]
    assert skipped["refine_status"] == "skipped" and skipped["refined"] is False
    # the module's refine deadline is short (REFINE_TIMEOUT_S): a loaded machine may stop the fit early
    assert refined["refine_status"] in ("converged", "deadline") and refined["refined"] is True
    assert refined["gof_pvalue"] > gof[misfit] and "refine" in refined["timing_ms"]
    if refined["refine_status"] == "deadline":
        return
    want = est.infer(
        rows["t"][[misfit, fits]], rows["channel"][[misfit, fits]], rows["value"][[misfit, fits]], refine="auto"
    )
    assert list(want.refine_status) == ["converged", "skipped"]
    for got, theta, low, high in zip((refined, skipped), want.theta, want.lower, want.upper):
        names = est.model.parameter_names
        np.testing.assert_allclose([got["parameters"][n] for n in names], theta, rtol=1e-4)
        np.testing.assert_allclose([got["intervals"][n] for n in names], np.stack([low, high], 1), rtol=1e-3)


def test_batch_answers_every_case_in_order(server):
    est = mechinfer.load_estimator("mmk")
    cases = [_observations("mmk", i)[0] for i in range(5)]
    cases[3] = cases[3][:4]  # sets of different sizes
    r = requests.post(f"{server}/v1/models/mmk/infer", json={"batch": cases}, timeout=60)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 5
    for case, got in zip(cases, results):
        single = requests.post(f"{server}/v1/models/mmk/infer", json={"observations": case}, timeout=60).json()
        np.testing.assert_allclose(list(got["parameters"].values()), list(single["parameters"].values()), rtol=1e-5)
    assert est.checkpoint_id == results[0]["checkpoint_id"]


def test_concurrent_requests_share_network_batches(server):
    """32 plain requests released at once: the Api runs their cases in shared @serve.batch
    calls (an answer's timing_ms.batch_size counts the cases of its call), and each
    answer is the one its observations get alone."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    sets = [_observations("mmk", i)[0] for i in range(4)]
    alone = [_post(server, "mmk", {"observations": o}).json() for o in sets]
    assert all(a["timing_ms"]["batch_size"] == 1 for a in alone)
    n = 32

    def client(i, start):
        start.wait()
        return _post(server, "mmk", {"observations": sets[i % len(sets)]})

    for _ in range(3):  # a round whose requests happen to arrive apart is tried again
        start = threading.Barrier(n)
        with ThreadPoolExecutor(n) as pool:
            answers = list(pool.map(client, range(n), [start] * n))
        assert all(r.status_code == 200 for r in answers), [r.text for r in answers if r.status_code != 200]
        sizes = [r.json()["timing_ms"]["batch_size"] for r in answers]
        if max(sizes) > 1:
            break
    assert max(sizes) > 1, sizes
    for i, r in enumerate(answers):
        np.testing.assert_allclose(r.json()["z"], alone[i % len(sets)]["z"], rtol=1e-5)


def test_refine_lowers_the_nll(server):
    obs, _ = _observations("mmk", 0)
    plain = requests.post(f"{server}/v1/models/mmk/infer", json={"observations": obs}, timeout=60).json()
    refined = requests.post(
        f"{server}/v1/models/mmk/infer", json={"observations": obs, "refine": True}, timeout=300
    ).json()
    assert refined["refined"] is True and "refine" in refined["timing_ms"]
    # the fit an in-process refinement finds, away from the network's estimate, strictly
    # better (an identity refiner fails all three)
    est = mechinfer.load_estimator("mmk")
    _, rows = _observations("mmk", 0)
    want = est.estimate(rows["t"][:1], rows["channel"][:1], rows["value"][:1], refine=True)[0]
    names = est.model.parameter_names
    got = [refined["parameters"][n] for n in names]
    np.testing.assert_allclose(got, want, rtol=1e-4)
    assert not np.allclose(got, [plain["parameters"][n] for n in names], rtol=1e-3)
    assert refined["nll"] < plain["nll"] - 1e-6


@pytest.mark.parametrize(
    "path, body, status, message",
    [
        (
            "/v1/models/yeast/infer",
            {"observations": [{"t": 0.1, "channel": "S", "value": 1.0}]},
            404,
            "unknown model 'yeast'",
        ),
        (
            "/v1/models/mmk/infer",
            {"observations": [{"t": 0.1, "channel": "Q", "value": 1.0}]},
            422,
            "unknown channel 'Q'",
        ),
        ("/v1/models/mmk/infer", {"observations": [{"t": 5.0, "channel": "S", "value": 1.0}]}, 422, "outside [0, 2] h"),
        (
            "/v1/models/mmk/infer",
            {"observations": [{"t": -0.5, "channel": "S", "value": 1.0}]},
            422,
            "outside [0, 2] h",
        ),
        ("/v1/models/mmk/infer", {"observations": []}, 422, "observations is empty"),
        (
            "/v1/models/mmk/infer",
            {"observations": [{"t": 0.1, "channel": "S", "value": 1.0}] * 65},
            422,
            "the limit is 64",
        ),
        ("/v1/models/mmk/infer", {"batch": []}, 422, "it must hold 1 to 16"),
        ("/v1/models/mmk/infer", {}, 422, "give exactly one of"),
        (
            "/v1/models/mmk/infer",
            {"observations": [{"t": 0.1, "channel": "S"}]},
            422,
            "observations.0.value: Field required",
        ),
        (
            "/v1/models/mmk/infer",
            {"observations": [{"t": "soon", "channel": "S", "value": 1}]},
            422,
            "observations.0.t",
        ),
        (
            "/v1/models/mmk/infer",
            {"observations": [{"t": 0.1, "channel": "S", "value": 1}], "checkpoint": "/x"},
            422,
            "checkpoint: Extra inputs are not permitted",
        ),
    ],
)
def test_bad_input_gets_a_4xx_naming_the_problem(server, path, body, status, message):
    r = requests.post(f"{server}{path}", json=body, timeout=60)
    assert r.status_code == status and message in r.json()["error"], r.text


@pytest.mark.parametrize(
    "raw, status, message",
    [
        ('{"observations": [{"t": NaN, "channel": "S", "value": 1}]}', 400, "NaN is not a number JSON allows"),
        ('{"observations": [{"t": 0.1, "channel": "S", "value": Infinity}]}', 400, "Infinity is not a number"),
        ('{"observations": [{"t": 0.1, "channel": "S", "value": 1e999}]}', 422, "finite"),
        ('{"observations": [', 400, "not valid JSON"),
        ("x" * 70000, 413, "exceeds the limit of 65536"),
    ],
)
def test_malformed_and_oversized_bodies(server, raw, status, message):
    r = requests.post(
        f"{server}/v1/models/mmk/infer", data=raw, headers={"content-type": "application/json"}, timeout=60
    )
    assert r.status_code == status and message in r.json()["error"], r.text


def test_fuzzed_requests_never_get_a_5xx(server):
    """Bodies generated from the OpenAPI document's request schema (valid shapes with
    arbitrary numbers, channels and lengths), plus arbitrary JSON, against every model
    path: no 5xx."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from hypothesis_jsonschema import from_schema

    spec = requests.get(f"{server}/openapi.json", timeout=30).json()
    schema = spec["paths"]["/v1/models/{model}/infer"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    schema["properties"]["refine"] = {"const": False}  # refinement is slow; fuzz the fast path
    junk = st.recursive(
        st.none() | st.booleans() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=4),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
        max_leaves=8,
    )
    model = st.sampled_from(["mmk", "ecoli", "none", "%20", "mmk%2Finfer"])

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(model=model, body=from_schema(schema) | junk)
    def check(model, body):
        r = requests.post(
            f"{server}/v1/models/{model}/infer",
            data=json.dumps(body),
            headers={"content-type": "application/json"},
            timeout=60,
        )
        assert r.status_code < 500, (model, body, r.status_code, r.text)

    check()


def test_killed_replica_is_restarted_and_answers_resume(server):
    """One of the two ingress replicas SIGKILLed under load: the other keeps answering,
    Serve starts a new one, and answers go on; prints how many requests failed."""
    import os
    import signal
    import threading
    import time

    from processes import pids_of
    from ray import serve

    def running_api_replicas() -> int:
        status = serve.status().applications["mechinfer"].deployments["Api"]
        return status.replica_states.get("RUNNING", 0)

    obs, _ = _observations("mmk", 1)
    outcomes = []
    stop = threading.Event()

    def client():
        while not stop.is_set():
            try:
                r = requests.post(f"{server}/v1/models/mmk/infer", json={"observations": obs}, timeout=60)
                outcomes.append((time.time(), r.status_code))
            except requests.RequestException:
                outcomes.append((time.time(), -1))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for th in threads:
        th.start()
    time.sleep(2)
    victims = pids_of(b"ray::ServeReplica:mechinfer:Api")
    assert len(victims) == 2, "both ingress replicas' processes were found"
    killed_at = time.time()
    os.kill(victims[0], signal.SIGKILL)
    deadline = time.time() + 120

    def restarted() -> bool:  # a new replica process, and Serve counts two running again
        pids = set(pids_of(b"ray::ServeReplica:mechinfer:Api"))
        return len(pids) == 2 and victims[0] not in pids and running_api_replicas() == 2

    while time.time() < deadline and not restarted():
        time.sleep(0.5)
    restarted_at = time.time()
    time.sleep(3)
    stop.set()
    for th in threads:
        th.join(timeout=120)
    during = [code for t, code in outcomes if killed_at < t <= restarted_at]
    after = [code for t, code in outcomes if t > restarted_at]
    failed = sum(code != 200 for code in during + after)
    print(
        f"replica restarted in {restarted_at - killed_at:.1f} s; requests after the kill: "
        f"{len(during) + len(after)}, failed: {failed}"
    )
    assert restarted()
    assert during.count(200) >= 10, "the surviving replica kept answering during the restart"
    assert after and set(after) == {200}, "every request after the restart is answered"
    assert all(code in (200, 500, 502, 503, -1) for code in during)


def _post(server, model, body, timeout=60):
    return requests.post(f"{server}/v1/models/{model}/infer", json=body, timeout=timeout)


def _with_value(obs, value, channel=None):
    """The observation list with its first observation's value (and channel) replaced."""
    first = {**obs[0], "value": value, **({"channel": channel} if channel else {})}
    return [first, *obs[1:]]


@pytest.mark.parametrize(
    "model, bad",
    [
        (
            "ecoli",
            [
                ({"channel": "A", "value": 1e38}, "outside the bounds"),
                ({"channel": "X", "value": -1e300}, "outside the bounds"),
            ],
        ),
        # within the configured bounds, but it overflows the network's input
        ("mmk", [({"channel": "P", "value": 3e38}, "network's estimate is not finite")]),
    ],
)
def test_one_bad_case_fails_no_other_request(server, model, bad):
    """24 concurrent good requests and the bad ones on the same model (so they share
    @serve.batch calls): every good one is answered as if alone, each bad one gets a 422."""
    from concurrent.futures import ThreadPoolExecutor

    good = [_observations(model, i)[0] for i in range(24)]
    alone = [_post(server, model, {"observations": o}).json()["parameters"] for o in good[:3]]
    bad_sets = [_with_value(good[0], b["value"], b["channel"]) for b, _ in bad]
    with ThreadPoolExecutor(len(good) + len(bad)) as pool:
        answers = list(pool.map(lambda o: _post(server, model, {"observations": o}), [*good, *bad_sets]))
    assert [r.status_code for r in answers[:24]] == [200] * 24, [r.text for r in answers if r.status_code != 200]
    for r, (_, message) in zip(answers[24:], bad):
        assert r.status_code == 422 and message in r.json()["error"], r.text
    for want, got in zip(alone, answers[:3]):
        np.testing.assert_allclose(list(got.json()["parameters"].values()), list(want.values()), rtol=1e-5)
    # in one batch request: each bad set gets its own error entry, the others their answers
    r = _post(server, model, {"batch": [good[1], *bad_sets, good[2]]})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    for entry, (_, message) in zip(results[1:-1], bad):
        assert set(entry) == {"error"} and message in entry["error"], entry
    for want, got in zip(alone[1:], (results[0], results[-1])):
        np.testing.assert_allclose(list(got["parameters"].values()), list(want.values()), rtol=1e-5)
    # the sets within the bounds, the bad ones too, ran as one network batch
    sent = 2 + sum("network" in message for _, message in bad)
    assert [got["timing_ms"]["batch_size"] for got in (results[0], results[-1])] == [sent, sent]


def test_hostile_bodies_get_a_4xx(server):
    url = f"{server}/v1/models/mmk/infer"
    headers = {"content-type": "application/json"}
    deep = requests.post(url, data="[" * 60_000, headers=headers, timeout=60)  # within max_body_bytes here
    assert deep.status_code == 400 and "nests JSON deeper than 16 levels" in deep.json()["error"]
    digits = '{"observations": [{"t": 0.1, "channel": "S", "value": ' + "7" * 5000 + "}]}"
    long_number = requests.post(url, data=digits, headers=headers, timeout=60)
    assert long_number.status_code == 400 and "number literal longer than" in long_number.json()["error"]

    def chunks():  # 64 MiB sent chunked, without a length; the server stops reading early
        for _ in range(1024):
            yield b" " * 65536

    try:
        big = requests.post(url, data=chunks(), headers=headers, timeout=60)
        assert big.status_code == 413 and "exceeds the limit of 65536 bytes" in big.json()["error"]
    except requests.ConnectionError:
        pytest.fail("the server closed the connection instead of answering 413")
    assert _post(server, "mmk", {"observations": _observations("mmk", 0)[0]}).status_code == 200


def _check_refined_flag(answer, network):
    """A refined answer's refined is false exactly when it is a "deadline" that kept the
    network's estimate (its fit's deadline came before its first step): then it is the
    network's answer, intervals and all."""
    # (the same point up to round-off: the network's batch, and with it its float32
    # arithmetic, may differ between the two requests)
    kept = answer["refine_status"] == "deadline" and np.allclose(answer["z"], network["z"], rtol=1e-6, atol=0)
    assert answer["refined"] is not kept, (answer, network)
    if kept:
        for key in ("parameters", "intervals"):
            np.testing.assert_allclose(list(answer[key].values()), list(network[key].values()), rtol=1e-5)


# E. coli test sets whose refinements (trust region, ML and MAP fits) take longest of the
# first 512: 0.4-0.6 s each alone in-process here (most take under 0.1 s), so past the
# module's refine deadline
SLOW_ECOLI = (172, 307, 442, 453)


def test_refinement_is_bounded_and_reports_its_status(server):
    import time

    rows, _ = baseline.load_test_set("ecoli", None, max(SLOW_ECOLI) + 1)
    m = mechinfer.get_model("ecoli")
    cases = [service.to_observations(m, rows["t"][i], rows["channel"][i], rows["value"][i]) for i in SLOW_ECOLI]
    plain = _post(server, "ecoli", {"batch": cases}).json()["results"]
    start = time.perf_counter()
    r = _post(server, "ecoli", {"batch": cases, "refine": True}, timeout=120)
    took = time.perf_counter() - start
    assert r.status_code == 200, r.text
    refined = r.json()["results"]
    # each fit stops at the deadline with its best point (answer time: the deadline, one
    # iteration and the network's answer)
    assert took < REFINE_TIMEOUT_S + 5.0, took
    for p, f in zip(plain, refined):
        assert f["refine_status"] in ("converged", "iteration_limit", "deadline"), f
        assert p["refine_status"] == "not_requested" and p["refined"] is False
        _check_refined_flag(f, p)
        assert f["nll"] <= p["nll"] + 1e-9
    assert "deadline" in {f["refine_status"] for f in refined}, "some of these fits take longer than 0.2 s"
    # the cases that reach the Refiner together are fitted as one batch, each to its deadline
    assert max(f["timing_ms"]["refine_batch_size"] for f in refined) > 1, [f["timing_ms"] for f in refined]
    too_many = _post(server, "ecoli", {"batch": cases + cases[:1], "refine": True})
    assert too_many.status_code == 422 and "at most 4 per request" in too_many.json()["error"]


def test_refine_flood_is_refused_and_plain_inference_goes_on(server):
    """6 clients at once, each refining 4 E. coli sets, past the Refiner's queue (4 at a
    time, 4 queued per Api replica): each gets its answers or 503 with Retry-After, never
    a 500, within the deadline plus a margin; plain mmk requests meanwhile keep answering
    within 1 s; after the flood the server answers refinements normally."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    cases = [_observations("ecoli", i)[0] for i in range(4)]
    network = _post(server, "ecoli", {"batch": cases}).json()["results"]
    plain_obs = _observations("mmk", 0)[0]
    plain, stop = [], threading.Event()

    def plain_client():
        while not stop.is_set():
            start = time.perf_counter()
            code = _post(server, "mmk", {"observations": plain_obs}).status_code
            plain.append((code, time.perf_counter() - start))

    def refine_client(_):
        start = time.perf_counter()
        r = _post(server, "ecoli", {"batch": cases, "refine": True}, timeout=120)
        return r, time.perf_counter() - start

    watcher = threading.Thread(target=plain_client)
    watcher.start()
    try:
        with ThreadPoolExecutor(6) as pool:
            floods = list(pool.map(refine_client, range(6)))
    finally:
        stop.set()
        watcher.join(timeout=60)
    codes = [r.status_code for r, _ in floods]
    assert set(codes) <= {200, 503}, [r.text for r, _ in floods if r.status_code not in (200, 503)]
    assert 503 in codes and 200 in codes, codes
    for r, took in floods:
        assert took < REFINE_TIMEOUT_S + 10.0, took
        if r.status_code == 503:
            assert r.headers["Retry-After"] == "1" and "queue is full" in r.json()["error"]
        else:
            assert all(a["refine_status"] in ("converged", "iteration_limit", "deadline") for a in r.json()["results"])
            for a, p in zip(r.json()["results"], network):
                _check_refined_flag(a, p)
    assert plain and all(code == 200 for code, _ in plain), plain
    assert max(took for _, took in plain) < 1.0, sorted(took for _, took in plain)[-5:]
    after = _post(server, "ecoli", {"batch": cases[:1], "refine": True}, timeout=120)
    assert after.status_code == 200 and after.json()["results"][0]["refined"] is True
