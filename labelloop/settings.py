"""Settings from one place: ``LABELLOOP_*`` (and ``CVAT_*``) environment variables over an optional
``labelloop.toml``, grouped in sections by concern.

Every field lives in a section (``settings.predict.conf``, ``settings.store.url``); its
environment variable is flat and named once in ``Section.env_prefix`` (``LABELLOOP_CONF``,
``LABELLOOP_STORE_URL``, ``CVAT_URL``) and its TOML key is the section table
(``[predict] conf = 0.3``). This module is the only reader of those variables: nothing else
reads or writes ``os.environ`` for settings. Validation happens at start, so a bad value is
reported once, naming the variable and the TOML key, before any server starts.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from labelloop.errors import ConfigError


def default_cache_dir() -> Path:
    return Path(os.environ.get("LABELLOOP_CACHE", Path.home() / ".cache" / "labelloop"))


class Section(BaseModel):
    """A group of settings; ``env_prefix`` + FIELD (upper case) is each field's variable."""

    model_config = ConfigDict(extra="forbid", validate_default=True)
    env_prefix: ClassVar[str] = "LABELLOOP_"
    env_names: ClassVar[dict[str, str]] = {}  # field -> variable, where it differs from the rule

    @classmethod
    def env_name(cls, field: str) -> str:
        return cls.env_names.get(field, f"{cls.env_prefix}{field.upper()}")


class PredictSettings(Section):
    model: Path | None = Field(
        None, description="YOLO weights (.pt/.onnx/OpenVINO IR dir); default: the cached demo model"
    )
    runtime: Literal["auto", "torch", "onnx", "openvino", "lean"] = "auto"
    precision: Literal["auto", "int8", "bf16", "fp32"] = Field(
        "auto",
        description="exported artifact precision runtime auto serves on CPU: the fastest that passed "
        "validation at this precision or the next one up (int8, bf16, fp32); auto = int8 first",
    )
    device: str = Field("auto", description="'auto' (GPU when present), 'cpu', '0', 'cuda:1', ...")
    imgsz: int | None = Field(None, ge=32, le=4096, description="default: the size the model was trained at")
    conf: float = Field(0.25, ge=0.0, le=1.0)
    iou: float = Field(0.7, ge=0.0, le=1.0)
    max_det: int = Field(300, ge=1)
    batch: int = Field(0, ge=0, description="images per forward; 0 = 1 on CPU, 16 on GPU")
    streams: int = Field(
        0, ge=0, le=64, description="parallel ONNX sessions on CPU; 0 = one per core (max 4)"
    )
    label_map: dict[str, str] = Field(default_factory=dict, description="model class -> platform label")
    budget_s: float = Field(60.0, gt=0, description="answer /predict within this; the rest in background")
    memo_entries: int = Field(
        100_000, ge=0, description="results remembered in Redis by image sha256 + model + settings; 0 = off"
    )
    memo_ttl_s: float = Field(7 * 24 * 3600.0, gt=0, description="seconds a remembered result is kept")
    env_names: ClassVar[dict[str, str]] = {"budget_s": "LABELLOOP_PREDICT_BUDGET_S"}

    def fingerprint(self) -> str:
        """What changes predictions besides the weights (part of result-cache keys)."""
        return f"{self.imgsz}:{self.conf}:{self.iou}:{self.max_det}:{sorted(self.label_map.items())}"


class FetchSettings(Section):
    image_cache_bytes: int = Field(2 * 1024**3, ge=0)
    workers: int = Field(8, ge=1, le=128)
    timeout: float = Field(30.0, gt=0, description="socket timeout: connect, and each read")
    deadline_s: float = Field(
        60.0, gt=0, description="one image's whole download, redirects included (slow-drip servers)"
    )
    max_image_bytes: int = Field(64 * 1024**2, gt=0)
    max_image_pixels: int = Field(100_000_000, gt=0)
    allow_private_urls: bool = False
    local_roots: list[Path] = Field(default_factory=list, description="dirs local paths may be read from")
    env_names: ClassVar[dict[str, str]] = {
        "workers": "LABELLOOP_FETCH_WORKERS",
        "timeout": "LABELLOOP_FETCH_TIMEOUT",
        "deadline_s": "LABELLOOP_FETCH_DEADLINE_S",
    }


class ServeSettings(Section):
    host: str = "0.0.0.0"
    port: int = Field(9090, ge=1, le=65535)
    http_workers: int = Field(1, ge=1)
    basic_auth_user: str | None = None
    basic_auth_pass: str | None = None
    bearer_token: str | None = None
    trusted_label_studio_urls: list[str] = Field(
        default_factory=list,
        description="Label Studio URLs a /setup hostname may name besides LABELLOOP_LABEL_STUDIO_URL "
        "(others are under the private-address rules)",
    )
    metrics_open: bool = Field(False, description="serve /metrics without auth (a scraper on the network)")
    follow_line: bool | None = Field(
        None,
        description="serve the model line's champion and hot-reload it when promoted; default: "
        "follow when no --model was given",
    )
    reload_poll_s: float = Field(
        2.0, gt=0, description="seconds between champion alias reads (the fallback to Redis pub/sub)"
    )
    env_names: ClassVar[dict[str, str]] = {
        "follow_line": "LABELLOOP_SERVE_FOLLOW_LINE",
        "reload_poll_s": "LABELLOOP_SERVE_RELOAD_POLL_S",
    }


ServerUrl = Annotated[str | None, AfterValidator(lambda v: v.rstrip("/") if v else v)]
"""A server's base URL, kept without a trailing slash so paths join one way."""


class LabelStudioSettings(Section):
    env_prefix: ClassVar[str] = "LABELLOOP_LABEL_STUDIO_"
    url: ServerUrl = None
    token: str | None = None
    server_venv: Path | None = Field(None, description="venv with label-studio (tests, demo)")
    env_names: ClassVar[dict[str, str]] = {"server_venv": "LABELLOOP_LS_VENV"}


class CvatSettings(Section):
    env_prefix: ClassVar[str] = "CVAT_"
    url: ServerUrl = None
    user: str | None = None
    password: str | None = None
    access_token: str | None = None
    org: str | None = None


class QueueSettings(Section):
    redis_url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "labelloop"
    env_names: ClassVar[dict[str, str]] = {"prefix": "LABELLOOP_QUEUE_PREFIX"}


class StoreSettings(Section):
    env_prefix: ClassVar[str] = "LABELLOOP_STORE_"
    url: str | None = Field(None, description="SQLAlchemy URL; default: SQLite file in the data dir")
    blob_root: str | None = Field(None, description="fsspec URL or dir for image bytes; default: data dir")
    env_names: ClassVar[dict[str, str]] = {"blob_root": "LABELLOOP_BLOB_ROOT"}


class SyncSource(BaseModel):
    model_config = ConfigDict(extra="forbid")
    platform: Literal["labelstudio", "cvat"]
    url: str | None = None
    project: int | None = None
    task: int | None = None

    @model_validator(mode="after")
    def _target(self) -> SyncSource:
        if (self.project is None) == (self.task is None):
            raise ValueError("a sync source names exactly one of project (Label Studio) or task (CVAT)")
        return self


class SyncSettings(Section):
    env_prefix: ClassVar[str] = "LABELLOOP_SYNC_"
    sources: list[SyncSource] = Field(default_factory=list)
    interval_s: float = Field(30.0, gt=0, description="seconds between polls (webhooks wake it early)")
    snapshot_min_changes: int = Field(50, ge=1, description="changed items that make a new version")
    agreement_threshold: float = Field(0.7, ge=0, le=1, description="below this, annotators disagree")
    reconcile_interval_s: float = Field(
        300.0, ge=0, description="seconds between passes that list every task id to find deletions"
    )
    fetch_images: bool = Field(
        True, description="store the image bytes of synced items (training and export need them)"
    )
    agreement_field: str = Field(
        "annotator_agreement", description="Label Studio task field the annotators' F1 is written to"
    )


class TriggerSettings(Section):
    env_prefix: ClassVar[str] = "LABELLOOP_TRIGGER_"
    min_new_labels: int = Field(100, ge=1, description="new human-verified images that start a retrain")
    max_age_h: float | None = Field(None, gt=0, description="retrain anyway when labels are this old")


class TrainSettings(Section):
    env_prefix: ClassVar[str] = "LABELLOOP_TRAIN_"
    epochs: int = Field(10, ge=1)
    imgsz: int = Field(320, ge=32)
    batch: int = Field(8, ge=1)
    seed: int = 0
    base_weights: Path | None = Field(None, description="fine-tune from these when the line has no champion")
    model_line: str = Field("labelloop", description="the registered model (MLflow) this training feeds")
    device: str = Field("auto", description="'auto' (GPU when present), 'cpu', '0', ...")


class GateSettings(Section):
    env_prefix: ClassVar[str] = "LABELLOOP_GATE_"
    min_delta: float = 0.0
    max_class_drop: float = Field(0.05, ge=0)
    max_latency_ms: float | None = None
    floor_map50_95: float = Field(0.05, ge=0, le=1)
    max_quant_drop: float = Field(
        0.01, ge=0, le=1, description="largest mAP50-95 drop below fp32 an int8/bf16 artifact may show"
    )


class RegistrySettings(Section):
    mlflow_tracking_uri: str | None = Field(
        None, description="MLflow tracking/registry URI; default: sqlite:///<data dir>/mlflow/mlflow.db"
    )


class SelectSettings(Section):
    env_prefix: ClassVar[str] = "LABELLOOP_SELECT_"
    strategy: str = "hybrid"
    weight_uncertainty: float = 0.6
    weight_novelty: float = 0.2
    weight_diversity: float = 0.2


class PseudoSettings(Section):
    """Pseudo-labels (the seeds' dual thresholds and loss weight): a box is kept when its class
    confidence >= t_cls and its TTA stability >= t_loc; a pseudo image counts w_pseudo of a human one."""

    env_prefix: ClassVar[str] = "LABELLOOP_PSEUDO_"
    t_cls: float = Field(0.9, ge=0, le=1, description="minimum class confidence of a kept box")
    t_loc: float = Field(0.8, ge=0, le=1, description="minimum TTA box stability (IoU) of a kept box")
    w_pseudo: float = Field(0.3, gt=0, le=1, description="training weight of a pseudo image vs a human one")
    after_promotion: bool = Field(
        False, description="after a retrain promotes a champion, pseudo-label the store's unlabeled images"
    )
    env_names: ClassVar[dict[str, str]] = {"w_pseudo": "LABELLOOP_PSEUDO_WEIGHT"}


class Settings(BaseModel):
    """All settings. Flat names from before the sections (``Settings(conf=0.3)``) still work: they
    are routed to the one section that has the field."""

    model_config = ConfigDict(extra="forbid", validate_default=True)
    cache_dir: Path = Field(default_factory=default_cache_dir)
    predict: PredictSettings = Field(default_factory=PredictSettings)
    fetch: FetchSettings = Field(default_factory=FetchSettings)
    serve: ServeSettings = Field(default_factory=ServeSettings)
    labelstudio: LabelStudioSettings = Field(default_factory=LabelStudioSettings)
    cvat: CvatSettings = Field(default_factory=CvatSettings)
    queue: QueueSettings = Field(default_factory=QueueSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    sync: SyncSettings = Field(default_factory=SyncSettings)
    trigger: TriggerSettings = Field(default_factory=TriggerSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    gate: GateSettings = Field(default_factory=GateSettings)
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    select: SelectSettings = Field(default_factory=SelectSettings)
    pseudo: PseudoSettings = Field(default_factory=PseudoSettings)

    @model_validator(mode="before")
    @classmethod
    def _route_flat(cls, data: Any) -> Any:
        return _nest(data) if isinstance(data, dict) else data

    def with_(self, **changes: Any) -> Settings:
        """A validated copy with ``changes`` (flat names or sections) applied."""
        return Settings(**_merge(self.model_dump(), _nest(changes)))

    @property
    def data_dir(self) -> Path:
        """Where the store, blobs and MLflow live when no URL says otherwise."""
        return self.cache_dir / "data"

    def environment(self) -> dict[str, str]:
        """These settings as the environment variables a child process reads them from."""
        env = {"LABELLOOP_CACHE_DIR": str(self.cache_dir)}
        for name, section_cls in SECTIONS.items():
            section = getattr(self, name)
            for field in section_cls.model_fields:
                value = getattr(section, field)
                if value is None:
                    continue
                if isinstance(value, BaseModel | list | dict):
                    value = json.dumps(_plain(value))
                env[section_cls.env_name(field)] = str(value)
        return env


SECRETS: frozenset[tuple[str, str]] = frozenset(
    {
        ("serve", "basic_auth_pass"),
        ("serve", "bearer_token"),
        ("labelstudio", "token"),
        ("cvat", "password"),
        ("cvat", "access_token"),
    }
)
"""Fields that never leave this process in a job payload (each worker reads its own)."""
_URLS = (("store", "url"), ("queue", "redis_url"), ("registry", "mlflow_tracking_uri"))


REDACTED = "***"


def _redact_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    netloc, slash, path = rest.partition("/")
    if not sep or "@" not in netloc:
        return url
    userinfo, host = netloc.rsplit("@", 1)
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:{REDACTED}@{host}{slash}{path}"


def public_dump(settings: Settings) -> dict[str, Any]:
    """``settings`` as JSON for a job's arguments, without secrets: SECRETS left out (None) and the
    password of any URL masked; :func:`with_local_secrets` fills them back in on the worker."""
    out = settings.model_dump(mode="json")
    for section, field in SECRETS:
        out[section][field] = None
    for section, field in _URLS:
        if out[section][field]:
            out[section][field] = _redact_url(out[section][field])
    return out


def with_local_secrets(public: Settings, local: Settings) -> Settings:
    """``public`` (from a job payload) with what it left out taken from ``local`` (the worker's own
    settings): the secrets, and the URLs whose password was masked."""
    changes: dict[str, dict[str, Any]] = {}
    for section, field in SECRETS:
        value = getattr(getattr(local, section), field)
        if getattr(getattr(public, section), field) is None and value is not None:
            changes.setdefault(section, {})[field] = value
    for section, field in _URLS:
        if f":{REDACTED}@" in (getattr(getattr(public, section), field) or ""):
            changes.setdefault(section, {})[field] = getattr(getattr(local, section), field)
    return public.with_(**changes) if changes else public


SECTIONS: dict[str, type[Section]] = {
    name: f.annotation  # type: ignore[misc]
    for name, f in Settings.model_fields.items()
    if isinstance(f.annotation, type) and issubclass(f.annotation, Section)
}
# flat field name (as before sections) -> (section, field)
_FLAT: dict[str, tuple[str, str]] = {}
for _section, _cls in SECTIONS.items():
    for _field in _cls.model_fields:
        flat = _cls.env_name(_field).removeprefix("LABELLOOP_").removeprefix("CVAT_").lower()
        _FLAT.setdefault(flat, (_section, _field))
        _FLAT.setdefault(f"{_section}_{_field}", (_section, _field))
_FLAT.update({"cvat_url": ("cvat", "url"), "cvat_access_token": ("cvat", "access_token")})


ENV_NAMES: frozenset[str] = frozenset(
    {"LABELLOOP_CACHE_DIR", "LABELLOOP_CACHE", "LABELLOOP_CONFIG"}
    | {cls.env_name(f) for cls in SECTIONS.values() for f in cls.model_fields}
)
"""Every environment variable labelloop reads (docker files and docs are checked against it)."""


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_none=True)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _nest(data: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key in Settings.model_fields:
            if key in SECTIONS and isinstance(value, dict):
                out.setdefault(key, {}).update(value)
            else:
                out[key] = value
        elif key in _FLAT:
            section, field = _FLAT[key]
            target = out.setdefault(section, {})
            if isinstance(target, dict):
                target[field] = value
        else:
            out[key] = value  # refused by extra="forbid", with its name
    return out


def _env_value(raw: str, annotation: Any) -> Any:
    """Lists and maps come as JSON; a list may also be comma-separated."""
    text = str(annotation)
    if raw.strip().startswith(("[", "{")):
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw  # pydantic reports it, by name
    if text.startswith("list"):
        return [p for p in raw.split(",") if p]
    return raw


def _from_env() -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "LABELLOOP_CACHE_DIR" in os.environ:
        out["cache_dir"] = os.environ["LABELLOOP_CACHE_DIR"]
    for name, section_cls in SECTIONS.items():
        for field, info in section_cls.model_fields.items():
            raw = os.environ.get(section_cls.env_name(field))
            if raw is not None and raw != "":
                out.setdefault(name, {})[field] = _env_value(raw, info.annotation)
    return out


def _from_toml() -> dict[str, Any]:
    path = Path(os.environ.get("LABELLOOP_CONFIG", "labelloop.toml"))
    if not path.is_file():
        if "LABELLOOP_CONFIG" in os.environ:
            raise ConfigError(f"LABELLOOP_CONFIG points at {path}, which does not exist")
        return {}
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from e
    return _nest(raw)


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key in SECTIONS:
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def _where(loc: tuple[Any, ...]) -> str:
    if len(loc) >= 2 and loc[0] in SECTIONS:
        section, field = str(loc[0]), str(loc[1])
        cls = SECTIONS[section]
        if field in cls.model_fields:
            return f"{section}.{field} ({cls.env_name(field)}, [{section}] {field} in labelloop.toml)"
        return f"{section}.{field} (not a setting of [{section}]; known: {', '.join(cls.model_fields)})"
    name = ".".join(str(p) for p in loc) or "settings"
    return f"{name} (LABELLOOP_{name.upper()})" if loc else name


def load_settings(**overrides: Any) -> Settings:
    """Settings from TOML, then the environment, then ``overrides`` (e.g. CLI options, flat or
    by section); a bad value raises one ConfigError naming the variable."""
    given = _nest({k: v for k, v in overrides.items() if v is not None})
    try:
        return Settings(**_merge(_merge(_from_toml(), _from_env()), given))
    except ValidationError as e:
        problems = "; ".join(f"{_where(tuple(err['loc']))}: {err['msg']}" for err in e.errors())
        raise ConfigError(f"invalid settings: {problems}") from None
