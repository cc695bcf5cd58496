"""The Serve application's per-case logic in this process, without Ray or HTTP: the Api's
plain-inference batch and its refinement step called as the replicas call them (the
functions under ``@serve.batch``, the Refiner behind a stand-in handle), so that what
only a failure or a lost Refiner reaches is tested deterministically. tests/test_serving.py
runs the same code in a real Serve application."""

import asyncio
import functools
import time
from types import SimpleNamespace

import numpy as np
import pytest

import mechinfer
from mechinfer.evaluate import baseline
from mechinfer.serve import handlers as service
from serving import app  # imports Ray Serve and FastAPI; starts nothing

N_CASES = 3


@pytest.fixture(scope="module")
def mmk():
    est = mechinfer.load_estimator("mmk")
    rows, _ = baseline.load_test_set("mmk", None, N_CASES)
    sets = [(rows["t"][i], rows["channel"][i], rows["value"][i]) for i in range(N_CASES)]
    sets = [tuple(a[np.isfinite(s[0])] for a in s) for s in sets]  # (t, channel, value) of each set, unpadded
    return est, sets


def _alone(est, s) -> dict:
    """service.infer on one set: the answer it gets when nothing shares its batch."""
    return service.infer(est, *(a[None] for a in s))


def _infer_batch(api, cases) -> list[dict]:
    """The Api's plain-inference batch (the function under its @serve.batch) on cases."""
    return asyncio.run(app.Api.func_or_class._infer.__wrapped__(api, cases))


def test_plain_inference_answers_each_case_alone_when_one_breaks_the_batch(mmk, monkeypatch):
    """A case that makes the network's batch raise gets its own error (a single request's
    422), and the other cases of the batch (other requests' too) the answers they get
    alone. Without a failure the batch is one call, and each answer says how many cases
    shared it."""
    est, sets = mmk
    api = SimpleNamespace(estimators={"mmk": est}, compile=False)
    cases = [("mmk", s) for s in sets]
    together = _infer_batch(api, cases)
    for case, s in zip(together, sets):
        assert case["error"] is None and case["timing_ms"]["batch_size"] == N_CASES
        np.testing.assert_allclose(case["z"], _alone(est, s)["z"][0], rtol=1e-6)

    poison = 123.456  # a value that makes any batch holding it raise
    infer = service.infer

    def breaks_on_poison(est, t, ch, v, compile=None):
        if (v == poison).any():
            raise RuntimeError("the solver gave up")
        return infer(est, t, ch, v, compile=compile)

    monkeypatch.setattr(service, "infer", breaks_on_poison)
    t, ch, v = sets[1]
    bad = (t, ch, np.where(np.arange(len(v)) == 0, poison, v))
    got = _infer_batch(api, [cases[0], ("mmk", bad), cases[2]])
    assert got[1] == {
        "error": "this observation set could not be answered: the solver gave up",
        "timing_ms": {"batch_size": 1},
    }
    for case, s in zip((got[0], got[2]), (sets[0], sets[2])):
        assert case["error"] is None and case["timing_ms"]["batch_size"] == 1  # retried alone
        np.testing.assert_allclose(case["z"], _alone(est, s)["z"][0], rtol=1e-6)
        np.testing.assert_allclose(case["nll"], _alone(est, s)["nll"][0], rtol=1e-6)
    # a lone case that raises: its error, for the request's 422
    assert set(_infer_batch(api, [("mmk", bad)])[0]) == {"error", "timing_ms"}


class _Refiner:
    """A stand-in for the Api's handle on the Refiner deployment: the calls made in one
    event-loop turn run as one batch of the Refiner's own function (as its @serve.batch
    would gather them). ``late`` holds the indices of calls that sat in the Refiner's
    queue past their deadline; ``lost``: no call is ever answered (a lost replica)."""

    def __init__(self, est, late=(), lost=False, starts=1):
        self.replica = SimpleNamespace(estimators={"mmk": est}, compile=False, method="trust-region", starts=starts)
        self.late, self.lost, self.pending = set(late), lost, []

    def remote(self, case):
        future = asyncio.get_running_loop().create_future()
        if not self.lost:
            if not self.pending:  # the calls made before the next turn join this batch
                self.task = asyncio.ensure_future(self._run())
            self.pending.append((case, future))
        return future

    async def _run(self):
        batch, self.pending = self.pending, []
        cases = [(*case[:3], time.time() - 1.0 if i in self.late else case[3]) for i, (case, _) in enumerate(batch)]
        answers = await app.Refiner.func_or_class._fit.__wrapped__(self.replica, cases)
        for (_, future), answer in zip(batch, answers):
            if not future.cancelled():
                future.set_result(answer)


def _refined_answers(est, sets, refiner, timeout_s=10.0) -> tuple[list[dict], list[dict]]:
    """The plain answers of sets, and those of the Api's refinement (refine true) with
    ``refiner`` behind its handle, shaped as the Api shapes them."""
    api = SimpleNamespace(
        estimators={"mmk": est}, compile=False, refiner=refiner, refine_timeout_s=timeout_s, auto_pvalue=0.05
    )
    api.refiner_ready, api._refiner_ready = True, functools.partial(app.Api.func_or_class._refiner_ready, api)
    plain = _infer_batch(api, [("mmk", s) for s in sets])
    results = [dict(r) for r in plain]
    asyncio.run(app.Api.func_or_class._refine(api, "mmk", sets, results, auto=False))

    def shape(r):
        return service.answer(est, r, 0.95, r.get("refine_status", "not_requested"), r["timing_ms"])

    return [shape(r) for r in plain], [shape(r) for r in results]


def test_a_deadline_answer_with_the_networks_point_is_not_refined(mmk, monkeypatch):
    """refined is true exactly when the answer's point is the refinement's: a case whose
    deadline passed before its fit started (it waited in the Refiner's queue), or whose
    Refiner never answered, keeps the network's estimate and intervals and says
    "deadline" with refined false; the others of its batch are refined (the batch's
    cases fitted together, each to its own deadline)."""
    est, sets = mmk
    plain, refined = _refined_answers(est, sets, _Refiner(est, late={1}))
    assert [a["refine_status"] for a in refined] == ["converged", "deadline", "converged"]
    assert [a["refined"] for a in refined] == [True, False, True]
    assert all(a["timing_ms"]["refine_batch_size"] == N_CASES for a in refined)  # one batch, no retries
    late, network = refined[1], plain[1]
    assert late["z"] == network["z"] and late["parameters"] == network["parameters"]
    assert late["intervals"] == network["intervals"] and late["nll"] == network["nll"]
    for a, p in zip(refined[::2], plain[::2]):
        assert a["z"] != p["z"] and a["nll"] < p["nll"]

    # the Refiner never answers: past the deadline and its grace the Api stops waiting
    # (the deployment holds a pickled copy of the module's globals: patched where it reads them)
    monkeypatch.setitem(app.Api.func_or_class._refine.__globals__, "REFINE_GRACE_S", 0.05)
    plain, lost = _refined_answers(est, sets[:2], _Refiner(est, lost=True), timeout_s=0.05)
    for a, p in zip(lost, plain):
        assert a["refine_status"] == "deadline" and a["refined"] is False
        assert (a["z"], a["intervals"]) == (p["z"], p["intervals"])


def test_the_refiner_refines_with_its_configured_starts(mmk, monkeypatch):
    """A Refiner configured with ``refine_starts`` answers what ``est.infer(refine=True,
    starts=...)`` answers for the same sets (the draws depend on the set alone), and the
    refinement it runs is the one with that many starts: its maximum-likelihood fits
    number the sets times the starts."""
    from mechinfer.fit import mle

    est, sets = mmk
    calls = []
    fit = mle.fit

    def counted(model, t, *args, **kwargs):  # the real fit, its batch sizes recorded
        calls.append(int(np.sum(~np.asarray(kwargs.get("prior", False)) & np.ones(len(t), bool))))
        return fit(model, t, *args, **kwargs)

    monkeypatch.setattr(mle, "fit", counted)
    _, refined = _refined_answers(est, sets, _Refiner(est, starts=3))
    monkeypatch.undo()
    assert calls[0] == 3 * N_CASES, calls
    for answer, s in zip(refined, sets):
        want = est.infer(*(a[None] for a in s), refine=True, starts=3)
        assert answer["refined"] and answer["refine_status"] == want.refine_status[0]
        np.testing.assert_allclose(answer["z"], want.z[0], rtol=1e-6)
        assert answer["nll"] == pytest.approx(float(want.nll[0]), rel=1e-6)
