"""What a `diffpir serve` application is made of: one plain, JSON-able settings object.

The command line fills it; the Ray Serve application is built from it (`app.build_app`),
locally by `diffpir serve` or on a cluster from the config `diffpir serve --print-config`
writes (its `args` are these settings). Nothing here imports Ray.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from diffpir_rt.errors import DiffPIRError

from .forms import Limits

APP_NAME = "diffpir"
#: Ray's internal key-value store: set while `diffpir serve` drains, so the ingress answers new work 503.
DRAIN_KEY = b"diffpir-serve:draining"
#: ... and each ingress replica then reports its in-flight requests under this prefix.
IN_FLIGHT_PREFIX = b"diffpir-serve:in-flight:"
DRAIN_NAMESPACE = "diffpir"
TOKEN_ENV = "DIFFPIR_SERVE_TOKEN"
#: Metrics names (Prometheus; Ray prefixes user metrics with "ray_").
METRIC_PREFIX = "diffpir_"


@dataclass
class ServeSettings:
    """Everything a server needs, as plain values.

    Model and runtime: `runtime.RuntimeOptions.to_dict()` (the model source with its path made
    absolute, backend, device, dtype, threads, ...), so a replica makes its Restorer exactly as
    `diffpir restore` does (`Restorer.from_options`). Limits: per request. Batching: the
    `@serve.batch` size and wait, and padding to captured CUDA-graph batch sizes. Scale:
    replicas (or autoscaling between min and max on queue length), resources per replica.
    """

    # model and runtime: runtime.RuntimeOptions as a dict
    model: dict[str, Any] = field(default_factory=dict)
    # limits
    max_pixels: int = Limits.max_pixels
    max_body_bytes: int = Limits.max_body_bytes
    max_steps: int = Limits.max_steps
    max_queued: int = 64
    request_timeout_s: float = 300.0
    read_timeout_s: float = 30.0  # the whole body must arrive within this (slow or stalled clients: 408)
    # batching
    max_batch_size: int = 8
    batch_wait_ms: float = 10.0
    pad_batches: str = "auto"  # auto (CUDA only), on, off
    # scale
    replicas: int = 1
    autoscale_min: Optional[int] = None
    autoscale_max: Optional[int] = None
    target_queue: float = 8.0
    gpus_per_replica: float = 0.0
    cpus_per_replica: float = 1.0
    ingress_replicas: int = 1
    # http and lifecycle
    host: str = "127.0.0.1"
    port: int = 8000
    token_sha256: Optional[str] = None
    drain_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.pad_batches not in ("auto", "on", "off"):
            raise DiffPIRError(f"--pad-batches {self.pad_batches!r}: expected auto, on or off")
        if (self.autoscale_min is None) != (self.autoscale_max is None):
            raise DiffPIRError("--autoscale: give MIN:MAX")
        if self.autoscale_min is not None and not 0 <= self.autoscale_min <= self.autoscale_max:
            raise DiffPIRError(f"--autoscale {self.autoscale_min}:{self.autoscale_max}: expected 0 <= MIN <= MAX, MAX >= 1")
        if self.autoscale_max is not None and self.autoscale_max < 1:
            raise DiffPIRError("--autoscale: MAX must be at least 1")
        if self.read_timeout_s <= 0 or self.request_timeout_s <= 0:
            raise DiffPIRError("--read-timeout / --request-timeout: must be positive")
        if self.max_queued < self.max_batch_size:
            raise DiffPIRError(f"--max-queued {self.max_queued}: must be at least --max-batch-size ({self.max_batch_size})")

    @property
    def limits(self) -> Limits:
        return Limits(max_pixels=self.max_pixels, max_body_bytes=self.max_body_bytes, max_steps=self.max_steps)

    @property
    def batch_wait_s(self) -> float:
        return self.batch_wait_ms / 1000.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def digest(self) -> str:
        """The configuration's name: 12 hex digits of the SHA-256 of these settings (records, /healthz, /v1/info).

        Two deployments with equal settings have equal digests; a rolling update to changed
        settings (other weights, defaults, limits) changes it.
        """
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]

    @classmethod
    def from_dict(cls, data: Optional[dict[str, Any]]) -> "ServeSettings":
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DiffPIRError(f"serve settings: unknown key {unknown[0]!r}; expected some of {', '.join(sorted(known))}")
        return cls(**data)

    def public(self) -> dict[str, Any]:
        """What /v1/info shows: the settings without the token's hash, model files by name only."""
        out = self.to_dict()
        out.pop("token_sha256")
        out["auth"] = self.token_sha256 is not None
        model = dict(self.model)
        if isinstance(model.get("model"), dict) and model["model"].get("path"):
            model["model"] = {**model["model"], "path": Path(model["model"]["path"]).name}
        out["model"] = model
        return out

    def runtime_options(self, device: Optional[str] = None) -> Any:
        """The replica's RuntimeOptions (its device overridden where Ray gave it a GPU)."""
        from diffpir_rt.runtime import RuntimeOptions

        data = dict(self.model)
        if device is not None:
            data["device"] = device
        return RuntimeOptions.from_dict(data)


def options_dict(options: Any) -> dict[str, Any]:
    """RuntimeOptions as settings: plain values, the model file's path absolute (replicas may run elsewhere)."""
    data = options.to_dict()
    if data["model"].get("path"):
        data["model"]["path"] = str(Path(data["model"]["path"]).resolve())
    return data


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def read_token(token_file: Optional[Path]) -> Optional[str]:
    """The bearer token: --token-file's first line, else $DIFFPIR_SERVE_TOKEN, else None (no auth)."""
    if token_file is not None:
        from diffpir_rt.engine import paths

        path = paths.check_input_file(token_file, "--token-file")
        try:
            lines = path.read_text(encoding="utf-8").strip().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise DiffPIRError(f"--token-file {path}: cannot be read ({e})") from None
        token = lines[0].strip() if lines else ""
        if len(token) < 16:
            raise DiffPIRError(f"--token-file {path}: the token is {len(token)} characters; use at least 16")
        return token
    token = os.environ.get(TOKEN_ENV, "").strip()
    if token and len(token) < 16:
        raise DiffPIRError(f"${TOKEN_ENV}: the token is {len(token)} characters; use at least 16")
    return token or None


def serve_config(settings: ServeSettings) -> dict[str, Any]:
    """A Ray Serve config (`serve deploy serve.yaml`) for this application on a cluster.

    The application is built by `diffpir_rt.service.app:build_app` from `args` (these
    settings); the deployments' entries repeat the scaling options so they can be edited in
    the file (Serve applies the file's values over the code's).
    """
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": settings.host, "port": settings.port,
                         "request_timeout_s": settings.request_timeout_s + 30},  # fmt: skip
        "applications": [
            {
                "name": APP_NAME,
                "route_prefix": "/",
                "import_path": "diffpir_rt.service.app:build_app",
                "logging_config": {"enable_access_log": False, "log_level": "INFO"},
                "args": settings.to_dict(),
                "deployments": [
                    {"name": "DiffPIRIngress", **ingress_options(settings)},
                    {"name": "DiffPIRRestorer", **restorer_options(settings)},
                ],
            }
        ],
    }


def restorer_options(settings: ServeSettings) -> dict[str, Any]:
    """Serve deployment options of the restorer replicas (the model, the batching)."""
    options: dict[str, Any] = {
        # Requests reach the replica, whose own queue limit answers 429 with a JSON body; and up to
        # 16 (app.MERGE_WINDOW) Serve batches can wait there to be merged into full ones.
        "max_ongoing_requests": max(settings.max_queued + settings.max_batch_size, 16 * settings.max_batch_size),
        "max_queued_requests": settings.max_queued,
        "graceful_shutdown_timeout_s": settings.drain_timeout_s,
        "graceful_shutdown_wait_loop_s": 0.5,
        "ray_actor_options": {"num_cpus": settings.cpus_per_replica, "num_gpus": settings.gpus_per_replica},
    }
    if settings.autoscale_max is not None:
        options["autoscaling_config"] = {
            "min_replicas": settings.autoscale_min,
            "initial_replicas": max(1, settings.autoscale_min or 0),
            "max_replicas": settings.autoscale_max,
            "target_ongoing_requests": settings.target_queue,
            "upscale_delay_s": 5.0,
            "downscale_delay_s": 120.0,
        }
    else:
        options["num_replicas"] = settings.replicas
    return options


def ingress_options(settings: ServeSettings) -> dict[str, Any]:
    """Serve deployment options of the HTTP ingress (parsing, limits, auth; no model)."""
    most_replicas = settings.autoscale_max if settings.autoscale_max is not None else settings.replicas
    return {
        "num_replicas": settings.ingress_replicas,
        "max_ongoing_requests": 2 * (settings.max_queued + settings.max_batch_size) * max(1, most_replicas),
        "graceful_shutdown_timeout_s": settings.drain_timeout_s,
        "graceful_shutdown_wait_loop_s": 0.5,
        "ray_actor_options": {"num_cpus": 0},
    }
