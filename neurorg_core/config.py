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
    ``NEURORG_MAX_PIXELS``, ``NEURORG_PASSWORD`` (read by the dashboard only).
    """

    data_dir: Path = field(default_factory=lambda: _env_path("NEURORG_DATA_DIR", REPO_ROOT / "data"))
    model_dir: Path = field(
        default_factory=lambda: _env_path("NEURORG_MODEL_DIR", REPO_ROOT / "data" / "models" / "demo")
    )
    db_path: Path = field(
        default_factory=lambda: _env_path("NEURORG_DB", REPO_ROOT / "data" / "neurorg.duckdb")
    )
    max_pixels: int = field(
        default_factory=lambda: int(os.environ.get("NEURORG_MAX_PIXELS", str(16384 * 16384)))
    )
    """Most pixel values one file may decode to (pages x samples x height x width), checked from
    the header before decoding: a guard against decompression bombs."""

    @property
    def upload_dir(self) -> Path:
        return self.data_dir / "uploads"

    @property
    def demo_dir(self) -> Path:
        return self.data_dir / "demo"


def load_config() -> Config:
    """Read the configuration from the environment (call once, pass it on explicitly)."""
    return Config()
