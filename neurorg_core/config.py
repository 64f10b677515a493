"""Project configuration: one frozen dataclass, overridable by environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def _env_path(name: str, default: Path) -> Path:
    value = os.environ.get(name)
    return Path(value).expanduser() if value else default


@dataclass(frozen=True)
class Config:
    """Where things live and the limits we enforce.

    Environment overrides: ``NEURORG_DATA_DIR``, ``NEURORG_MODEL_DIR``, ``NEURORG_DB``,
    ``NEURORG_LITERT_CACHE``, ``NEURORG_MAX_PIXELS``, ``NEURORG_PASSWORD`` (read by the dashboard only).
    """

    data_dir: Path = field(default_factory=lambda: _env_path("NEURORG_DATA_DIR", REPO_ROOT / "data"))
    model_dir: Path = field(
        default_factory=lambda: _env_path("NEURORG_MODEL_DIR", REPO_ROOT / "data" / "models" / "demo")
    )
    db_path: Path = field(
        default_factory=lambda: _env_path("NEURORG_DB", REPO_ROOT / "data" / "neurorg.duckdb")
    )
    litert_cache: Path | None = field(
        default_factory=lambda: (Path(os.environ["NEURORG_LITERT_CACHE"]).expanduser()
                                 if os.environ.get("NEURORG_LITERT_CACHE") else None)
    )
    """Where members converted to LiteRT at scoring time are cached; None: ``litert_cache_dir``."""
    max_pixels: int = field(
        default_factory=lambda: int(os.environ.get("NEURORG_MAX_PIXELS", str(16384 * 16384)))
    )
    """Largest image (height x width) we agree to decode: a guard against decompression bombs."""

    @property
    def upload_dir(self) -> Path:
        return self.data_dir / "uploads"

    @property
    def demo_dir(self) -> Path:
        return self.data_dir / "demo"

    @property
    def litert_cache_dir(self) -> Path:
        """``NEURORG_LITERT_CACHE``, else ``<data dir>/cache/litert`` (``inference`` falls back to
        the user's cache folder when this one cannot be written)."""
        return self.litert_cache if self.litert_cache is not None else self.data_dir / "cache" / "litert"


def load_config() -> Config:
    """Read the configuration from the environment (call once, pass it on explicitly)."""
    return Config()
