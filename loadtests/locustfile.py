"""Load tests for the service, for Locust. docs/loadtesting.md is the full guide.

With the service running (``make serve``)::

    locust -f loadtests/locustfile.py --headless -u 16 -r 4 -t 60s          # plain Locust
    locust -f loadtests/locustfile.py --headless --shape step --max-p99-ms 150
    locust -f loadtests/locustfile.py --headless -u 8 -t 30s --tags v2-binary
    locust -f loadtests/locustfile.py                                       # web UI

Simulated clients mix the service's workloads; each is tagged, so ``--tags`` runs one alone:

=================  ======  ====================================================================
tag                weight  requests
=================  ======  ====================================================================
``classify``       6       ``POST /classify``: one digit (85%) or 2-8 digits as JSON arrays
``classify-image`` 2       ``POST /classify_image``: a PNG upload, 16 to 200 pixels square
``forecast``       3       ``POST /forecast``: one CO2 history (80%) or 2-4, 104 weeks up to
                           the longest row the forecaster accepts
``generate``       2       ``POST /generate``: 1-4 digits, as PNG (half) or arrays
``v2-json``        3       ``infer`` on the classifier (2) and the forecaster (1), JSON tensors
``v2-binary``      4       ``infer`` on the classifier (2), forecaster (1) and generator (1)
                           with the binary tensor extension, as ``tritonclient.http`` sends it
=================  ======  ====================================================================

``--v2-model NAME`` points both V2 workloads at any served model (one imported with
``python -m store_format import``, say) instead: random valid inputs drawn from its metadata,
with the same weights, over JSON and binary (modelserve_locust/generic.py).

Every answer is checked: status, shape, plausible values, and agreement with the earlier
answer for the same input (checks.py). ``--max-p99-ms`` and ``--max-fail-ratio`` turn the
run into a gate (exit code 1 and a one-line verdict); ``--shape`` picks a bounded load
shape. docs/loadtesting.md lists every option this file adds (Locust's own --help cannot).
"""

from __future__ import annotations

import logging
import random
import urllib.request
from collections.abc import Callable

import orjson
from locust import FastHttpUser, LoadTestShape, events, tag, task
from locust import log as locust_log
from locust.runners import MasterRunner, WorkerRunner
from locust.user.wait_time import constant_throughput
from modelserve_locust import checks, generic, options, payloads, records, shapes
from modelserve_locust.gate import Measured, Verdict, judge

logger = logging.getLogger(__name__)

REFERENCES = checks.References()
records.write_last_rows_on_close()
JSON = {"Content-Type": "application/json"}


def load_pools(host: str) -> payloads.Pools:
    """The input pools, sized to what the served models take (read from their V2 metadata)."""
    try:
        forecaster = _metadata(host, "forecaster")
        generator = _metadata(host, "generator")
        limits = payloads.ForecasterLimits.from_metadata(forecaster)
        latent_dim = next(t["shape"][-1] for t in generator["inputs"] if t["name"] == "latent")
    except (OSError, ValueError, KeyError, StopIteration) as exc:
        limits, latent_dim = payloads.ForecasterLimits(), 32
        logger.warning("model metadata unavailable at %s (%s); assuming %s", host, exc, limits)
    return payloads.pools(limits, latent_dim)


def _metadata(host: str, model: str) -> dict:
    with urllib.request.urlopen(f"{host}/v2/models/{model}", timeout=10) as answer:
        return orjson.loads(answer.read())


def load_generic(host: str, opts) -> generic.GenericRequests | None:
    """The request pool of ``--v2-model``, drawn from its metadata; None without the option."""
    name = getattr(opts, "v2_model", None) if opts is not None else None
    if not name:
        return None
    return generic.GenericRequests(_metadata(host, name), opts.v2_rows, opts.v2_dim_sizes)


class ServiceUser(FastHttpUser):
    """One client of the service, sending ``--rate-per-user`` requests per second."""

    host = "http://127.0.0.1:3000"  # `make serve`; --host overrides it

    def on_start(self) -> None:
        self.pools = Run.pools or load_pools(self.host)
        self.generic = Run.generic or load_generic(self.host, self.environment.parsed_options)
        rate = getattr(self.environment.parsed_options, "rate_per_user", options.DEFAULT_RATE_PER_USER)
        self._pace = constant_throughput(rate) if rate and rate > 0 else (lambda _user: 0.0)

    def wait_time(self) -> float:
        return self._pace(self)

    def call(
        self, path: str, body: bytes, headers: dict[str, str], check: Callable, name: str | None = None
    ) -> None:
        """POST ``body``; the request fails unless ``check(response)`` finds the answer right."""
        with self.client.post(path, data=body, headers=headers, name=name, catch_response=True) as response:
            try:
                checks.status(response.status_code, response.content)
                check(response)
            except checks.WrongAnswer as wrong:
                response.failure(str(wrong))
            except Exception as exc:  # a check that cannot read the answer: still the answer's fault
                response.failure(f"unreadable answer: {type(exc).__name__}")

    # --- task endpoints ---------------------------------------------------------------------

    @tag("classify")
    @task(6)
    def classify(self) -> None:
        indices = random.sample(
            range(payloads.DIGIT_POOL), 1 if random.random() < 0.85 else random.randint(2, 8)
        )
        self.call(
            "/classify",
            self.pools.classify_body(indices),
            JSON,
            lambda r: checks.classify(r.content, indices, REFERENCES),
        )

    @tag("classify-image")
    @task(2)
    def classify_image(self) -> None:
        index = random.randrange(payloads.PICTURE_POOL)
        body, content_type = self.pools.pictures[index]
        self.call(
            "/classify_image",
            body,
            {"Content-Type": content_type},
            lambda r: checks.classify_image(r.content, index, REFERENCES),
        )

    @tag("forecast")
    @task(3)
    def forecast(self) -> None:
        indices = random.sample(
            range(payloads.HISTORY_POOL), 1 if random.random() < 0.8 else random.randint(2, 4)
        )
        self.call(
            "/forecast",
            self.pools.forecast_body(indices),
            JSON,
            lambda r: checks.forecast(r.content, indices, self.pools, REFERENCES),
        )

    @tag("generate")
    @task(2)
    def generate(self) -> None:
        labels = random.sample(range(10), random.randint(1, 4))
        seed, form = random.randrange(64), random.choice(("png", "array"))
        body = orjson.dumps({"labels": labels, "seed": seed, "format": form})
        self.call(
            "/generate", body, JSON, lambda r: checks.generate(r.content, labels, seed, form, REFERENCES)
        )

    # --- Open Inference Protocol, JSON tensors ------------------------------------------------

    @tag("v2-json")
    @task(2)
    def v2_json_classifier(self) -> None:
        if self.generic is not None:
            return self.v2_generic(binary=False)
        indices = random.sample(range(payloads.DIGIT_POOL), random.randint(1, 4))
        body = payloads.v2_json_body([self.pools.images_tensor(indices)])
        self.infer("classifier", body, None, lambda out: checks.v2_classifier(out, indices, REFERENCES))

    @tag("v2-json")
    @task(1)
    def v2_json_forecaster(self) -> None:
        if self.generic is not None:
            return self.v2_generic(binary=False)
        indices = random.sample(range(payloads.HISTORY_POOL), random.randint(1, 2))
        body = payloads.v2_json_body(self.pools.history_tensors(indices))
        self.infer(
            "forecaster", body, None, lambda out: checks.v2_forecaster(out, indices, self.pools, REFERENCES)
        )

    # --- Open Inference Protocol, binary tensor extension -------------------------------------

    @tag("v2-binary")
    @task(2)
    def v2_binary_classifier(self) -> None:
        if self.generic is not None:
            return self.v2_generic(binary=True)
        indices = random.sample(range(payloads.DIGIT_POOL), random.randint(1, 4))
        body, header_length = payloads.v2_binary_body([self.pools.images_tensor(indices)])
        self.infer(
            "classifier", body, header_length, lambda out: checks.v2_classifier(out, indices, REFERENCES)
        )

    @tag("v2-binary")
    @task(1)
    def v2_binary_forecaster(self) -> None:
        if self.generic is not None:
            return self.v2_generic(binary=True)
        indices = random.sample(range(payloads.HISTORY_POOL), random.randint(1, 2))
        body, header_length = payloads.v2_binary_body(self.pools.history_tensors(indices))
        self.infer(
            "forecaster",
            body,
            header_length,
            lambda out: checks.v2_forecaster(out, indices, self.pools, REFERENCES),
        )

    @tag("v2-binary")
    @task(1)
    def v2_binary_generator(self) -> None:
        if self.generic is not None:
            return self.v2_generic(binary=True)
        index = random.randrange(payloads.LATENT_POOL)
        tensors = self.pools.generator_tensors(index)
        body, header_length = payloads.v2_binary_body(tensors)
        n = len(tensors[0].array)
        self.infer(
            "generator", body, header_length, lambda out: checks.v2_generator(out, index, n, REFERENCES)
        )

    def v2_generic(self, binary: bool) -> None:
        """``infer`` on the ``--v2-model`` model with a random pool entry, JSON or binary."""
        index = random.randrange(generic.GENERIC_POOL)
        entry = self.generic.entries[index]
        body = entry.binary_body if binary else entry.json_body
        model = self.generic.name

        def check(response) -> None:
            length = response.headers.get("Inference-Header-Content-Length")
            outputs = checks.v2(response.content, length, model, binary)
            self.generic.check(index, outputs, generic.datatypes_of(response.content, length))

        headers = {"Inference-Header-Content-Length": str(entry.header_length)} if binary else JSON
        self.call(
            f"/v2/models/{model}/infer",
            body,
            headers,
            check,
            name=f"/v2/models/{model}/infer [{'binary' if binary else 'json'}]",
        )

    def infer(self, model: str, body: bytes, header_length: int | None, check: Callable) -> None:
        """A V2 ``infer`` call: JSON when ``header_length`` is None, else the binary extension."""
        binary = header_length is not None
        headers = {"Inference-Header-Content-Length": str(header_length)} if binary else JSON
        self.call(
            f"/v2/models/{model}/infer",
            body,
            headers,
            lambda r: check(
                checks.v2(r.content, r.headers.get("Inference-Header-Content-Length"), model, binary)
            ),
            name=f"/v2/models/{model}/infer [{'binary' if binary else 'json'}]",
        )


class SelectedShape(LoadTestShape):
    """The shape chosen with ``--shape``; with ``--shape none`` the run has no shape at all."""

    use_common_options = True  # -u/-r/-t apply with --shape none; the others say so themselves
    plan: shapes.Plan | None = None

    def tick(self) -> tuple[int, float] | None:
        return self.plan.at(self.get_run_time()) if self.plan else None


# --- wiring into Locust's events -------------------------------------------------------------


@events.init_command_line_parser.add_listener
def _add_options(parser, **_kwargs) -> None:
    options.register(parser)


class Run:
    """What the master (or the only process) keeps for the verdict and the result files."""

    pools: payloads.Pools | None = None  # in every process that runs users
    generic: generic.GenericRequests | None = None  # with --v2-model, likewise
    records: records.RunRecords | None = None
    cpu: records.LocustCpu | None = None
    verdict: Verdict | None = None


@events.init.add_listener
def _on_init(environment, **_kwargs) -> None:
    if isinstance(environment.runner, WorkerRunner) or environment.parsed_options is None:
        return
    opts = environment.parsed_options
    _choose_shape(environment, opts)
    Run.records = records.RunRecords(environment)
    Run.cpu = records.LocustCpu(environment.runner)
    Run.cpu.start()
    if Run.records.folder:
        logger.info("results: %s", Run.records.folder)


def _choose_shape(environment, opts) -> None:
    if opts.shape == "none":
        environment.shape_class = None
        return
    plan = shapes.plan(opts.shape, opts.shape_users, opts.shape_seconds)
    if environment.shape_class is not None:
        environment.shape_class.plan = plan
    ignored = [
        flag
        for flag, value in (("-u", opts.num_users), ("-r", opts.spawn_rate), ("-t", opts.run_time))
        if value
    ]
    if ignored:
        logger.warning("%s ignored: --shape %s sets users and time itself", ", ".join(ignored), opts.shape)
    logger.info(plan.describe())


@events.test_start.add_listener
def _prepare_inputs(environment, **_kwargs) -> None:
    """Draw the input pools before users start, so that their cost is not the load's."""
    if not isinstance(environment.runner, MasterRunner):
        Run.pools = load_pools(environment.host or ServiceUser.host)
        Run.generic = load_generic(environment.host or ServiceUser.host, environment.parsed_options)
        if Run.cpu is not None:
            Run.cpu.start()  # afresh: drawing the pools is not load generation


@events.quitting.add_listener
def _judge(environment, **_kwargs) -> None:
    """Decide the verdict before Locust picks its exit code."""
    if isinstance(environment.runner, WorkerRunner) or environment.parsed_options is None:
        return
    total = environment.runner.stats.total
    measured = Measured(
        total.num_requests, total.num_failures, total.get_response_time_percentile(0.99) or 0.0
    )
    opts = environment.parsed_options
    Run.verdict = judge(measured, opts.max_p99_ms, opts.max_fail_ratio)
    if not Run.verdict.passed:
        environment.process_exit_code = 1
    elif not environment.runner.exceptions and not locust_log.unhandled_greenlet_exception:
        environment.process_exit_code = 0  # failures within --max-fail-ratio are allowed


@events.quit.add_listener
def _report(**_kwargs) -> None:
    """After Locust's own summary: Locust's CPU, then the verdict as the last line."""
    if Run.verdict is None or Run.cpu is None or Run.records is None:
        return
    Run.cpu.stop()
    opts = Run.records.environment.parsed_options
    Run.records.finish(
        Run.cpu,
        {
            **Run.verdict.to_dict(),
            "shape": opts.shape,
            "tags": opts.tags,
            "rate_per_user": opts.rate_per_user,
            "locust_cpu": Run.cpu.summary(),
        },
    )
    print(Run.cpu.line())
    if Run.records.folder:
        print(f"Results: {Run.records.folder}")
    print(Run.verdict.line, flush=True)
