"""From a field's pixels to the model's crops: intensity scaling, tiling, resizing.

Size (~630 lines): crop geometry, intensity detection and tiling are one contract with the model
card (training and scoring must cut crops identically), so they stay in one module.

Pure numpy, with Pillow's C resampler for non-integer resizing. It runs for every field of every
plate, so it works on whole arrays and never loops over pixels.

**The crop scale belongs to the model** (docs/ARCHITECTURE.md). A model card's ``crop_geometry``
says what one crop held when the model was trained: a square tile of ``crop_edge_px`` source
pixels at ``pixel_size_um`` µm per pixel (``mode="tiles"``), or a whole field
(``mode="whole_field"``, the study's own models). Scoring cuts crops of that same physical size
from every plate, whatever its field size and number of fields per well:

* the tile edge on a plate is the model's edge, rescaled by the ratio of pixel sizes when both are
  known (``CropGeometry.edge_on``); resizing each tile to the model's input then *is* resampling the
  field to the model's scale (area averaging, exact for integer factors);
* each field is tiled at that edge, tiles centred in the field; a well's crops are chosen evenly
  from all of its tiles (``plan_crops``). When a well has fewer whole tiles than crops asked, the
  tiles overlap (a stride under the edge), so the well still gets its crops.

**Intensity.** Native pixels become [0, 1] by dividing by the plate's full scale: 255 for 8-bit
images; for 16-bit images, the *significant* bit depth the data occupies (8, 12, 14 or 16 bits,
``detect_intensity``), so 12-bit camera data stored in 16-bit files scores the same as when it is
scaled to the full 16 bits. 16-bit data equal to 257 x 8-bit data scales exactly as the 8-bit data.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
from PIL import Image

from neurorg_core.errors import NeuroRGError
from neurorg_core.schema import CHANNELS, CROPS_PER_WELL

log = logging.getLogger(__name__)

GeometryMode = Literal["tiles", "whole_field"]
GEOMETRY_MODES: tuple[str, ...] = ("tiles", "whole_field")

SIGNIFICANT_BITS: tuple[int, ...] = (8, 12, 14, 16)
"""Bit depths a 16-bit image may really hold (8-bit data in a 16-bit file, 12- and 14-bit
cameras, true 16-bit)."""

INTENSITY_SAMPLE_FIELDS = 16
"""Fields (spread over the plate) whose maximum decides a 16-bit plate's significant bit depth."""

INTENSITY_METHOD = "significant_bits"
"""The intensity scaling every model card records and training and scoring both apply."""

_DTYPE_FULL_SCALE = {np.dtype(np.uint8): 255, np.dtype(np.uint16): 65535}


# --- intensity ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Intensity:
    """How a plate's native pixels become [0, 1]: divided by ``full_scale``.

    Attributes
    ----------
    bits : int
        Significant bit depth (8, 12, 14 or 16).
    source : str
        How it was decided, for the run's provenance (e.g. "8-bit images", "detected: max 4011
        over 16 fields", "given by the user").
    """

    bits: int
    source: str = ""

    @property
    def full_scale(self) -> int:
        """The largest value the data can hold, e.g. 4095 for 12 bits."""
        return (1 << self.bits) - 1

    def as_params(self) -> dict[str, Any]:
        """JSON-able form for the run's parameters."""
        return {"method": INTENSITY_METHOD, "bits": self.bits, "full_scale": self.full_scale,
                "source": self.source}


def check_bits(bits: int) -> int:
    """Return ``bits`` if it is a supported significant bit depth, else raise listing them."""
    if bits not in SIGNIFICANT_BITS:
        raise NeuroRGError(f"bit depth {bits!r} is not supported; expected one of "
                           f"{', '.join(map(str, SIGNIFICANT_BITS))}")
    return int(bits)


def bits_for_max(value: int) -> int:
    """The smallest supported bit depth whose full scale holds ``value``."""
    for b in SIGNIFICANT_BITS:
        if value <= (1 << b) - 1:
            return b
    raise NeuroRGError(f"pixel value {value} exceeds 16 bits; expected uint8 or uint16 images")


def detect_intensity(dtype: np.dtype | type, fields: Iterable[np.ndarray], *,
                     bits: int | None = None) -> Intensity:
    """Decide a plate's intensity scaling.

    Parameters
    ----------
    dtype
        The plate's pixel type (uint8 or uint16).
    fields
        A sample of the plate's fields (read only for 16-bit plates with ``bits`` None); see
        ``sample_field_indices``.
    bits
        The significant bit depth when the user knows it (e.g. a 12-bit camera); wins over
        detection.

    Returns
    -------
    Intensity
        8-bit images: 8 bits. 16-bit images: ``bits`` when given, else the smallest of 8, 12, 14,
        16 bits that holds the sample's maximum (a 12-bit camera never exceeds 4095; data scaled
        to the full 16-bit range, or 8-bit data times 257, reaches far above 16383).

    Raises
    ------
    NeuroRGError
        Another pixel type, an unsupported ``bits``, or an empty sample.
    """
    dt = np.dtype(dtype)
    if dt not in _DTYPE_FULL_SCALE:
        raise NeuroRGError(f"pixel type {dt} cannot be scaled; expected uint8 or uint16")
    if dt == np.uint8:
        if bits is not None and bits != 8:
            raise NeuroRGError(f"bit depth {bits} given for 8-bit images; expected 8")
        return Intensity(8, "8-bit images")
    if bits is not None:
        return Intensity(check_bits(bits), "given by the user")
    peak, n = 0, 0
    for f in fields:
        peak = max(peak, int(np.max(f)))
        n += 1
    if n == 0:
        raise NeuroRGError("no fields to decide the bit depth from; expected at least one")
    b = bits_for_max(peak)
    log.info("16-bit plate: %d significant bits (max %d over %d fields)", b, peak, n)
    return Intensity(b, f"detected: max {peak} over {n} field(s)")


def sample_field_indices(n_fields: int, k: int = INTENSITY_SAMPLE_FIELDS) -> list[int]:
    """``k`` field positions spread evenly over ``n_fields`` (all of them when fewer)."""
    if n_fields <= k:
        return list(range(n_fields))
    return sorted({int(i) for i in np.linspace(0, n_fields - 1, k).round()})


def scale_intensity(image: np.ndarray, intensity: Intensity | None = None) -> np.ndarray:
    """Native integer pixels -> float32 in [0, 1] (values above the full scale are clipped to 1).

    Without ``intensity``: uint8 / 255 and uint16 / 65535, so a 16-bit image equal to 257 x an
    8-bit one scales to exactly the same values.

    Raises
    ------
    NeuroRGError
        For any other dtype.
    """
    arr = np.asarray(image)
    full = _full_scale(arr.dtype, intensity)
    out = arr.astype(np.float32) / np.float32(full)
    if intensity is not None and intensity.full_scale < _DTYPE_FULL_SCALE[arr.dtype]:
        np.minimum(out, 1.0, out=out)
    return out


def _full_scale(dtype: np.dtype, intensity: Intensity | None) -> int:
    full = _DTYPE_FULL_SCALE.get(np.dtype(dtype))
    if full is None:
        raise NeuroRGError(f"pixel type {dtype} cannot be scaled; expected uint8 or uint16")
    return full if intensity is None else intensity.full_scale


# --- crop geometry --------------------------------------------------------------------------

@dataclass(frozen=True)
class CropGeometry:
    """What one crop held when a model was trained (the ``crop_geometry`` of its card).

    Attributes
    ----------
    mode : {"tiles", "whole_field"}
        ``tiles``: square tiles of ``crop_edge_px`` source pixels; ``whole_field``: each field
        is one crop (its largest centred square), as in the study.
    crop_edge_px : int or None
        Tile edge in the training images' pixels (``tiles`` only).
    pixel_size_um : float or None
        µm per pixel of the training images, where known.
    """

    mode: GeometryMode = "tiles"
    crop_edge_px: int | None = None
    pixel_size_um: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in GEOMETRY_MODES:
            raise NeuroRGError(f"crop geometry mode {self.mode!r}; expected one of {', '.join(GEOMETRY_MODES)}")
        if self.mode == "tiles" and (not isinstance(self.crop_edge_px, int) or isinstance(self.crop_edge_px, bool)
                                     or self.crop_edge_px < 1):
            raise NeuroRGError(f"crop edge {self.crop_edge_px!r} px; expected a positive whole number of "
                               "pixels for tiled crops")
        if self.pixel_size_um is not None and not (isinstance(self.pixel_size_um, (int, float))
                                                   and math.isfinite(self.pixel_size_um)
                                                   and self.pixel_size_um > 0):
            raise NeuroRGError(f"pixel size {self.pixel_size_um!r} µm; expected a positive number or none")

    @classmethod
    def from_card(cls, card: Mapping[str, Any]) -> CropGeometry:
        """The geometry a model card records (``card["crop_geometry"]``).

        Raises
        ------
        NeuroRGError
            No or malformed ``crop_geometry``; the message says what is expected.
        """
        g = card.get("crop_geometry")
        if not isinstance(g, Mapping):
            raise NeuroRGError(
                "model card has no crop_geometry; expected {\"mode\": \"tiles\", \"crop_edge_px\": N, "
                "\"pixel_size_um\": P or null} (the crop size the model was trained on)")
        return cls(mode=g.get("mode", "tiles"), crop_edge_px=g.get("crop_edge_px"),
                   pixel_size_um=(float(g["pixel_size_um"]) if isinstance(g.get("pixel_size_um"), (int, float))
                                  and not isinstance(g.get("pixel_size_um"), bool) else g.get("pixel_size_um")))

    def as_card(self) -> dict[str, Any]:
        """The card's ``crop_geometry`` entry."""
        return {"mode": self.mode, "crop_edge_px": self.crop_edge_px, "pixel_size_um": self.pixel_size_um}

    def scale_to(self, plate_pixel_size_um: float | None) -> float:
        """Plate pixels per model pixel: 2.0 when the plate's pixels are half the model's size.

        1.0 when either pixel size is unknown (the plate is assumed to share the model's scale).
        """
        if plate_pixel_size_um is None or self.pixel_size_um is None:
            return 1.0
        if not (math.isfinite(plate_pixel_size_um) and plate_pixel_size_um > 0):
            raise NeuroRGError(f"plate pixel size {plate_pixel_size_um!r} µm; expected a positive number")
        return self.pixel_size_um / plate_pixel_size_um

    def edge_on(self, field_shape: tuple[int, int], plate_pixel_size_um: float | None = None) -> int:
        """Crop edge in the plate's pixels: the model's edge at the plate's scale (``tiles``) or
        the field's shorter side (``whole_field``)."""
        if self.mode == "whole_field":
            return int(min(field_shape))
        assert self.crop_edge_px is not None  # checked in __post_init__
        return max(1, int(round(self.crop_edge_px * self.scale_to(plate_pixel_size_um))))


@dataclass(frozen=True)
class CropPlan:
    """Which tiles of a well's fields become crops.

    Attributes
    ----------
    n_fields : int
        Fields imaged in the well.
    crops_per_well : int
        Crops taken from the well (fewer than asked only when the well has fewer tiles).
    edge : int
        Tile edge in the plate's pixels.
    grid : (int, int)
        Tile positions per field, (rows, columns).
    boxes : tuple of (top, left)
        Every tile position of a field, row-major; the tile index is the position in this tuple.
    tiles : tuple of (field_index, tile_index)
        The chosen tiles, in crop order; ``field_index`` is 0-based (position in
        ``Plate.fields_of(well)``).
    """

    n_fields: int
    crops_per_well: int
    edge: int
    grid: tuple[int, int]
    boxes: tuple[tuple[int, int], ...]
    tiles: tuple[tuple[int, int], ...]

    def tiles_of(self, field_index: int) -> tuple[int, ...]:
        """Tile indices chosen from one field, in crop order (the ``Metadata_Crop`` values)."""
        if not 0 <= field_index < self.n_fields:
            raise NeuroRGError(f"field index {field_index} is outside 0..{self.n_fields - 1}")
        return tuple(t for f, t in self.tiles if f == field_index)

    @property
    def overlapping(self) -> bool:
        """Tiles overlap (the well had fewer whole tiles than crops asked)."""
        ys = sorted({t for t, _ in self.boxes})
        xs = sorted({x for _, x in self.boxes})
        return any(b - a < self.edge for a, b in zip(ys, ys[1:])) or \
            any(b - a < self.edge for a, b in zip(xs, xs[1:]))

    def key(self, field_index: int) -> str:
        """What the crops of one field are, for the prediction cache: edge, grid and tiles."""
        return f"e{self.edge}g{self.grid[0]}x{self.grid[1]}:{','.join(map(str, self.tiles_of(field_index)))}"


def _positions(length: int, edge: int, n: int) -> list[int]:
    """``n`` tile starts along an axis of ``length`` pixels: centred side by side when they fit,
    else spread evenly from 0 to ``length - edge`` (overlapping)."""
    if n * edge <= length:
        margin = (length - n * edge) // 2
        return [margin + i * edge for i in range(n)]
    return [int(round(i * (length - edge) / (n - 1))) for i in range(n)]


def _grid(field_shape: tuple[int, int], edge: int, n_fields: int, crops: int, overlap: bool) -> tuple[int, int]:
    """Tile positions per field (rows, cols): whole tiles, then (with ``overlap``) more, overlapping,
    until the well's fields hold ``crops`` of them or no distinct position is left."""
    h, w = field_shape
    ny, nx = h // edge, w // edge
    max_y, max_x = h - edge + 1, w - edge + 1
    while overlap and n_fields * ny * nx < crops and (ny < max_y or nx < max_x):
        # grow the axis whose tiles are furthest apart (keeps the stride even in both)
        if nx >= max_x or (ny < max_y and (h - edge) / ny >= (w - edge) / nx):
            ny += 1
        else:
            nx += 1
    return ny, nx


def plan_crops(n_fields: int, field_shape: tuple[int, int], edge: int,
               crops_per_well: int = CROPS_PER_WELL, *, overlap: bool = True) -> CropPlan:
    """Plan ``crops_per_well`` crops of ``edge`` px spread evenly over a well's ``n_fields`` fields.

    Parameters
    ----------
    n_fields
        Fields imaged in the well.
    field_shape
        (H, W) of each field, pixels.
    edge
        Tile edge in the plate's pixels (``CropGeometry.edge_on``).
    crops_per_well
        Crops wanted.
    overlap
        Whether tiles may overlap when the well has fewer whole tiles than crops wanted (not for
        whole-field models: one crop per field, as many crops as fields).

    Examples: 256 px fields, 128 px edge, 4 fields -> 2 x 2 tiles per field, 15 of 16; 512 px,
    1 field -> 4 x 4, 15 of 16; 256 px, 1 field -> 4 x 4 overlapping tiles (stride 43 px).

    Raises
    ------
    NeuroRGError
        No fields, no crops asked, or fields smaller than the crop edge.
    """
    if n_fields < 1:
        raise NeuroRGError(f"a well needs at least one field to crop; got {n_fields}")
    if crops_per_well < 1:
        raise NeuroRGError(f"crops per well must be at least 1; got {crops_per_well}")
    h, w = int(field_shape[0]), int(field_shape[1])
    if edge < 1 or h < edge or w < edge:
        raise NeuroRGError(
            f"fields are {h} x {w} px, smaller than the {edge} px crop the model needs at this plate's "
            "scale; expected fields at least one crop wide (check the plate's pixel size)")
    ny, nx = _grid((h, w), edge, n_fields, crops_per_well, overlap)
    boxes = tuple((t, l) for t in _positions(h, edge, ny) for l in _positions(w, edge, nx))
    per_field = len(boxes)
    total = n_fields * per_field
    k = min(crops_per_well, total)
    if k < crops_per_well and overlap:
        log.warning("a well of %d field(s) of %d x %d px holds only %d distinct %d px crops; %d asked",
                    n_fields, h, w, total, edge, crops_per_well)
    # centred even spacing over all the well's tiles: consecutive picks are >= 1 apart
    picks = np.floor((np.arange(k) + 0.5) * total / k).astype(int)
    tiles = tuple((int(p) // per_field, int(p) % per_field) for p in picks)
    return CropPlan(n_fields=n_fields, crops_per_well=k, edge=edge, grid=(ny, nx), boxes=boxes, tiles=tiles)


class PlateLike(Protocol):
    """What ``plate_cropping`` reads of a plate (``plates.Plate`` has it)."""

    field_shape: tuple[int, int]
    dtype: Any
    fields: Sequence[Any]
    pixel_size_um: float | None
    pixel_size_source: str | None

    def read_field(self, ref: Any) -> np.ndarray: ...


@dataclass(frozen=True)
class PlateCropping:
    """How one plate is cut into a model's crops: the tile edge and the intensity scaling.

    Attributes
    ----------
    geometry : CropGeometry
        The model's crop geometry (its card).
    edge : int
        Tile edge in the plate's pixels.
    intensity : Intensity
        The plate's intensity scaling.
    pixel_size_um, pixel_size_source
        The plate's pixel size (µm) and where it came from ("user", the metadata kind, or None).
    """

    geometry: CropGeometry
    edge: int
    intensity: Intensity
    pixel_size_um: float | None
    pixel_size_source: str | None

    def plan(self, n_fields: int, field_shape: tuple[int, int], crops_per_well: int = CROPS_PER_WELL) -> CropPlan:
        """The crop plan of a well of ``n_fields`` fields (whole-field models: one crop per field,
        the field's largest centred square)."""
        return plan_crops(n_fields, field_shape, self.edge, crops_per_well,
                          overlap=self.geometry.mode == "tiles")

    def as_params(self) -> dict[str, Any]:
        """JSON-able, for a run's parameters."""
        return {"model": self.geometry.as_card(), "crop_edge_px": self.edge,
                "plate_pixel_size_um": self.pixel_size_um, "pixel_size_source": self.pixel_size_source}

    def notes(self) -> list[str]:
        """What a person should know before scoring: scales assumed rather than known."""
        out = []
        g = self.geometry
        if g.mode == "tiles" and g.pixel_size_um is not None and self.pixel_size_um is None:
            out.append(f"the plate's pixel size is unknown, so crops of {self.edge} px assume the model's "
                       f"{g.pixel_size_um:g} um per pixel; if the plate was imaged at another magnification, "
                       "give its pixel size (--pixel-size, or the app's field), or the model sees cells at "
                       "the wrong size")
        if g.mode == "tiles" and g.pixel_size_um is None:
            out.append(f"the model card has no pixel size, so crops of {self.edge} px assume the plate shares "
                       "the training plates' scale")
        if "detected" in self.intensity.source and self.intensity.bits != 16:
            out.append(f"16-bit images holding {self.intensity.bits}-bit data ({self.intensity.source}); "
                       "scaled to that range; if this is wrong, give the significant bits (--bit-depth, or "
                       "the app's Significant bits)")
        return out


def plate_cropping(plate: PlateLike, geometry: CropGeometry, *, pixel_size_um: float | None = None,
                   bits: int | None = None) -> PlateCropping:
    """Decide how a plate is cropped for a model: training and scoring both call this.

    Parameters
    ----------
    plate
        The plate (its field shape, pixel type, pixel size metadata and a sample of its fields).
    geometry
        The model's crop geometry.
    pixel_size_um
        The plate's pixel size (µm) when the user gives it; wins over the files' metadata.
    bits
        The significant bit depth when the user gives it; default detected from a sample of
        ``INTENSITY_SAMPLE_FIELDS`` fields.
    """
    if pixel_size_um is not None:
        if not (math.isfinite(pixel_size_um) and pixel_size_um > 0):
            raise NeuroRGError(f"pixel size {pixel_size_um!r} µm; expected a positive number")
        px, source = float(pixel_size_um), "user"
    else:
        px, source = plate.pixel_size_um, plate.pixel_size_source
    edge = geometry.edge_on(plate.field_shape, px)
    sample = sample_field_indices(len(plate.fields))
    intensity = detect_intensity(plate.dtype, (plate.read_field(plate.fields[i]) for i in sample), bits=bits)
    return PlateCropping(geometry, edge, intensity, px, source)


# --- resizing -------------------------------------------------------------------------------

def _resize_planes(planes: np.ndarray, size: int) -> np.ndarray:
    """C-contiguous float32 (C, s, s) -> (size, size, C)."""
    s = planes.shape[1]
    if s == size:
        return np.moveaxis(planes, 0, -1)
    resample = Image.Resampling.BOX if s > size else Image.Resampling.BILINEAR
    return np.stack(
        [np.asarray(Image.fromarray(p).resize((size, size), resample=resample)) for p in planes],
        axis=-1,
    )


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a float32 (s, s, C) image to (size, size, C), channel by channel.

    Shrinking uses Pillow's box filter, which is exact area averaging for integer factors;
    enlarging uses bilinear interpolation.
    """
    if image.ndim != 3 or image.shape[0] != image.shape[1]:
        raise NeuroRGError(f"expected a square (s, s, C) image; got shape {image.shape}")
    if image.shape[0] == size:
        return image.astype(np.float32, copy=False)
    return _resize_planes(np.moveaxis(image, -1, 0).astype(np.float32, order="C"), size)


def crops_from_field(field: np.ndarray, plan: CropPlan, field_index: int, input_size: int,
                     intensity: Intensity | None = None) -> np.ndarray:
    """The crops a plan takes from one field, scaled and resized for the model.

    Parameters
    ----------
    field
        (H, W, 3) uint8 or uint16, last axis in ``schema.CHANNELS`` order.
    plan
        From ``plan_crops``.
    field_index
        0-based position of this field in the well (``Plate.fields_of(well)`` order).
    input_size
        Model input edge, pixels.
    intensity
        The plate's intensity scaling (``detect_intensity``); default the dtype's full range.

    Returns
    -------
    numpy.ndarray
        float32 (k, input_size, input_size, 3) in [0, 1]; k = ``len(plan.tiles_of(field_index))``
        (may be 0).
    """
    if field.ndim != 3 or field.shape[2] != len(CHANNELS):
        raise NeuroRGError(f"field has shape {field.shape}; expected (H, W, {len(CHANNELS)})")
    if input_size < 1:
        raise NeuroRGError(f"input size must be a positive number of pixels; got {input_size}")
    chosen = plan.tiles_of(field_index)
    out = np.empty((len(chosen), input_size, input_size, field.shape[2]), dtype=np.float32)
    if not chosen:
        return out
    full = _full_scale(field.dtype, intensity)
    clip = full < _DTYPE_FULL_SCALE[field.dtype]
    side = plan.edge
    boxes = [plan.boxes[t] for t in chosen]
    k = side // input_size
    if side > input_size and side % input_size == 0 and k * k * full < 2**24:
        # integer shrink: each model pixel is the mean of a k x k block, summed in exact integers
        # (k * k * full < 2**24, so float32 holds every sum exactly: the same values as summing in
        # float32 block by block), over the tiles' common region when they sit on one k-grid
        scale = np.float32(1.0 / (k * k * full))
        for region, members in _shrink_regions(boxes, side, k):
            top0, left0, bottom, right = region
            block = field[top0:bottom, left0:right]
            if clip:  # values above the significant bits' full scale (rare: unsampled bright pixels)
                block = np.minimum(block, block.dtype.type(full))
            sums = _block_sums(block, k, k * k * full)
            for i in members:
                y, x = (boxes[i][0] - top0) // k, (boxes[i][1] - left0) // k
                np.multiply(sums[y:y + input_size, x:x + input_size], scale, out=out[i])
        return out
    for i, (top, left) in enumerate(boxes):
        block = field[top:top + side, left:left + side]
        if clip:
            block = np.minimum(block, block.dtype.type(full))
        # one planar float32 copy per crop, scaled exactly as scale_intensity does
        planes = np.moveaxis(block, -1, 0).astype(np.float32, order="C")
        planes /= np.float32(full)
        out[i] = _resize_planes(planes, input_size)
    return out


def _shrink_regions(boxes: Sequence[tuple[int, int]], side: int, k: int,
                    ) -> list[tuple[tuple[int, int, int, int], list[int]]]:
    """Where to sum k x k blocks: ``((top, left, bottom, right), crop indices)`` pairs. One region
    around all the tiles when they sit on one k-pixel grid and fill at least half of it (one pass
    over the field instead of one per tile), else one region per tile."""
    top0, left0 = min(t for t, _ in boxes), min(x for _, x in boxes)
    bottom, right = max(t for t, _ in boxes) + side, max(x for _, x in boxes) + side
    aligned = all((t - top0) % k == 0 and (x - left0) % k == 0 for t, x in boxes)
    if len(boxes) > 1 and aligned and (bottom - top0) * (right - left0) <= 2 * len(boxes) * side * side:
        return [((top0, left0, bottom, right), list(range(len(boxes))))]
    return [((t, x, t + side, x + side), [i]) for i, (t, x) in enumerate(boxes)]


def _block_sums(block: np.ndarray, k: int, largest: int) -> np.ndarray:
    """Exact sums of the k x k pixel blocks of an (H, W, C) integer image (H, W multiples of k,
    k >= 2): (H / k, W / k, C), in an unsigned type that holds ``largest``.

    Rows are summed as whole strided rows, in one ``np.add`` into the wider type. The k neighbours
    along a row are added with the axes as (row, channel, column) and ``order="C"``, so each inner
    loop runs over the W / k columns of one channel (numpy's memory order would run it over the 3
    values of one pixel, 3-4x slower). Integer sums are exact, so any order gives the same result.
    """
    h, w, c = block.shape
    acc = np.uint16 if largest <= np.iinfo(np.uint16).max else np.uint32
    rows = np.add(block[0::k], block[1::k], dtype=acc)
    for dy in range(2, k):
        rows += block[dy::k]
    neighbours = rows.reshape(h // k, w // k, k, c).transpose(0, 3, 1, 2)   # (row, channel, column, dx)
    out = np.empty((h // k, w // k, c), acc)
    planar = out.transpose(0, 2, 1)
    np.add(neighbours[..., 0], neighbours[..., 1], out=planar, order="C")
    for dx in range(2, k):
        np.add(planar, neighbours[..., dx], out=planar, order="C")
    return out


# --- intensity statistics for the model-fit check ------------------------------------------------

FIELD_STATS_STRIDE = 4
"""Every 4th row and column of a field feeds its intensity statistics (16x fewer pixels, same
means to well under 1 %)."""


def channels_over_full_scale(field: np.ndarray, intensity: Intensity) -> dict[int, int]:
    """Channel index -> its largest value, for the channels of an (H, W, C) field whose values go
    above ``intensity``'s full scale (read on every ``FIELD_STATS_STRIDE``-th row and column);
    empty when none do. Such a field was written at another bit depth than the fields the plate's
    bit depth was detected from (or than the user gave): scaling would clip it to white."""
    full = intensity.full_scale
    if full >= _DTYPE_FULL_SCALE[field.dtype]:
        return {}
    peaks = field[::FIELD_STATS_STRIDE, ::FIELD_STATS_STRIDE].max(axis=(0, 1))
    return {c: int(v) for c, v in enumerate(peaks) if v > full}


def field_channel_stats(field: np.ndarray, intensity: Intensity | None = None) -> np.ndarray:
    """Per-channel mean and SD of a field's scaled intensities, (2, 3): rows mean, SD.

    Computed on every ``FIELD_STATS_STRIDE``-th row and column, in [0, 1] units after the plate's
    intensity scaling; the model-fit check compares them with the training plates'.

    The sample is gathered once into a planar copy of the native pixels and scaled for all channels
    in one float32 multiply; the float64 sums, deviations and squares then run once over the three
    contiguous planes (a reduction over the last two axes, whose inner loop is each plane in
    order). The values are bit-identical to ``x.mean(dtype=np.float64)`` and
    ``x.std(dtype=np.float64)`` of each channel's plane ``x`` (the same sums over the same values,
    in numpy's own order: float64 mean, deviations from it, their squares), at about half the
    CPU of calling those per channel on a 256 px field (numpy's per-call overhead dominates at
    that size).
    """
    if field.ndim != 3 or field.shape[2] != len(CHANNELS):
        raise NeuroRGError(f"field has shape {field.shape}; expected (H, W, {len(CHANNELS)})")
    scale = np.float32(1.0 / _full_scale(field.dtype, intensity))
    native = np.ascontiguousarray(field[::FIELD_STATS_STRIDE, ::FIELD_STATS_STRIDE].transpose(2, 0, 1))
    x = np.multiply(native, scale, dtype=np.float32)
    if _DTYPE_FULL_SCALE[field.dtype] * scale > 1:   # the dtype can hold values above the full scale
        np.minimum(x, 1.0, out=x)
    n = native.shape[1] * native.shape[2]
    out = np.empty((2, field.shape[2]), np.float64)
    np.divide(np.add.reduce(x, axis=(1, 2), dtype=np.float64), n, out=out[0])
    dev = np.subtract(x, out[0].reshape(-1, 1, 1))
    np.square(dev, out=dev)
    np.divide(np.add.reduce(dev, axis=(1, 2)), n, out=out[1])
    np.sqrt(out[1], out=out[1])
    return out
