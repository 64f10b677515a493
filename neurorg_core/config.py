"""Project configuration: one frozen dataclass, overridable by environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from neurorg_core.errors import NeuroRGError

if TYPE_CHECKING:   # stats imports scipy: only when asked
    from neurorg_core.stats import HitRule

REPO_ROOT = Path(__file__).resolve().parent.parent


def _env_path(name: str, default: Path) -> Path:
    value = os.environ.get(name)
    return Path(value).expanduser() if value else default


def _env_paths(name: str) -> tuple[Path, ...]:
    """A list of folders in one variable, separated like ``PATH`` (``:`` on Linux)."""
    return tuple(Path(p).expanduser() for p in os.environ.get(name, "").split(os.pathsep) if p.strip())


def _env_hours(name: str, default: float) -> float:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        hours = float(value)
    except ValueError:
        hours = float("nan")
    if not 0 < hours < 24 * 366:  # also refuses nan
        raise NeuroRGError(f"{name}={value!r} is not a number of hours; expected e.g. 12 (more than 0, "
                           "under a year)")
    return hours


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return float(value)
    except ValueError:
        raise NeuroRGError(f"{name}={value!r} is not a number; expected e.g. {default:g}") from None


@dataclass(frozen=True)
class Config:
    """Where things live and the limits we enforce.

    Environment overrides: ``NEURORG_DATA_DIR``, ``NEURORG_MODEL_DIR``, ``NEURORG_DB``,
    ``NEURORG_LITERT_CACHE``, ``NEURORG_CROP_CACHE``, ``NEURORG_CROP_CACHE_GB``, ``NEURORG_MAX_PIXELS``,
    ``NEURORG_READOUT``, ``NEURORG_BACKEND``, ``NEURORG_HIT_RESCUE_PCT``, ``NEURORG_HIT_FDR``; read by the
    dashboard only: ``NEURORG_PREDICTOR_CACHE_MB``, ``NEURORG_IMAGE_CACHE_MB``, ``NEURORG_PASSWORD``,
    ``NEURORG_SERVER_ROOTS``, ``NEURORG_SESSION_HOURS``.
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
    crop_cache: Path | None = field(
        default_factory=lambda: (Path(os.environ["NEURORG_CROP_CACHE"]).expanduser()
                                 if os.environ.get("NEURORG_CROP_CACHE") else None)
    )
    """Where training's labelled crops are cached on disk (``cropcache``); None: ``crop_cache_dir``."""
    crop_cache_gb: float = field(default_factory=lambda: _env_float("NEURORG_CROP_CACHE_GB", 100.0))
    """Disk the crop cache may hold (GiB); the least recently used plates are removed past it."""
    backend: str = field(default_factory=lambda: os.environ.get("NEURORG_BACKEND", "auto").strip() or "auto")
    """Inference backend unless the user chooses another: auto (Keras on a GPU, else LiteRT),
    litert or keras (``devices.BACKENDS``)."""
    max_pixels: int = field(
        default_factory=lambda: int(os.environ.get("NEURORG_MAX_PIXELS", str(16384 * 16384)))
    )
    """Most pixel values one file may decode to (pages x samples x height x width), checked from
    the header before decoding: a guard against decompression bombs."""
    readout: str = field(default_factory=lambda: os.environ.get("NEURORG_READOUT", "inflammation_score"))
    """The readout a plate is scored with unless the user chooses another (``schema.READOUTS``)."""
    hit_rescue_pct: float = field(default_factory=lambda: _env_float("NEURORG_HIT_RESCUE_PCT", 50.0))
    """A hit's smallest rescue % of its mean (``stats.HitRule``)."""
    hit_fdr: float = field(default_factory=lambda: _env_float("NEURORG_HIT_FDR", 0.05))
    """A hit's largest Benjamini-Hochberg q of Welch's test (``stats.HitRule``)."""
    predictor_cache_mb: float = field(default_factory=lambda: _env_float("NEURORG_PREDICTOR_CACHE_MB", 512.0))
    """Model weights the app keeps loaded between plates (``inference.PredictorCache``), MiB."""
    image_cache_mb: float = field(default_factory=lambda: _env_float("NEURORG_IMAGE_CACHE_MB", 256.0))
    """Field thumbnails the app keeps for the heatmap page (``dashboard.resources``), MiB."""
    password: str = field(default_factory=lambda: os.environ.get("NEURORG_PASSWORD", ""), repr=False)
    """The dashboard's password ("" = none: the app then answers on this computer only)."""
    server_roots: tuple[Path, ...] = field(default_factory=lambda: _env_paths("NEURORG_SERVER_ROOTS"))
    """Folders the dashboard's "Path on the server" may read (with everything below them);
    ``NEURORG_SERVER_ROOTS`` lists them separated by ``:``. Default: the data folder."""
    session_hours: float = field(default_factory=lambda: _env_hours("NEURORG_SESSION_HOURS", 12.0))
    """How long a dashboard login lasts (hours), across reloads and pasted links."""

    def __post_init__(self) -> None:
        from neurorg_core.devices import BACKENDS
        from neurorg_core.schema import READOUTS

        if self.readout not in READOUTS:
            raise NeuroRGError(f"readout {self.readout!r} (NEURORG_READOUT) is not one of {', '.join(READOUTS)}")
        if self.backend not in BACKENDS:
            raise NeuroRGError(f"backend {self.backend!r} (NEURORG_BACKEND) is not one of {', '.join(BACKENDS)}")
        if not self.server_roots:
            object.__setattr__(self, "server_roots", (self.data_dir,))

    @property
    def hit_rule(self) -> HitRule:
        """``stats.HitRule`` from ``hit_rescue_pct`` and ``hit_fdr`` (checked there)."""
        from neurorg_core.stats import HitRule  # statistics imports scipy: only when asked

        return HitRule(self.hit_rescue_pct, self.hit_fdr)

    @property
    def upload_dir(self) -> Path:
        return self.data_dir / "uploads"

    @property
    def demo_dir(self) -> Path:
        return self.data_dir / "demo"

    @property
    def session_secret_path(self) -> Path:
        """The dashboard's random key for signing login cookies (made on first use, mode 0600)."""
        return self.data_dir / "session_secret"

    @property
    def litert_cache_dir(self) -> Path:
        """``NEURORG_LITERT_CACHE``, else ``<data dir>/cache/litert`` (``inference`` falls back to
        the user's cache folder when this one cannot be written)."""
        return self.litert_cache if self.litert_cache is not None else self.data_dir / "cache" / "litert"

    @property
    def crop_cache_dir(self) -> Path:
        """``NEURORG_CROP_CACHE``, else ``<data dir>/cache/crops``."""
        return self.crop_cache if self.crop_cache is not None else self.data_dir / "cache" / "crops"


def load_config() -> Config:
    """Read the configuration from the environment (call once, pass it on explicitly)."""
    return Config()
