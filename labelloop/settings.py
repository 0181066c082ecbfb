"""Settings from one place: ``LABELLOOP_*`` environment variables over an optional TOML file.

The file is ``$LABELLOOP_CONFIG`` or ``./labelloop.toml``; nested tables are flattened
(``[predict] conf = 0.3`` is ``predict_conf``). Validation happens at start so a bad value is
reported once, by name, before any server starts.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from labelloop.errors import ConfigError


def default_cache_dir() -> Path:
    return Path(os.environ.get("LABELLOOP_CACHE", Path.home() / ".cache" / "labelloop"))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LABELLOOP_", extra="forbid", validate_default=True)

    # model and inference
    model: Path | None = Field(None, description="YOLO weights (.pt/.onnx); default: the cached demo model")
    runtime: Literal["auto", "torch", "onnx"] = "auto"
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

    # image fetching
    cache_dir: Path = Field(default_factory=default_cache_dir)
    image_cache_bytes: int = Field(2 * 1024**3, ge=0)
    fetch_workers: int = Field(8, ge=1, le=128)
    fetch_timeout: float = Field(30.0, gt=0)
    max_image_bytes: int = Field(64 * 1024**2, gt=0)
    max_image_pixels: int = Field(100_000_000, gt=0)
    allow_private_urls: bool = False
    local_roots: list[Path] = Field(default_factory=list, description="dirs local paths may be read from")

    # label studio
    label_studio_url: str | None = None
    label_studio_token: str | None = None

    # http app
    host: str = "0.0.0.0"
    port: int = Field(9090, ge=1, le=65535)
    http_workers: int = Field(1, ge=1)
    basic_auth_user: str | None = None
    basic_auth_pass: str | None = None
    bearer_token: str | None = None
    predict_budget_s: float = Field(60.0, gt=0, description="answer /predict within this; rest in background")

    # queue
    redis_url: str = "redis://127.0.0.1:6379/0"
    queue_prefix: str = "labelloop"

    @field_validator("label_studio_url")
    @classmethod
    def _strip_slash(cls, v: str | None) -> str | None:
        return v.rstrip("/") if v else v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _TomlSource(settings_cls))

    def fingerprint(self) -> str:
        """What changes predictions besides the weights (part of result-cache keys)."""
        return f"{self.imgsz}:{self.conf}:{self.iou}:{self.max_det}:{sorted(self.label_map.items())}"


class _TomlSource(PydanticBaseSettingsSource):
    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = Path(os.environ.get("LABELLOOP_CONFIG", "labelloop.toml"))
        if not path.is_file():
            if "LABELLOOP_CONFIG" in os.environ:
                raise ConfigError(f"LABELLOOP_CONFIG points at {path}, which does not exist")
            return {}
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML ({e})") from e
        flat: dict[str, Any] = {}
        for key, value in raw.items():
            if isinstance(value, dict) and key not in ("label_map",):
                flat.update({f"{key}_{k}": v for k, v in value.items()})
            else:
                flat[key] = value
        return flat


def load_settings(**overrides: Any) -> Settings:
    """Settings with ``overrides`` (e.g. CLI options) on top; a bad value raises one ConfigError."""
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'} "
            f"(LABELLOOP_{str(err['loc'][0]).upper() if err['loc'] else ''}): {err['msg']}"
            for err in e.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from None
