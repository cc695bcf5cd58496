"""Ray Serve application: the inference networks behind the HTTP API of SPEC 7.

    serve run serving/config.yaml        # local, on an embedded Ray
    serve deploy serving/config.yaml     # to a running cluster

Two deployments: ``Api`` (FastAPI ingress: parsing, checks, answers, and the networks:
concurrent cases are batched with ``@serve.batch``) and ``Refiner`` (one BFGS start from
the network's estimate, concurrent cases fitted together; its own replicas and CPU
budget, so slow refinements never hold up plain inference). Which checkpoints are
served is configuration (``args.checkpoints``), never a request parameter.

(No ``from __future__ import annotations`` here: Serve's ingress wrapper must resolve
FastAPI's annotations, e.g. ``Request``, at runtime. Module-level helpers sit above the
deployments: ``@serve.deployment`` pickles the class when it decorates it.)
"""

import asyncio
import json
import time
from typing import cast

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle

from mechinfer import __version__, list_models
from mechinfer.config import ServeArgs
from mechinfer.estimate.estimator import load_estimator
from mechinfer.serve import handlers as service


class Observation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    t: float = Field(allow_inf_nan=False, description="observation time (h), within [0, T]")
    channel: str = Field(description="observed channel name, e.g. 'X'")
    value: float = Field(allow_inf_nan=False, description="measured value")


class InferRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    observations: list[Observation] | None = Field(None, description="one observation set")
    batch: list[list[Observation]] | None = Field(None, description="several observation sets")
    refine: bool = Field(False, description="polish each estimate by one BFGS start")


class Answer(BaseModel):
    parameters: dict[str, float]
    units: dict[str, str]
    z: list[float]
    nll: float | None
    refined: bool
    timing_ms: dict[str, float]
    checkpoint_id: str


class BatchAnswer(BaseModel):
    results: list[Answer]


class Parameter(BaseModel):
    name: str
    unit: str


class ModelInfo(BaseModel):
    name: str
    parameters: list[Parameter]
    channels: list[str]
    T: float
    n_obs: int
    checkpoint_id: str


class ModelsAnswer(BaseModel):
    models: list[ModelInfo]


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


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": message})


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def _validation_message(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    return f"{where}: {first['msg']}"


def _load(checkpoints: dict[str, str], compile: bool | None, refine: bool) -> dict:
    """A replica's estimators (one torch thread: replicas are scaled by Serve, not by
    threads), warmed up for what the replica runs."""
    import torch

    torch.set_num_threads(1)
    estimators = {name: load_estimator(src) for name, src in checkpoints.items()}
    for est in estimators.values():
        service.warm_up(est, refine=refine, compile=compile)
    return estimators


def _per_model(cases: list[tuple], run, batch_key: str) -> list[dict]:
    """Answer a @serve.batch of cases (model name, (t, channel, value)[, z]): one call of
    run(name, t, ch, v, z) per model on its cases, NaN-padded. (Run inline, not in a
    thread: a thread holding the GIL through the solver's Python loop starves the event
    loop that receives the requests; measured 3.5x fewer answers per second.)"""
    out: list[dict | None] = [None] * len(cases)
    for name in {c[0] for c in cases}:
        idx = [i for i, c in enumerate(cases) if c[0] == name]
        t, ch, v = service.pad([cases[i][1] for i in idx])
        z = np.stack([cases[i][2] for i in idx]) if len(cases[idx[0]]) > 2 else None
        res = run(name, t, ch, v, z)
        for j, i in enumerate(idx):
            out[i] = {
                "z": res["z"][j],
                "nll": float(res["nll"][j]),
                "timing_ms": {**res["timing_ms"], batch_key: len(idx)},
            }
    return cast(list[dict], out)  # every case belongs to one model: no slot is left None


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=64)
class Refiner:
    """One BFGS start per case from the network's estimate; concurrent cases of a model
    are fitted as one batch (each is its own problem, so batching changes no answer)."""

    def __init__(self, checkpoints: dict[str, str], compile: bool | None = None):
        self.estimators, self.compile = _load(checkpoints, compile, refine=True), compile

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.01)
    async def __call__(self, cases: list[tuple]) -> list[dict]:
        return _per_model(
            cases,
            lambda name, t, ch, v, z: service.refine(self.estimators[name], t, ch, v, z, compile=self.compile),
            "refine_batch_size",
        )


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=512)
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

    @serve.batch(max_batch_size=256, batch_wait_timeout_s=0.005)
    async def _infer(self, cases: list[tuple]) -> list[dict]:
        return _per_model(
            cases,
            lambda name, t, ch, v, _: service.infer(self.estimators[name], t, ch, v, compile=self.compile),
            "batch_size",
        )

    @app.get("/healthz")
    def healthz(self) -> dict:
        return {"status": "ok", "models": sorted(self.estimators)}

    @app.get("/v1/models", response_model=ModelsAnswer)
    def models(self) -> dict:
        return {"models": [service.describe(e) for e in self.estimators.values()]}

    @app.post(
        "/v1/models/{model}/infer",
        response_model=Answer | BatchAnswer,
        openapi_extra={
            "requestBody": {"required": True, "content": {"application/json": {"schema": _inline_schema(InferRequest)}}}
        },
        responses={
            400: {"description": "malformed JSON"},
            404: {"description": "unknown model"},
            413: {"description": "body too large"},
            422: {"description": "invalid observations"},
        },
    )
    async def infer(self, model: str, request: Request):
        # the body is read and checked here (size, JSON, schema), not by FastAPI, so that
        # every failure is a 4xx with one message; openapi_extra documents its schema
        start = time.perf_counter()
        est = self.estimators.get(model)
        if est is None:
            return _error(404, f"unknown model {model!r}; served models are {sorted(self.estimators)}")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            return _error(413, f"request body of {declared} bytes exceeds the limit of {self.max_body_bytes}")
        raw = await request.body()
        if len(raw) > self.max_body_bytes:
            return _error(413, f"request body of {len(raw)} bytes exceeds the limit of {self.max_body_bytes}")
        try:
            payload = json.loads(raw, parse_constant=_reject_constant)
        except (ValueError, UnicodeDecodeError) as exc:
            return _error(400, f"request body is not valid JSON: {exc}")
        try:
            req = InferRequest.model_validate(payload)
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
        try:
            sets = [
                service.to_arrays(
                    est,
                    [o.model_dump() for o in obs],
                    self.max_observations,
                    "observations" if req.batch is None else f"batch[{i}]",
                )
                for i, obs in enumerate(lists)
            ]
        except service.BadRequest as exc:
            return _error(exc.status, str(exc))
        parsed = time.perf_counter()
        results = await asyncio.gather(*[self._infer((model, s)) for s in sets])
        if req.refine:
            refined = await asyncio.gather(*[self.refiner.remote((model, s, r["z"])) for s, r in zip(sets, results)])
            results = [{**f, "timing_ms": {**r["timing_ms"], **f["timing_ms"]}} for r, f in zip(results, refined)]
        answers = [
            service.answer(
                est,
                r["z"],
                r["nll"],
                req.refine,
                {"parse": 1e3 * (parsed - start), **r["timing_ms"], "total": 1e3 * (time.perf_counter() - start)},
            )
            for r in results
        ]
        return answers[0] if req.batch is None else {"results": answers}


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
    checkpoints = dict(settings.checkpoints or {name: name for name in list_models()})
    for name, source in checkpoints.items():
        est = load_estimator(source)  # fail at deploy time, not on the first request
        if est.model.name != name:
            raise ValueError(f"checkpoint {source} is for {est.model.name!r}, configured as {name!r}")
    options = deployment_options or {}
    unknown = set(options) - {"Api", "Refiner"}
    if unknown:
        raise ValueError(f"no deployment named {sorted(unknown)}; the deployments are Api and Refiner")
    # @serve.deployment turns the classes into Deployments (with .options) at runtime,
    # but Ray's typing leaves them typed as the plain classes
    refiner = Refiner.options(**options.get("Refiner", {})).bind(checkpoints, settings.compile)  # type: ignore[attr-defined]
    return Api.options(**options.get("Api", {})).bind(refiner, checkpoints, settings)  # type: ignore[attr-defined]
