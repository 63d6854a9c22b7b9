"""Settings: the one place that reads the environment.

``Settings.from_env()`` is called once at the edge (the CLI) and the frozen result is passed
explicitly to everything else. Every variable has the ``ABKIT_`` prefix; OpenTelemetry is
configured only through its standard ``OTEL_*`` variables (read by the SDK itself, see
:mod:`abkit.infra.telemetry`).
"""

from __future__ import annotations

import getpass
import importlib.util
import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

from abkit.core.aliases import check_alias_name
from abkit.errors import ValidationError

if TYPE_CHECKING:
    from abkit.infra.stream import StreamSettings

log = logging.getLogger(__name__)

DEFAULT_DATABASE_URL = "sqlite:///abkit.db"
RETIRED = {
    "ABKIT_GRPC_WORKERS": "the gRPC server runs its calls as coroutines on one event loop per "
    "process; use ABKIT_GRPC_PROCESSES to use more cores",
}
"""Variables abkit once read, and why they no longer matter: a deployment that still sets one
is told so at startup rather than left to believe it has an effect."""
MAX_GRPC_PROCESSES = 64
EVENT_LOOPS = ("auto", "asyncio", "uvloop")
"""What ``ABKIT_GRPC_EVENT_LOOP`` may be (:func:`abkit.rpc.loops.new_loop`)."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Runtime settings. Each field is read from ``ABKIT_<FIELD NAME IN UPPER CASE>`` (or the
    standard variable named in its metadata)."""

    database_url: str = DEFAULT_DATABASE_URL
    """SQLAlchemy URL of the store: ``sqlite:///abkit.db`` (embedded) or
    ``postgresql+psycopg://user:password@host:5432/abkit`` (production)."""
    grpc_address: str = "127.0.0.1:50051"
    """Where the gRPC assignment service listens (``0.0.0.0:50051`` in a container)."""
    web_address: str = "127.0.0.1:8000"
    """Where the results page listens."""
    admin_token: str = ""
    """Bearer token for admin actions; empty disables them."""
    web_token: str = ""
    """Token for reading the results pages and API (bearer or login form); empty: open."""
    grpc_processes: int = 1
    """Processes of ``abkit grpc`` sharing its port (``SO_REUSEPORT``, Linux): one Python process
    serves about one core's worth of RPCs, so set it to the cores the server may use. Each
    process has its own journal (``<spool>/process-<i>``); ``abkit grpc`` supervises them and
    stops them all when one dies."""
    grpc_switch_interval_seconds: float = 0.001
    """``sys.setswitchinterval`` of ``abkit grpc`` and ``abkit serve``: how long a thread may
    hold the GIL while another waits for it. The journal's and the drain's threads give it up on
    every fsync and database round trip and, at Python's default of 5 ms, can wait that long to
    get it back from the busy request loop each time; 1 ms keeps them moving (BENCHMARKS.md)."""
    grpc_event_loop: str = "auto"
    """The event loop of ``abkit grpc`` and ``abkit serve``: ``uvloop`` (libuv's, in C: about a
    tenth less CPU a call, BENCHMARKS.md), ``asyncio`` (the standard library's), or ``auto``:
    uvloop when it is installed (``pip install 'abkit[fast]'``, in the container image), else
    asyncio."""
    grpc_grace_seconds: float = 10.0
    """On shutdown, in-flight RPCs get this long to finish."""
    config_refresh_seconds: float = 0.25
    """How often the server looks for a changed experiment config in the store (one small query
    of each experiment's revision; the config is loaded only when one changed). Bounds how soon
    a change reaches the config stream's clients."""
    config_streams: int = 256
    """Most ``WatchConfig`` streams (local-evaluation clients) one server process holds (an idle
    stream costs a coroutine, no thread). Beyond it: RESOURCE_EXHAUSTED."""
    config_heartbeat_seconds: float = 5.0
    """A config stream with no change sends a heartbeat this often: clients know the config
    they hold is current (their config age stays below it)."""
    writer_batch_size: int = 20000
    """Most exposures and events the journal's drain writes to the store in one transaction. It
    takes what is durable up to this bound, so batches are small when traffic is light; under
    load, large batches spend fewer round trips (and fewer waits for the GIL) per row."""
    writer_flush_seconds: float = 0.2
    """Longest a durable row waits in the journal before the drain looks for it."""
    spool_dir: str = ""
    """The local journal: every accepted exposure and event is appended here (group-committed,
    fsync'd) before the answer that accepts it, and copied from here into the store (in order,
    idempotently; kept while the store is unreachable). Default: next to an SQLite file
    (``abkit.db-spool``), else ``./abkit-spool``. ``off`` keeps the journal in memory: nothing
    acknowledged survives the process (for tests and throwaway demos only)."""
    spool_max_mb: int = 1024
    """Bound of the journal's rows not yet in the store; when reached, Track (and Assign with
    durable exposures) answers UNAVAILABLE until the store catches up (back-pressure)."""
    exposure_durability: str = "sync"
    """``sync``: an Assign answer that reports ``in_experiment`` is sent only after its exposure
    is durable in the journal. ``async``: the answer does not wait for the fsync; a crash can
    lose the exposures of the last group commit (see the reliability documentation). Events are
    always durable before the answer."""
    durability_timeout_seconds: float = 5.0
    """Longest an RPC waits for its rows to become durable before it answers UNAVAILABLE."""
    commit_delay_seconds: float = 0.005
    """How long the journal (or, in stream mode, the publisher) lets concurrent calls gather
    before a group commit somebody waits for, when the last group held several calls
    (PostgreSQL's ``commit_delay`` and ``commit_siblings``): fuller groups, fewer wake-ups, a
    little latency under load; a lone call never waits. 0 commits at once. Each group costs
    the serving process far more than its fsync (wake-ups and GIL hand-offs between the loop
    and the committing thread): at 5 ms rather than 2 ms, new-unit ``Assign`` served ~12 %
    more calls per core here and its p99 at half load fell (BENCHMARKS.md, gRPC)."""
    stream_url: str = ""
    """``nats://host:4222[,nats://host2:4222]``: publish exposures and events to a NATS
    JetStream stream (acknowledged by the stream before the answer) instead of writing the
    database; ``abkit loader`` processes copy the stream into the store. Empty: direct mode."""
    stream_name: str = "ABKIT"
    """The JetStream stream (created or updated at start)."""
    stream_subject_prefix: str = "abkit"
    """Rows go to ``<prefix>.rows.exposures|events``, dead letters to ``<prefix>.dead.<kind>``."""
    stream_replicas: int = 1
    """Replicas of the stream (3 on a 3-node JetStream cluster)."""
    stream_max_age_seconds: int = 7 * 86400
    """Messages older than this leave the stream (the loaders are expected to keep up)."""
    stream_max_mb: int = 10240
    """Size bound of the stream; beyond it the oldest messages leave it."""
    loader_durable: str = "abkit-loader"
    """The durable consumer every ``abkit loader`` shares."""
    loader_batch: int = 256
    """Messages a loader fetches and writes in one transaction."""
    loader_ack_wait_seconds: float = 30.0
    """How long a fetched batch may stay unacknowledged before JetStream hands it to another
    loader (a loader that died mid-batch); longer than a batch takes to write."""
    loader_max_lag: int = 10000
    """``abkit health loader`` is unhealthy when more messages than this wait for the loaders."""
    api_token: str = ""
    """When set, Track/TrackBatch (and Assign, see below) need ``authorization: Bearer <token>``."""
    api_token_for_assign: bool = False
    """Also require the API token for Assign/AssignBatch."""
    tls_cert: str = ""
    """PEM certificate chain of the gRPC server; with ``tls_key``, the server speaks TLS only."""
    tls_key: str = ""
    """PEM private key of ``tls_cert``."""
    tls_client_ca: str = ""
    """PEM CA bundle: when set, clients must present a certificate it signed (mutual TLS)."""
    unit_id_key: str = ""
    """When set, unit ids are stored as HMAC-SHA256(key, unit id) (pseudonymisation); assignment
    still hashes the raw id, so nobody changes arm."""
    metrics_port: int = 0
    """When > 0, a Prometheus scrape endpoint on this port (in addition to OTLP via OTEL_*)."""
    worker_tick_seconds: float = 1.0
    """How often the worker checks which experiments are due for a look."""
    reconcile_every: int = 24
    """Every this many looks of an experiment, the worker also recomputes its statistics from
    every row and compares them with the maintained ones (a full look's cost; 0: never). It
    always does before a decision that changes the allocation. A difference is a hold."""
    actor: str = ""
    """Who manual actions are audited as; defaults to the operating-system user name."""
    mlflow_tracking_uri: str = ""
    """The MLflow tracking server (``http://mlflow:5000``) whose Model Registry follows the
    decisions: arms may name ``models:/<name>/<version>``, ``experiment apply`` checks those
    versions exist, and a promotion or rollback moves the aliases below (through the outbox,
    retried until done). Needs the ``mlflow`` extra. Empty: MLflow is left alone."""
    mlflow_registry_uri: str = ""
    """The model registry, when it is not the tracking server (MLflow's ``registry_uri``)."""
    mlflow_champion_alias: str = "champion"
    """The alias a promotion moves to the winning version."""
    mlflow_previous_alias: str = "previous-champion"
    """The alias the version a promotion replaces keeps, so it stays reachable."""
    mlflow_retry_max_seconds: float = 300.0
    """Longest wait between two attempts of a registry change while MLflow fails (the waits
    double from 1 s)."""
    otel_traces_exporter: str = field(default="none", metadata={"env": "OTEL_TRACES_EXPORTER"})
    """The standard OpenTelemetry variable: ``none`` (default), ``console`` or ``otlp``
    (comma-separated). Every other ``OTEL_*`` variable is read by the SDK itself."""
    otel_traces_sampler: str = field(default="", metadata={"env": "OTEL_TRACES_SAMPLER"})
    """The standard variable. When unset and no trace exporter is configured, spans are not
    recorded (nobody would receive them) but still carry trace and span ids, which exposures and
    events store; set it (e.g. ``parentbased_always_on``) to record them anyway."""
    otel_service_name: str = field(default="", metadata={"env": "OTEL_SERVICE_NAME"})
    """The standard variable; when empty each command names itself (abkit, abkit-worker, ...)."""
    otel_metrics_exporter: str = field(default="none", metadata={"env": "OTEL_METRICS_EXPORTER"})
    """``none`` (default), ``console`` or ``otlp``; see also ``metrics_port`` for Prometheus."""

    @property
    def spool_path(self) -> str | None:
        """The journal's directory, or None for a journal in memory."""
        if self.spool_dir.lower() == "off":
            return None
        if self.spool_dir:
            return self.spool_dir
        prefix = "sqlite:///"
        if self.database_url.startswith(prefix) and self.database_url != prefix + ":memory:":
            return self.database_url.removeprefix(prefix) + "-spool"
        return "abkit-spool"

    def stream(self) -> StreamSettings:
        """The stream's settings (``stream_url`` must be set)."""
        from abkit.infra.stream import StreamSettings

        return StreamSettings(
            servers=tuple(u.strip() for u in self.stream_url.split(",") if u.strip()),
            name=self.stream_name,
            prefix=self.stream_subject_prefix,
            replicas=self.stream_replicas,
            max_age_seconds=self.stream_max_age_seconds,
            max_bytes=self.stream_max_mb << 20,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``ABKIT_*`` variables (``os.environ`` unless given)."""
        env = os.environ if environ is None else environ
        for name, why in RETIRED.items():
            if env.get(name):
                log.warning("%s is no longer read and has no effect: %s", name, why)
        values: dict[str, object] = {}
        for f in fields(cls):
            name = f.metadata.get("env", f"ABKIT_{f.name.upper()}")
            raw = env.get(name)
            if raw is None or raw == "":
                continue
            values[f.name] = _parse(name, raw, type(getattr(cls(), f.name)))
        if "actor" not in values:
            values["actor"] = _os_user(env)
        return cls(**values)  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        for name in (
            "grpc_processes",
            "config_streams",
            "writer_batch_size",
            "spool_max_mb",
            "stream_replicas",
            "stream_max_age_seconds",
            "stream_max_mb",
            "loader_batch",
            "loader_max_lag",
        ):
            if getattr(self, name) < 1:
                raise ValidationError(f"ABKIT_{name.upper()}", "must be at least 1")
        if self.reconcile_every < 0:
            raise ValidationError("ABKIT_RECONCILE_EVERY", "must be 0 (never) or a number of looks")
        if self.grpc_processes > MAX_GRPC_PROCESSES:
            raise ValidationError(
                "ABKIT_GRPC_PROCESSES", f"must be at most {MAX_GRPC_PROCESSES} (one per core)"
            )
        for name in (
            "grpc_grace_seconds",
            "grpc_switch_interval_seconds",
            "config_refresh_seconds",
            "config_heartbeat_seconds",
            "writer_flush_seconds",
            "worker_tick_seconds",
            "durability_timeout_seconds",
            "loader_ack_wait_seconds",
            "mlflow_retry_max_seconds",
        ):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValidationError(f"ABKIT_{name.upper()}", "must be a positive number")
        if not (math.isfinite(self.commit_delay_seconds) and 0 <= self.commit_delay_seconds < 1):
            raise ValidationError(
                "ABKIT_COMMIT_DELAY_SECONDS", "must be a number of seconds in [0, 1)"
            )
        if self.stream_url and not all(
            u.strip().startswith(("nats://", "tls://")) for u in self.stream_url.split(",")
        ):
            raise ValidationError(
                "ABKIT_STREAM_URL",
                f"must be nats:// URLs separated by commas, got {self.stream_url!r}",
            )
        for name, pattern, what in (
            ("stream_name", _NAME, "letters, digits, '_' or '-'"),
            ("loader_durable", _NAME, "letters, digits, '_' or '-'"),
            ("stream_subject_prefix", _SUBJECT, "dot-separated tokens of letters, digits, _, -"),
        ):
            if not pattern.fullmatch(getattr(self, name)):
                raise ValidationError(
                    f"ABKIT_{name.upper()}", f"must be {what}, got {getattr(self, name)!r}"
                )
        if self.exposure_durability not in ("sync", "async"):
            raise ValidationError(
                "ABKIT_EXPOSURE_DURABILITY",
                f"must be sync or async, got {self.exposure_durability!r}",
            )
        if self.grpc_event_loop not in EVENT_LOOPS:
            raise ValidationError(
                "ABKIT_GRPC_EVENT_LOOP",
                f"must be auto, asyncio or uvloop, got {self.grpc_event_loop!r}",
            )
        if self.grpc_event_loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
            raise ValidationError(
                "ABKIT_GRPC_EVENT_LOOP",
                "is uvloop, which is not installed (pip install 'abkit[fast]')",
            )
        if not self.database_url:
            raise ValidationError("ABKIT_DATABASE_URL", "must not be empty")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValidationError(
                "ABKIT_TLS_CERT", "TLS needs both ABKIT_TLS_CERT and ABKIT_TLS_KEY (PEM files)"
            )
        if self.tls_client_ca and not self.tls_cert:
            raise ValidationError(
                "ABKIT_TLS_CLIENT_CA", "mutual TLS needs the server's own ABKIT_TLS_CERT and KEY"
            )
        if not 0 <= self.metrics_port <= 65535:
            raise ValidationError("ABKIT_METRICS_PORT", "must be a port number (0 disables)")
        check_alias_name("ABKIT_MLFLOW_CHAMPION_ALIAS", self.mlflow_champion_alias)
        check_alias_name("ABKIT_MLFLOW_PREVIOUS_ALIAS", self.mlflow_previous_alias)
        if self.mlflow_champion_alias == self.mlflow_previous_alias:
            raise ValidationError(
                "ABKIT_MLFLOW_PREVIOUS_ALIAS", "must differ from ABKIT_MLFLOW_CHAMPION_ALIAS"
            )


_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SUBJECT = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")


def _os_user(env: Mapping[str, str]) -> str:
    for name in ("LOGNAME", "USER", "USERNAME"):
        if env.get(name):
            return env[name]
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _parse(name: str, raw: str, kind: type) -> object:
    if kind is bool:
        value = raw.strip().lower()
        if value in _TRUE | _FALSE:
            return value in _TRUE
        raise ValidationError(name, f"expected true or false, got {raw!r}")
    try:
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
    except ValueError:
        expected = "a whole number" if kind is int else "a number"
        raise ValidationError(name, f"expected {expected}, got {raw!r}") from None
    return raw
