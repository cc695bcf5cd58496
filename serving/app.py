"""Ray Serve application: the inference networks behind the HTTP API of SPEC 7.

    mechinfer serve serving/config.yaml  # local, on an embedded Ray (Serve's fast path)
    serve run serving/config.yaml        # local, behind Serve's proxy actor
    serve deploy serving/config.yaml     # to a running cluster

Two deployments: ``Api`` (FastAPI ingress: parsing, checks, answers, and the networks:
concurrent cases are batched with ``@serve.batch``) and ``Refiner`` (one fit from the
network's estimate, by the configured ``refine_method``, the trust region by default;
concurrent cases fitted together; its own replicas and CPU budget, so slow refinements
never hold up plain inference). Which checkpoints are
served is configuration (``args.checkpoints``), never a request parameter.

(No ``from __future__ import annotations`` here: Serve's ingress wrapper must resolve
FastAPI's annotations, e.g. ``Request``, at runtime. Module-level helpers sit above the
deployments: ``@serve.deployment`` pickles the class when it decorates it.)
"""

import asyncio
import contextvars
import json
import time
from typing import Literal, cast

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, model_validator
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from mechinfer import __version__, list_models, load_model
from mechinfer.config import ServeArgs
from mechinfer.estimate import refine as stage
from mechinfer.estimate.estimator import load_estimator
from mechinfer.models.sources import check_model, is_model_file
from mechinfer.serve import handlers as service
from mechinfer.serve import page as web_page
from mechinfer.serve import trajectories as curves

REFINE_GRACE_S = 5.0  # past the refine deadline, how long the Api still waits for the Refiner
INFER_BATCH_WAIT_S = 0.005  # how long a batch of cases waits for more, while other requests are in flight
REFINE_BATCH_WAIT_S = 0.01  # the same for the cases of a refine batch
READY_WAIT_S = 0.5  # how long a request waits for the Refiner to say it is ready, before a 503
RETRY_AFTER_S = 2  # what a 503 tells clients to wait while the Refiner starts


class Observation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    t: float = Field(allow_inf_nan=False, description="observation time (h), within [0, T]")
    channel: str = Field(description="observed channel name, e.g. 'X'")
    value: float = Field(allow_inf_nan=False, description="measured value")


class InferRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    observations: list[Observation] | None = Field(None, description="one observation set")
    batch: list[list[Observation]] | None = Field(None, description="several observation sets")
    refine: StrictBool | Literal["auto"] = Field(
        False,
        description="polish each estimate by one fit from it: true, false, or 'auto' (only the cases whose "
        "network estimate fails the goodness-of-fit check, gof_pvalue below the configured auto_pvalue)",
    )
    level: float = Field(0.95, ge=0.5, le=0.999, description="confidence level of the intervals")


class Answer(BaseModel):
    parameters: dict[str, float]
    units: dict[str, str]
    z: list[float]
    intervals: dict[str, list[float]] = Field(description="[low, high] per parameter, physical units, at level")
    determined: dict[str, bool] = Field(
        description="per parameter: whether the observations determine it (its posterior variance in z is at "
        "most 1/4 of the prior's); an undetermined estimate and its interval come from the prior, not the data"
    )
    level: float
    gof_pvalue: float | None = Field(description="chi-square goodness of fit of the estimate (SPEC 9)")
    nll: float | None
    refined: bool
    refine_status: str = Field(
        description="not_requested, skipped (refine 'auto': the network's estimate fits), converged, "
        "iteration_limit, deadline or failed (the network's estimate stands)"
    )
    timing_ms: dict[str, float]
    checkpoint_id: str


# the 4xx answers of a route that reads an observation request's body (OpenAPI)
BODY_ERRORS: dict[int | str, dict] = {
    400: {"description": "malformed JSON"},
    404: {"description": "unknown model"},
    413: {"description": "body too large"},
    422: {"description": "invalid observations"},
}


class CaseError(BaseModel):
    error: str = Field(description="why this observation set could not be answered")


class BatchAnswer(BaseModel):
    results: list[Answer | CaseError]


class Parameter(BaseModel):
    name: str
    unit: str


class ModelInfo(BaseModel):
    name: str
    parameters: list[Parameter]
    channels: list[str]
    conditions: list[str] = Field(description="a PEtab problem's conditions; empty for other models")
    T: float
    n_obs: int
    checkpoint_id: str


class ModelsAnswer(BaseModel):
    models: list[ModelInfo]


class TrajectoryRequest(InferRequest):
    points: int = Field(
        curves.GRID_POINTS, ge=2, le=curves.MAX_GRID_POINTS, description="points of the time grid on [0, T]"
    )

    @model_validator(mode="after")
    def _one_set(self):
        if self.batch is not None:
            raise ValueError("this route answers one observation set: give 'observations', not 'batch'")
        return self


class ChannelTrajectory(BaseModel):
    name: str
    unit: str
    sigma: float = Field(description="the channel's noise standard deviation")
    trajectory: list[float | None] = Field(description="the model at the estimate on t; null where its solve failed")
    low: list[float | None] = Field(description="lower edge of the band on t")
    high: list[float | None] = Field(description="upper edge of the band on t")


class TrajectoriesAnswer(BaseModel):
    estimate: Answer = Field(description="the answer the infer route gives for the same request")
    t: list[float] = Field(description="the time grid (h), evenly spaced on [0, T]")
    level: float = Field(description="the band holds this central share of the trajectories at draws of z")
    band_draws: int = Field(description="draws of z from the estimate's Laplace approximation (N(centre, cov_z))")
    channels: list[ChannelTrajectory]


class LimitsAnswer(BaseModel):
    max_observations: int = Field(description="observations per set")
    max_observations_by_model: dict[str, int] = Field(
        default_factory=dict, description="models whose sets may hold more: a PEtab problem's measurements"
    )
    max_batch: int = Field(description="observation sets per batch request")
    max_refine_cases: int = Field(description="observation sets one request may refine (refine true or 'auto')")
    max_body_bytes: int
    refine_timeout_s: float


app = FastAPI(
    title="mechinfer",
    version=__version__,
    description="Maximum-likelihood parameters of mechanistic bioprocess models from observations.",
)


def _inline_schema(model: type[BaseModel]) -> dict:
    """The model's JSON schema with its $defs inlined, to embed in the OpenAPI document."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node):
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)


class RefinerStarting(RuntimeError):
    """No Refiner replica has finished starting: refine requests get a prompt 503."""


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": message})


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def _validation_message(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    return f"{where}: {first['msg']}"


def _load(checkpoints: dict[str, str], compile: bool | None, refine: bool, method: str = "trust-region") -> dict:
    """A replica's estimators (one torch thread: replicas are scaled by Serve, not by
    threads), warmed up for what the replica runs."""
    import torch

    torch.set_num_threads(1)
    estimators = {name: load_estimator(src) for name, src in checkpoints.items()}
    for est in estimators.values():
        service.warm_up(est, refine=refine, compile=compile, method=method)
    return estimators


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, counted while it streams: a body past ``limit`` bytes is refused
    (413) as soon as it passes, whether or not it declared its length, and never held
    whole in memory."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise service.BadRequest(f"request body of {declared} bytes exceeds the limit of {limit}", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise service.BadRequest(f"request body exceeds the limit of {limit} bytes", 413)
        chunks.append(chunk)
    return b"".join(chunks)


def _per_model(cases: list[tuple], run, batch_key: str) -> list[dict]:
    """Answer a @serve.batch of cases (model name, (t, channel, value)[, z]): one call of
    run(name, t, ch, v, z) per model on its cases, NaN-padded; each case's dict holds its
    row of every per-case field (arrays and lists of length B) that run returns. A call
    that raises is retried case by case, so that one case that breaks it gets its own
    {"error": ...} and never fails the other requests of its batch. (Run inline, not in a
    thread: a thread holding the GIL through the solver's Python loop starves the event
    loop that receives the requests; measured 3.5x fewer answers per second.)"""
    out: list[dict | None] = [None] * len(cases)
    for name in {c[0] for c in cases}:
        idx = [i for i, c in enumerate(cases) if c[0] == name]
        groups = [idx]
        try:
            results = [_run(run, name, [cases[i] for i in idx])]
        except Exception:  # isolate the case that raised, below
            groups, results = [[i] for i in idx], []
            for i in idx:
                try:
                    results.append(_run(run, name, [cases[i]]))
                except Exception as exc:  # this case's own error
                    results.append({"error": [f"this observation set could not be answered: {exc}"]})
        for group, res in zip(groups, results):
            for j, i in enumerate(group):
                case = {k: v[j] for k, v in res.items() if k != "timing_ms"}
                case["timing_ms"] = {**res.get("timing_ms", {}), batch_key: len(group)}
                out[i] = case
    return cast(list[dict], out)  # every case belongs to one model: no slot is left None


def _batch_wait(in_flight: int, wait_s: float) -> float:
    """How long a batch waits for more cases after its first: ``wait_s`` while other
    requests are in flight (they may join it), none for a request alone, for which the
    wait would be pure latency (one mmk client, direct ingress: a plain answer's p50
    went from 13.8 to 7.0 ms without it)."""
    return wait_s if in_flight > 1 else 0.0


def _run(run, name: str, cases: list[tuple]) -> dict:
    """run(name, t, ch, v, z, deadline) on cases (name, (t, ch, v)[, z, deadline])."""
    t, ch, v = service.pad([c[1] for c in cases])
    if len(cases[0]) > 2:
        return run(name, t, ch, v, np.stack([c[2] for c in cases]), np.array([c[3] for c in cases]))
    return run(name, t, ch, v, None, None)


def _probe(refiner: DeploymentHandle) -> asyncio.Future:
    """``refiner.ready.remote()`` as a task of the replica's own, outside any request.

    A handle call made while a request is being answered is that request's child, and
    Serve's proxy cancels it with the request when the client disconnects. The probe is
    shared by every request that waits for the Refiner to start: made as the child of the
    first, it died with that client, and every later /healthz and refine request of the
    replica raised its CancelledError, a 500, for good (CI: the page test's refine
    requests, after a /healthz poll timed out while the Refiner was starting)."""

    async def ask():
        return await refiner.ready.remote()

    return contextvars.Context().run(asyncio.ensure_future, ask())


@serve.deployment(
    ray_actor_options={"num_cpus": 0.5},
    max_ongoing_requests=64,
    max_queued_requests=64,  # at each caller (an Api replica): past it, the Api answers 503
    health_check_timeout_s=60,  # a refine batch holds the replica for up to refine_timeout_s
)
class Refiner:
    """A fit per case from the network's estimate (``refine_method``: trust-region or
    bfgs; ``refine_starts``: and from draws around it); concurrent cases of a model
    are fitted as one batch (each is its own problem, so batching changes no answer)."""

    def __init__(
        self, checkpoints: dict[str, str], compile: bool | None = None, method: str = "trust-region", starts: int = 1
    ):
        self.estimators, self.compile = _load(checkpoints, compile, refine=True, method=method), compile
        self.method, self.starts = method, starts
        self.in_flight = 0  # calls inside __call__

    def check_health(self) -> None:
        if not self.estimators:
            raise RuntimeError("no estimator loaded")

    def ready(self) -> bool:
        """Answered only by a replica that can refine at full speed: Serve routes calls
        to a replica once its __init__ (loading and warming every solver) has returned."""
        return True

    async def __call__(self, case: tuple) -> dict:
        self.in_flight += 1
        try:
            self._fit.set_batch_wait_timeout_s(_batch_wait(self.in_flight, REFINE_BATCH_WAIT_S))  # type: ignore[attr-defined]
            return await self._fit(case)
        finally:
            self.in_flight -= 1

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=REFINE_BATCH_WAIT_S)
    async def _fit(self, cases: list[tuple]) -> list[dict]:
        return _per_model(
            cases,
            lambda name, t, ch, v, z, deadline: service.refine(
                self.estimators[name],
                t,
                ch,
                v,
                z,
                compile=self.compile,
                deadline=deadline,
                method=self.method,
                starts=self.starts,
            ),
            "refine_batch_size",
        )


@serve.deployment(
    ray_actor_options={"num_cpus": 1},
    max_ongoing_requests=512,
    max_queued_requests=512,  # at the HTTP proxy: past it, 503 with Retry-After
    backpressure_config={"status_code": 503, "retry_after_s": 1},
)
@serve.ingress(app)
class Api:
    """The ingress, and the networks: concurrent cases of a model (from one batch request
    or many requests) run as one batch. Inference lives in the ingress rather than in a
    deployment of its own because a hop between deployments costs more CPU per request
    (~2.5 ms, measured by bench/serve_load.py) than the network and its NLL (~0.6 ms)."""

    def __init__(self, refiner: DeploymentHandle, checkpoints: dict[str, str], settings: ServeArgs):
        self.refiner = refiner
        self.estimators, self.compile = _load(checkpoints, settings.compile, refine=False), settings.compile
        self.max_observations, self.max_batch = settings.max_observations, settings.max_batch
        self.max_body_bytes = settings.max_body_bytes
        self.max_json_depth, self.max_number_chars = settings.max_json_depth, settings.max_number_chars
        self.refine_timeout_s, self.max_refine_cases = settings.refine_timeout_s, settings.max_refine_cases
        self.auto_pvalue = settings.auto_pvalue
        self.in_flight = 0  # requests inside infer()
        # set when a Refiner replica has answered (see _refiner_ready); until then refine
        # requests get a prompt 503 and /healthz says what is starting
        self.refiner_ready = False
        self._refiner_probe: asyncio.Future | None = None
        configured = settings.value_bounds or {}
        self.bounds = {name: service.value_bounds(e, configured.get(name)) for name, e in self.estimators.items()}
        self.observation_limits = {
            name: service.observation_limit(e.model, self.max_observations) for name, e in self.estimators.items()
        }

    @serve.batch(max_batch_size=256, batch_wait_timeout_s=INFER_BATCH_WAIT_S)
    async def _infer(self, cases: list[tuple]) -> list[dict]:
        return _per_model(
            cases,
            lambda name, t, ch, v, *_: service.infer(self.estimators[name], t, ch, v, compile=self.compile),
            "batch_size",
        )

    async def _refine(self, model: str, sets: list, results: list[dict], auto: bool) -> None:
        """Refine the answerable cases in place (``auto``: only those whose network
        estimate fails the goodness-of-fit check; the others are "skipped"). Each fit
        stops at the request's deadline (refine_timeout_s) with its best point; should
        the Refiner not answer even then (a queue, a lost replica), the request stops
        waiting: those cases keep the network's estimate with refine_status "deadline",
        and their calls are cancelled."""
        answerable = [i for i, r in enumerate(results) if r.get("error") is None]
        if not answerable:
            return
        z = np.stack([results[i]["z"] for i in answerable])
        gof = np.array([results[i]["gof_pvalue"] for i in answerable])
        chosen, status = stage.select("auto" if auto else True, z, gof, self.auto_pvalue)
        for i, how in zip(answerable, status):
            results[i]["refine_status"] = how
        todo = [i for i, c in zip(answerable, chosen) if c]
        if todo and not await self._refiner_ready():
            raise RefinerStarting(
                "the Refiner is starting (loading and warming its solvers); retry later or ask without refine"
            )
        deadline = time.time() + self.refine_timeout_s
        calls = [self.refiner.remote((model, sets[i], results[i]["z"], deadline)) for i in todo]
        try:
            refined = await asyncio.wait_for(asyncio.gather(*calls), timeout=self.refine_timeout_s + REFINE_GRACE_S)
        except asyncio.TimeoutError:
            for call in calls:
                call.cancel()
            refined = [{"refine_status": "deadline", "kept": True} for _ in todo]
        except BackPressureError:
            for call in calls:
                call.cancel()
            raise
        for i, f in zip(todo, refined):
            r = results[i]
            timing = {**r["timing_ms"], **f.get("timing_ms", {})}
            if f.get("error") is not None or "z" not in f:  # no fit came back: the network's answer stands
                why = "failed" if f.get("error") is not None else f["refine_status"]
                results[i] = {**r, "refine_status": why, "timing_ms": timing}
            else:
                results[i] = {**stage.combine(r, f), "timing_ms": timing}

    def check_health(self) -> None:
        if not self.estimators:
            raise RuntimeError("no estimator loaded")

    async def _refiner_ready(self) -> bool:
        """Whether a Refiner replica can answer, waiting at most READY_WAIT_S to find out.
        One call of its ``ready`` at a time asks (it waits in Serve's queue until a
        replica has started); its first answer settles it for good. This replica, the
        Api, is routed to only once its own __init__ has warmed its solvers."""
        if not self.refiner_ready:
            if self._refiner_probe is None:
                self._refiner_probe = _probe(self.refiner)
            probe = self._refiner_probe
            try:
                self.refiner_ready = bool(await asyncio.wait_for(asyncio.shield(probe), READY_WAIT_S))
            except asyncio.TimeoutError:
                pass
            except asyncio.CancelledError:
                if not probe.cancelled():  # this request itself was cancelled (its client left)
                    raise
                self._refiner_probe = None  # the probe was: the next request asks again
            except Exception:  # the call failed (a replica lost on the way): the next request asks again
                self._refiner_probe = None
        return self.refiner_ready

    @app.get("/healthz")
    async def healthz(self):
        """200 once every deployment answers at full speed (solvers compiled and warmed),
        else 503 naming what is still starting."""
        if await self._refiner_ready():
            return {"status": "ok", "models": sorted(self.estimators)}
        return JSONResponse(
            status_code=503,
            content={"status": "starting", "starting": ["Refiner"], "models": sorted(self.estimators)},
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )

    @app.get("/v1/models", response_model=ModelsAnswer)
    def models(self) -> dict:
        return {"models": [service.describe(e) for e in self.estimators.values()]}

    @app.post(
        "/v1/models/{model}/infer",
        response_model=Answer | BatchAnswer,
        openapi_extra={
            "requestBody": {"required": True, "content": {"application/json": {"schema": _inline_schema(InferRequest)}}}
        },
        responses=BODY_ERRORS,
    )
    async def infer(self, model: str, request: Request):
        self.in_flight += 1
        try:
            return await self._answer(model, request)
        finally:
            self.in_flight -= 1

    async def _answer(
        self, model: str, request: Request, schema: type[InferRequest] = InferRequest, kept: dict | None = None
    ):
        # the body is read and checked here (size, JSON, schema), not by FastAPI, so that
        # every failure is a 4xx with one message; openapi_extra documents its schema.
        # ``kept`` (the trajectories route) receives the request and each set's result.
        start = time.perf_counter()
        est = self.estimators.get(model)
        if est is None:
            return _error(404, f"unknown model {model!r}; served models are {sorted(self.estimators)}")
        try:
            raw = await _read_body(request, self.max_body_bytes)
            service.check_json_shape(raw, self.max_json_depth, self.max_number_chars)
        except service.BadRequest as exc:
            return _error(exc.status, str(exc))
        try:
            payload = json.loads(raw, parse_constant=_reject_constant)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            return _error(400, f"request body is not valid JSON: {exc}")
        try:
            req = schema.model_validate(payload)
        except ValidationError as exc:
            return _error(422, _validation_message(exc))
        if (req.observations is None) == (req.batch is None):
            return _error(422, "give exactly one of 'observations' (one set) or 'batch' (a list of sets)")
        if req.batch is None:
            assert req.observations is not None  # exactly one of the two is given (checked above)
            lists = [req.observations]
        else:
            lists = req.batch
        if req.batch is not None and not 0 < len(req.batch) <= self.max_batch:
            return _error(422, f"batch holds {len(req.batch)} observation sets; it must hold 1 to {self.max_batch}")
        # a set that breaks a rule is refused on its own: the request's 4xx for a single
        # set, its own {"error": ...} entry in a batch (the other sets are answered)
        checked: list = []
        for i, obs in enumerate(lists):
            try:
                where = "observations" if req.batch is None else f"batch[{i}]"
                dumped = [o.model_dump() for o in obs]
                checked.append(
                    service.to_arrays(est, dumped, self.observation_limits[model], where, self.bounds[model])
                )
            except service.BadRequest as exc:
                if req.batch is None:
                    return _error(exc.status, str(exc))
                checked.append({"error": str(exc)})
        sets = [c for c in checked if not isinstance(c, dict)]
        if req.refine and len(sets) > self.max_refine_cases:
            return _error(
                422, f"refine asked for {len(sets)} observation sets; at most {self.max_refine_cases} per request"
            )
        parsed = time.perf_counter()
        self._infer.set_batch_wait_timeout_s(_batch_wait(self.in_flight, INFER_BATCH_WAIT_S))  # type: ignore[attr-defined]
        answered = iter(await asyncio.gather(*[self._infer((model, s)) for s in sets]))
        results = [c if isinstance(c, dict) else next(answered) for c in checked]
        if req.refine:
            try:
                await self._refine(model, checked, results, auto=req.refine == "auto")
            except BackPressureError:
                return JSONResponse(
                    status_code=503,
                    content={"error": "the refinement queue is full; retry later or ask without refine"},
                    headers={"Retry-After": "1"},
                )
            except RefinerStarting as exc:
                return JSONResponse(
                    status_code=503, content={"error": str(exc)}, headers={"Retry-After": str(RETRY_AFTER_S)}
                )
        if kept is not None:
            kept.update(request=req, results=results)
        answers = [
            {"error": r["error"]}
            if r.get("error") is not None
            else service.answer(
                est,
                r,
                req.level,
                r.get("refine_status", "not_requested"),
                {"parse": 1e3 * (parsed - start), **r["timing_ms"], "total": 1e3 * (time.perf_counter() - start)},
            )
            for r in results
        ]
        if req.batch is None:
            return _error(422, f"observations: {answers[0]['error']}") if "error" in answers[0] else answers[0]
        return {"results": answers}

    # ---- the page for people (mechinfer/serve/page.py) and the routes it uses besides infer
    @app.post(
        "/v1/models/{model}/trajectories",
        response_model=TrajectoriesAnswer,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _inline_schema(TrajectoryRequest)}},
            }
        },
        responses=BODY_ERRORS,
    )
    async def trajectories(self, model: str, request: Request):
        """One observation set's estimate (as the infer route answers it) and, per
        channel on a time grid over [0, T], the model at that estimate and its band."""
        self.in_flight += 1
        try:
            kept: dict = {}
            answer = await self._answer(model, request, TrajectoryRequest, kept)
            if isinstance(answer, JSONResponse):
                return answer
            req = kept["request"]
            drawn = curves.trajectories(self.estimators[model], kept["results"][0], req.level, req.points)
            return {"estimate": answer, **drawn}
        finally:
            self.in_flight -= 1

    @app.get("/v1/limits", response_model=LimitsAnswer)
    def limits(self) -> dict:
        return {
            "max_observations": self.max_observations,
            "max_observations_by_model": {
                name: n for name, n in self.observation_limits.items() if n > self.max_observations
            },
            "max_batch": self.max_batch,
            "max_refine_cases": self.max_refine_cases,
            "max_body_bytes": self.max_body_bytes,
            "refine_timeout_s": self.refine_timeout_s,
        }

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page(self) -> HTMLResponse:
        return HTMLResponse(web_page.html())


def build(args: ServeArgs) -> serve.Application:
    """The application from the Serve config's ``args`` (Serve's application builder:
    exactly one parameter, typed, so Serve validates the config's ``args`` into
    :class:`~mechinfer.config.ServeArgs`); see :func:`application`."""
    return application(args)


def application(args: ServeArgs | dict, deployment_options: dict[str, dict] | None = None) -> serve.Application:
    """The application from its settings (:class:`~mechinfer.config.ServeArgs`, or the
    same as a dict). ``deployment_options`` (name -> ``.options()`` keywords) is the
    Python-side counterpart of the config's ``deployments`` section."""
    settings = args if isinstance(args, ServeArgs) else ServeArgs.model_validate(args)
    checkpoints = {}
    for entry, source in (settings.checkpoints or {name: name for name in list_models()}).items():
        est = load_estimator(source)  # fail at deploy time, not on the first request
        if is_model_file(entry):  # a model file (SPEC 11): served under its model's name
            check_model(load_model(entry), est.meta, f"checkpoint {source}")
        elif est.model.name != entry:
            raise ValueError(f"checkpoint {source} is for {est.model.name!r}, configured as {entry!r}")
        if est.model.name in checkpoints:
            raise ValueError(f"model {est.model.name!r} is configured twice")
        # the replicas rebuild the model from the checkpoint's stored copy of its source
        checkpoints[est.model.name] = source
        service.value_bounds(est, (settings.value_bounds or {}).get(est.model.name))
    stray = set(settings.value_bounds or {}) - set(checkpoints)
    if stray:
        raise ValueError(f"value_bounds names {sorted(stray)}, which are not served; served: {sorted(checkpoints)}")
    options = deployment_options or {}
    unknown = set(options) - {"Api", "Refiner"}
    if unknown:
        raise ValueError(f"no deployment named {sorted(unknown)}; the deployments are Api and Refiner")
    # @serve.deployment turns the classes into Deployments (with .options) at runtime,
    # but Ray's typing leaves them typed as the plain classes
    refiner = Refiner.options(**options.get("Refiner", {})).bind(  # type: ignore[attr-defined]
        checkpoints, settings.compile, settings.refine_method, settings.refine_starts
    )
    return Api.options(**options.get("Api", {})).bind(refiner, checkpoints, settings)  # type: ignore[attr-defined]
