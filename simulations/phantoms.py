"""Phantom hospitals: synthetic multi-vendor CT federations with fake PHI, for testing.

SIMULATED DATA. Each site is a fake hospital that exports 2-D CT-like slices of a liver-like
organ (fat, parenchyma with texture, enhanced vessels, fat clefts, gallbladder, ribs) with or
without a lesion, acquired on simulated scanner profiles (`simulations.scanners`). The task is
binary: lesion present (label 1) or not.

One case goes scene -> vendor render -> DICOM encode:
`sample_scene` (anatomy in HU and mm, independent of any scanner), `rasterize` (the scene on a
scanner's pixel grid, with the lesion's extent), `scanners.acquire` (blur, bias, noise,
response) and `PixelEncoding.encode` (stored integers), then `_ct_dataset` (headers with fake
PHI in standard tags, a private block and nested sequences).

Output of `write_phantom_federation` per site ``OUT/<site>/``: ``dicom/**.dcm`` (paths hold
the patient's name, as hospital exports do), ``masks/**.png`` (lesion masks, 0/255, all zero
for negatives), ``labels.csv`` (path, label, mask, sex, age) and ``phantom.json`` (what was
generated, marked simulated). The same seed gives byte-identical files.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from simulations.fake_phi import (
    Institution,
    Patient,
    Visit,
    age_on,
    make_institutions,
    make_mrns,
    make_patient,
    make_visit,
)
from simulations.scanners import PROFILES, ScannerProfile, acquire

# Streams of the seed: SeedSequence([seed, stream, ...]) keeps the draws of one part of the
# federation independent of every other part.
_SPEC_STREAM, _INSTITUTION_STREAM, _SITE_STREAM, _CASE_STREAM = range(4)

DEFAULT_IMAGE_SIZE = 64
LABELS_FILE = "labels.csv"
MARKER_FILE = "phantom.json"
LABEL_COLUMNS = ("path", "label", "mask", "sex", "age")
PRIVATE_CREATOR = "ACME HOSPITAL PACS 1.0"
PRIVATE_GROUP = 0x0009
#: Ranges for sites derived from the seed (n_sites != 4).
SITE_CASES_RANGE = (60, 400)
SITE_PREVALENCE_RANGE = (0.1, 0.5)
PATIENT_AGE_RANGE = (25, 89)
_T = TypeVar("_T")
_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:medfed:simulations:phantoms")
#: Worker processes: at most this many; none below this many cases; cases per task.
_MAX_WORKERS, _PARALLEL_MIN_CASES, _CHUNK_SIZE = 4, 200, 16
#: Seconds from the study's start to its CT series.
_SERIES_DELAY_S = 95.0
# SOP classes that the request and reference sequences of a CT study point to.
_STUDY_COMPONENT_CLASS = "1.2.840.10008.3.1.2.3.1"
_PERFORMED_STEP_CLASS = "1.2.840.10008.3.1.2.3.3"


# ---------------------------------------------------------------------------------------
# Scene: anatomy in HU, millimetres from the isocentre (x to the patient's left, y posterior)
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Texture:
    """A smooth random field: plane waves ``(kx, ky [rad/mm], phase [rad], amplitude [HU])``."""

    waves: tuple[tuple[float, float, float, float], ...]

    def sample(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The field in HU at positions ``x``, ``y`` (mm)."""
        field_hu = np.zeros_like(x)
        for kx, ky, phase, amplitude in self.waves:
            field_hu += amplitude * np.cos(kx * x + ky * y + phase)
        return field_hu


@dataclass(frozen=True)
class Shape:
    """A star-shaped region: a rotated ellipse whose border radius is modulated by lobes.

    ``lobes`` are ``(order, relative amplitude, phase)``: the border radius at angle phi is
    scaled by ``1 + sum(a * cos(order * phi + phase))``. ``edge_mm`` widens the border into a
    soft margin beyond partial volume (0: sharp).
    """

    center_mm: tuple[float, float]
    semi_axes_mm: tuple[float, float]
    angle_rad: float = 0.0
    lobes: tuple[tuple[int, float, float], ...] = ()
    edge_mm: float = 0.0

    def signed_distance_mm(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Approximate distance in mm to the border (< 0 inside).

        First order in the ellipse's implicit function, so thin shapes get their true width.
        """
        dx, dy = x - self.center_mm[0], y - self.center_mm[1]
        cos, sin = np.cos(self.angle_rad), np.sin(self.angle_rad)
        u, v = dx * cos + dy * sin, dy * cos - dx * sin
        a, b = self.semi_axes_mm
        r, rho = np.hypot(u, v), np.hypot(u / a, v / b)
        gradient = np.hypot(u / (a * a), v / (b * b))
        # The ray's direction as a unit complex number: cos(k * phi + p) = Re(z**k * e^ip),
        # which is faster than arctan2 and cosines.
        with np.errstate(divide="ignore", invalid="ignore"):
            mm_per_unit = np.where(gradient > 0, rho / gradient, min(a, b))
            direction = np.where(r > 0, (u + 1j * v) / r, 1.0)
        border = np.ones_like(r)
        for order, amplitude, phase in self.lobes:
            border += amplitude * (direction**order * np.exp(1j * phase)).real
        return mm_per_unit * (rho - border)

    @property
    def reach_mm(self) -> float:
        """A radius around the centre outside which the shape covers nothing."""
        lobes = sum(abs(amplitude) for _, amplitude, _ in self.lobes)
        return max(self.semi_axes_mm) * (1.0 + lobes) + self.edge_mm

    def coverage(self, x: np.ndarray, y: np.ndarray, pixel_mm: float) -> np.ndarray:
        """Fraction (0..1) of each pixel centred at ``x``, ``y`` that lies inside the shape."""
        width = pixel_mm + self.edge_mm
        return np.clip(0.5 - self.signed_distance_mm(x, y) / width, 0.0, 1.0)


@dataclass(frozen=True)
class Layer:
    """A tissue painted over what lies below it: a shape, a mean HU and an optional texture."""

    shape: Shape
    hu: float
    texture: Texture | None = None


@dataclass(frozen=True)
class Scene:
    """One CT slice: layers painted in order over a fat background.

    ``lesion`` is empty for a negative case; otherwise its first layer's shape is the extent
    of the lesion (what the mask marks) and later layers are its inner parts.
    """

    background_hu: float
    anatomy: tuple[Layer, ...]
    lesion: tuple[Layer, ...] = ()

    @property
    def has_lesion(self) -> bool:
        """True when the scene holds a lesion (label 1)."""
        return bool(self.lesion)


@dataclass(frozen=True)
class SceneConfig:
    """Ranges of the phantom anatomy (HU, mm, probabilities); draws are uniform in them.

    Lesion centres lie within ``lesion_zone_mm`` of the isocentre, so that every profile's
    field of view holds the whole lesion. ``subtle_fraction`` of lesions are small and faint.
    """

    fat_hu: tuple[float, float] = (-110.0, -85.0)
    organ_hu: tuple[float, float] = (40.0, 60.0)
    organ_radius_mm: tuple[float, float] = (65.0, 95.0)
    organ_offset_mm: float = 12.0
    organ_texture_hu: float = 5.0
    vessel_count: tuple[int, int] = (1, 5)
    vessel_radius_mm: tuple[float, float] = (1.5, 5.5)
    vessel_contrast_hu: tuple[float, float] = (70.0, 150.0)
    cleft_probability: float = 0.25
    gallbladder_probability: float = 0.25
    gallbladder_hu: tuple[float, float] = (5.0, 20.0)
    rib_count: tuple[int, int] = (0, 2)
    rib_hu: tuple[float, float] = (350.0, 700.0)
    lesion_zone_mm: float = 55.0
    lesion_diameter_mm: tuple[float, float] = (16.0, 34.0)
    lesion_contrast_hu: tuple[float, float] = (80.0, 150.0)
    subtle_fraction: float = 0.15
    subtle_diameter_mm: tuple[float, float] = (8.0, 14.0)
    subtle_contrast_hu: tuple[float, float] = (35.0, 55.0)
    rim_fraction: float = 0.25
    hyperdense_fraction: float = 0.15


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(*bounds))


def _log_uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(np.exp(rng.uniform(np.log(bounds[0]), np.log(bounds[1]))))


def _lobes(rng: np.random.Generator, max_amplitude: float) -> tuple[tuple[int, float, float], ...]:
    return tuple(
        (order, float(rng.uniform(0.0, max_amplitude)), float(rng.uniform(0.0, 2.0 * np.pi)))
        for order in range(2, 6)
    )


def _texture(
    rng: np.random.Generator, wavelength_mm: tuple[float, float], amplitude_hu: float, n: int = 6
) -> Texture:
    """A texture of ``n`` waves whose summed standard deviation is about ``amplitude_hu``."""
    per_wave = amplitude_hu * np.sqrt(2.0 / n)
    waves = []
    for _ in range(n):
        k = 2.0 * np.pi / rng.uniform(*wavelength_mm)
        direction = rng.uniform(0.0, 2.0 * np.pi)
        waves.append(
            (
                float(k * np.cos(direction)),
                float(k * np.sin(direction)),
                float(rng.uniform(0.0, 2.0 * np.pi)),
                float(per_wave * rng.uniform(0.5, 1.5)),
            )
        )
    return Texture(tuple(waves))


def _point_near(
    rng: np.random.Generator, shape: Shape, radius_mm: float, distance_mm: tuple[float, float]
) -> tuple[float, float] | None:
    """A point within ``radius_mm`` of the isocentre whose signed distance to ``shape`` lies
    in ``distance_mm`` (negative: inside), or None when 100 draws find none."""
    for _ in range(100):
        r, theta = radius_mm * np.sqrt(rng.random()), rng.uniform(0.0, 2.0 * np.pi)
        point = (float(r * np.cos(theta)), float(r * np.sin(theta)))
        distance = shape.signed_distance_mm(np.array(point[0]), np.array(point[1]))
        if distance_mm[0] <= distance <= distance_mm[1]:
            return point
    return None


def sample_scene(
    rng: np.random.Generator, with_lesion: bool, config: SceneConfig | None = None
) -> Scene:
    """Draw one slice's anatomy (HU, mm), with a lesion in the organ when ``with_lesion``."""
    cfg = config or SceneConfig()
    organ_hu = _uniform(rng, cfg.organ_hu)
    radius = _uniform(rng, cfg.organ_radius_mm)
    organ = Shape(
        center_mm=(
            float(rng.uniform(-cfg.organ_offset_mm, cfg.organ_offset_mm)),
            float(rng.uniform(-cfg.organ_offset_mm, cfg.organ_offset_mm)),
        ),
        semi_axes_mm=(radius * rng.uniform(0.95, 1.2), radius * rng.uniform(0.8, 1.0)),
        angle_rad=float(rng.uniform(0.0, np.pi)),
        lobes=_lobes(rng, 0.06),
        edge_mm=0.5,
    )
    fat_hu = _uniform(rng, cfg.fat_hu)
    anatomy = [Layer(organ, organ_hu, _texture(rng, (12.0, 40.0), cfg.organ_texture_hu))]
    if rng.random() < cfg.cleft_probability:
        cleft = Shape(
            _point_near(rng, organ, cfg.lesion_zone_mm, (-np.inf, -10.0)) or organ.center_mm,
            (float(rng.uniform(15.0, 35.0)), float(rng.uniform(0.8, 1.8))),
            float(rng.uniform(0.0, np.pi)),
        )
        anatomy.append(Layer(cleft, fat_hu + 15.0))
    if rng.random() < cfg.gallbladder_probability:
        theta = rng.uniform(0.0, 2.0 * np.pi)
        reach = radius * rng.uniform(0.75, 0.95)
        center = (
            organ.center_mm[0] + float(reach * np.cos(theta)),
            organ.center_mm[1] + float(reach * np.sin(theta)),
        )
        axes = (float(rng.uniform(12.0, 20.0)), float(rng.uniform(7.0, 12.0)))
        gallbladder = Shape(center, axes, float(theta), edge_mm=0.3)
        anatomy.append(Layer(gallbladder, _uniform(rng, cfg.gallbladder_hu)))
    for _ in range(int(rng.integers(cfg.vessel_count[0], cfg.vessel_count[1] + 1))):
        vessel_radius = _log_uniform(rng, cfg.vessel_radius_mm)
        vessel = Shape(
            _point_near(rng, organ, cfg.lesion_zone_mm + 15.0, (-np.inf, 10.0)) or organ.center_mm,
            (vessel_radius * float(rng.uniform(1.0, 2.2)), vessel_radius),
            float(rng.uniform(0.0, np.pi)),
            edge_mm=0.2,
        )
        anatomy.append(Layer(vessel, organ_hu + _uniform(rng, cfg.vessel_contrast_hu)))
    for _ in range(int(rng.integers(cfg.rib_count[0], cfg.rib_count[1] + 1))):
        # Ribs lie in the fat just outside the organ; none when the organ fills the view.
        center = _point_near(rng, organ, cfg.lesion_zone_mm + 20.0, (4.0, 15.0))
        if center is not None:
            axes = (float(rng.uniform(4.0, 7.0)), float(rng.uniform(2.5, 4.0)))
            tangent = float(np.arctan2(center[1], center[0]) + np.pi / 2.0)
            anatomy.append(Layer(Shape(center, axes, tangent), _uniform(rng, cfg.rib_hu)))
    lesion = _sample_lesion(rng, organ, organ_hu, cfg) if with_lesion else ()
    return Scene(fat_hu, tuple(anatomy), lesion)


def _sample_lesion(
    rng: np.random.Generator, organ: Shape, organ_hu: float, cfg: SceneConfig
) -> tuple[Layer, ...]:
    """A hypodense, hyperdense or rim-enhancing lesion inside the organ."""
    subtle = rng.random() < cfg.subtle_fraction
    diameter = _log_uniform(rng, cfg.subtle_diameter_mm if subtle else cfg.lesion_diameter_mm)
    contrast = _uniform(rng, cfg.subtle_contrast_hu if subtle else cfg.lesion_contrast_hu)
    radius = diameter / 2.0
    outline = Shape(
        _point_near(rng, organ, cfg.lesion_zone_mm - radius, (-np.inf, -radius - 2.0))
        or organ.center_mm,
        (radius * float(rng.uniform(0.85, 1.0)), radius * float(rng.uniform(0.85, 1.0))),
        float(rng.uniform(0.0, np.pi)),
        _lobes(rng, 0.12),
        float(rng.uniform(0.5, 2.5)),
    )
    texture = _texture(rng, (4.0, 10.0), contrast * float(rng.uniform(0.1, 0.25)))
    kind = rng.random()
    if not subtle and kind < cfg.rim_fraction:
        scale = float(rng.uniform(0.55, 0.75))
        core = Shape(
            outline.center_mm,
            (outline.semi_axes_mm[0] * scale, outline.semi_axes_mm[1] * scale),
            outline.angle_rad,
            outline.lobes,
            outline.edge_mm,
        )
        rim_hu = organ_hu + contrast * float(rng.uniform(0.4, 0.8))
        return Layer(outline, rim_hu), Layer(core, organ_hu - contrast, texture)
    sign = 1.0 if kind > 1.0 - cfg.hyperdense_fraction else -1.0
    return (Layer(outline, organ_hu + sign * contrast, texture),)


def _window(
    shape: Shape, coords: np.ndarray, pixel_mm: float
) -> tuple[slice, slice, np.ndarray, np.ndarray]:
    """The rows and columns of the grid near ``shape``, and their pixel centres ``y``, ``x``.

    Most shapes are a few pixels wide: evaluating only near them keeps rendering fast.
    """
    reach = shape.reach_mm + pixel_mm
    x0, y0 = shape.center_mm
    cols = slice(*np.searchsorted(coords, (x0 - reach, x0 + reach)))
    rows = slice(*np.searchsorted(coords, (y0 - reach, y0 + reach)))
    y, x = np.meshgrid(coords[rows], coords[cols], indexing="ij")
    return rows, cols, y, x


def rasterize(scene: Scene, fov_mm: float, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The scene on a square pixel grid centred on the isocentre.

    Returns ``(hu, lesion_fraction)``: HU with partial volume at borders, and the fraction of
    each pixel covered by the lesion (all zero without one); both float64 (rows = y).
    """
    pixel_mm = fov_mm / image_size
    coords = (np.arange(image_size) + 0.5) * pixel_mm - fov_mm / 2.0
    hu = np.full((image_size, image_size), scene.background_hu)
    for layer in (*scene.anatomy, *scene.lesion):
        rows, cols, y, x = _window(layer.shape, coords, pixel_mm)
        fraction = layer.shape.coverage(x, y, pixel_mm)
        tissue = layer.hu + layer.texture.sample(x, y) if layer.texture else layer.hu
        hu[rows, cols] += fraction * (tissue - hu[rows, cols])
    lesion_fraction = np.zeros_like(hu)
    if scene.has_lesion:
        outline = scene.lesion[0].shape
        rows, cols, y, x = _window(outline, coords, pixel_mm)
        lesion_fraction[rows, cols] = outline.coverage(x, y, pixel_mm)
    return hu, lesion_fraction


def lesion_mask(lesion_fraction: np.ndarray, has_lesion: bool) -> np.ndarray:
    """Binary mask (uint8, 0 or 255): pixels at least half inside the lesion.

    A lesion smaller than half a pixel everywhere still marks its most-covered pixel, so a
    positive case never has an empty mask.
    """
    mask = lesion_fraction >= 0.5
    if has_lesion and not mask.any():
        mask[np.unravel_index(np.argmax(lesion_fraction), mask.shape)] = True
    return mask.astype(np.uint8) * 255


# ---------------------------------------------------------------------------------------
# Sites
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PhantomSiteSpec:
    """One phantom hospital: its id, size, lesion prevalence and scanner mix.

    ``vendor_mix`` maps `scanners.PROFILES` names to fractions of cases (summing to 1).
    Label and scanner counts are apportioned exactly (largest remainder), then shuffled.
    """

    site_id: str
    n_cases: int
    prevalence: float
    vendor_mix: dict[str, float]

    def __post_init__(self) -> None:
        unknown = sorted(set(self.vendor_mix) - set(PROFILES))
        if unknown:
            raise ValueError(f"{self.site_id}: unknown scanner profile(s) {', '.join(unknown)}")
        if self.n_cases < 1 or not 0.0 <= self.prevalence <= 1.0:
            raise ValueError(f"{self.site_id}: need n_cases >= 1 and 0 <= prevalence <= 1")
        fractions = list(self.vendor_mix.values())
        if not fractions or min(fractions) <= 0 or abs(sum(fractions) - 1.0) > 1e-6:
            raise ValueError(f"{self.site_id}: vendor_mix fractions must be > 0 and sum to 1")

    @property
    def n_positive(self) -> int:
        """Number of lesion cases: ``round(prevalence * n_cases)``."""
        return round(self.prevalence * self.n_cases)

    def vendor_counts(self) -> dict[str, int]:
        """Cases per scanner profile, summing to ``n_cases``."""
        return apportion(self.vendor_mix, self.n_cases)


_DEFAULT_SPECS = (
    PhantomSiteSpec(
        "site-a", 400, 0.3, {"siemens_force": 0.5, "ge_revolution": 0.3, "philips_ingenuity": 0.2}
    ),
    PhantomSiteSpec(
        "site-b", 250, 0.5, {"ge_optima": 0.5, "canon_aquilion_one": 0.3, "siemens_edge": 0.2}
    ),
    PhantomSiteSpec("site-c", 150, 0.1, {"philips_ingenuity": 0.6, "canon_aquilion_one": 0.4}),
    PhantomSiteSpec("site-d", 60, 0.25, {"siemens_edge": 1.0}),
)


def apportion(fractions: Mapping[str, float], total: int) -> dict[str, int]:
    """Integer counts proportional to ``fractions`` summing to ``total`` (largest remainder)."""
    exact = {name: fraction * total for name, fraction in fractions.items()}
    counts = {name: int(np.floor(value)) for name, value in exact.items()}
    by_remainder = sorted(exact, key=lambda name: (counts[name] - exact[name], name))
    for name in by_remainder[: total - sum(counts.values())]:
        counts[name] += 1
    return counts


def site_name(index: int) -> str:
    """``site-a`` .. ``site-z``, then ``site-aa``, ``site-ab``, ... for a 0-based index."""
    letters = ""
    index += 1
    while index:
        index, remainder = divmod(index - 1, 26)
        letters = chr(ord("a") + remainder) + letters
    return f"site-{letters}"


def default_site_specs(
    n_sites: int = 4, cases_per_site: int | None = None, seed: int = 0
) -> list[PhantomSiteSpec]:
    """The phantom federation's sites.

    Four sites are fixed (400/250/150/60 cases, prevalence 0.3/0.5/0.1/0.25, site-d single
    vendor). Any other count is drawn from ``seed``: 60..400 cases, prevalence 0.1..0.5,
    two or three scanners per site, and exactly one site with a single scanner.
    ``cases_per_site`` overrides every site's size.
    """
    if n_sites < 1:
        raise ValueError(f"need at least one site, got {n_sites}")
    if n_sites == 4:
        specs = list(_DEFAULT_SPECS)
    else:
        rng = np.random.default_rng(np.random.SeedSequence([seed, _SPEC_STREAM]))
        single = int(rng.integers(n_sites))
        specs = [_random_spec(rng, index, index == single) for index in range(n_sites)]
    if cases_per_site is None:
        return specs
    return [replace(spec, n_cases=cases_per_site) for spec in specs]


def _random_spec(rng: np.random.Generator, index: int, single_vendor: bool) -> PhantomSiteSpec:
    mix = random_vendor_mix(rng, single_vendor)
    return PhantomSiteSpec(
        site_name(index),
        int(rng.integers(SITE_CASES_RANGE[0], SITE_CASES_RANGE[1] + 1)),
        round(float(rng.uniform(*SITE_PREVALENCE_RANGE)), 2),
        mix,
    )


def random_vendor_mix(
    rng: np.random.Generator,
    single_vendor: bool = False,
    profiles: Mapping[str, object] = PROFILES,
) -> dict[str, float]:
    """A site's scanner mix drawn from ``rng``: one profile, or two or three of
    ``profiles`` (default `scanners.PROFILES`) in fractions (two decimals) summing to 1."""
    names = sorted(profiles)
    chosen = rng.choice(names, 1 if single_vendor else int(rng.integers(2, 4)), replace=False)
    weights = rng.integers(1, 6, size=len(chosen))
    fractions = [round(float(w / weights.sum()), 2) for w in weights[:-1]]
    fractions.append(round(1.0 - sum(fractions), 2))
    return {str(name): fraction for name, fraction in zip(chosen, fractions, strict=True)}


# ---------------------------------------------------------------------------------------
# DICOM
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Case:
    """Everything one DICOM file is made of."""

    profile: ScannerProfile
    institution: Institution
    station: tuple[str, str]
    patient: Patient
    visit: Visit
    uids: dict[str, str]
    instance_number: int
    pixels: np.ndarray
    pixel_mm: float
    acquisition_delay_s: float
    table_z_mm: float
    table_height_mm: float
    exposure_time_ms: int
    tube_current_ma: int

    @property
    def age(self) -> int:
        return age_on(self.patient.birth_date, self.visit.study_datetime.date())

    @property
    def relative_dir(self) -> str:
        return f"{self.patient.folder_name}/{self.visit.study_datetime:%Y%m%d}_CT"


def deterministic_uid(*parts: object) -> str:
    """A ``2.25.<UUID>`` UID from a name-based (version 5) UUID of ``parts``.

    pydicom's ``generate_uid(prefix=None, ...)`` ignores its entropy sources and returns a
    random UUID, so it cannot give the same UID for the same seed.
    """
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, '/'.join(map(str, parts))).int}"


def _case_uids(seed: int, site_id: str, case_index: int) -> dict[str, str]:
    kinds = ("study", "series", "sop", "frame", "study_component", "performed_step")
    return {kind: deterministic_uid(seed, site_id, case_index, kind) for kind in kinds}


def dicom_item(**attributes: object) -> Dataset:
    item = Dataset()
    for keyword, value in attributes.items():
        setattr(item, keyword, value)
    return item


def _ct_dataset(case: _Case) -> Dataset:
    """The CT Image Storage data set of one case (file meta included)."""
    profile, encoding, patient, visit = (
        case.profile,
        case.profile.encoding,
        case.patient,
        case.visit,
    )
    series_time = visit.at(_SERIES_DELAY_S)
    acquisition_time = visit.at(_SERIES_DELAY_S + case.acquisition_delay_s)
    content_time = visit.at(_SERIES_DELAY_S + case.acquisition_delay_s + 2.0)
    rows, columns = case.pixels.shape
    z = round(case.table_z_mm - case.instance_number * profile.slice_thickness_mm, 2)
    origin = round(-profile.fov_mm / 2.0 + case.pixel_mm / 2.0, 4)
    center, width = encoding.window(profile.window_center_hu, profile.window_width_hu)

    ds = dicom_item(
        **patient_study_attributes(
            case.patient, case.visit, case.institution, case.uids, case.age, "CT"
        ),
        ImageType=["ORIGINAL", "PRIMARY", "AXIAL"],
        SOPClassUID=CTImageStorage,
        SeriesDate=f"{series_time:%Y%m%d}",
        AcquisitionDate=f"{acquisition_time:%Y%m%d}",
        ContentDate=f"{content_time:%Y%m%d}",
        SeriesTime=f"{series_time:%H%M%S}",
        AcquisitionTime=f"{acquisition_time:%H%M%S}",
        ContentTime=f"{content_time:%H%M%S}",
        Manufacturer=profile.manufacturer,
        StationName=case.station[0],
        StudyDescription="CT ABDOMEN WITH CONTRAST",
        SeriesDescription=f"PORTAL VENOUS {profile.slice_thickness_mm:g}mm",
        ManufacturerModelName=profile.model,
        ReferencedStudySequence=DicomSequence(
            [
                dicom_item(
                    ReferencedSOPClassUID=_STUDY_COMPONENT_CLASS,
                    ReferencedSOPInstanceUID=case.uids["study_component"],
                )
            ]
        ),
        ReferencedPerformedProcedureStepSequence=DicomSequence(
            [
                dicom_item(
                    ReferencedSOPClassUID=_PERFORMED_STEP_CLASS,
                    ReferencedSOPInstanceUID=case.uids["performed_step"],
                )
            ]
        ),
        OtherPatientIDsSequence=DicomSequence(
            [
                dicom_item(
                    PatientID=patient.enterprise_id,
                    IssuerOfPatientID="ENTERPRISE MPI",
                    TypeOfPatientID="TEXT",
                )
            ]
        ),
        BodyPartExamined="ABDOMEN",
        SliceThickness=profile.slice_thickness_mm,
        KVP=profile.kvp,
        DataCollectionDiameter=500.0,
        DeviceSerialNumber=case.station[1],
        SoftwareVersions=profile.software_versions,
        ReconstructionDiameter=profile.fov_mm,
        GantryDetectorTilt=0.0,
        TableHeight=case.table_height_mm,
        RotationDirection="CW",
        ExposureTime=case.exposure_time_ms,
        XRayTubeCurrent=case.tube_current_ma,
        Exposure=case.tube_current_ma * case.exposure_time_ms // 1000,
        ConvolutionKernel=list(profile.convolution_kernel),
        PatientPosition="HFS",
        SeriesNumber=3,
        AcquisitionNumber=1,
        InstanceNumber=case.instance_number,
        PatientOrientation=["L", "P"],
        ImagePositionPatient=[origin, origin, z],
        ImageOrientationPatient=[1, 0, 0, 0, 1, 0],
        FrameOfReferenceUID=case.uids["frame"],
        PositionReferenceIndicator="",
        SliceLocation=z,
        SamplesPerPixel=1,
        PhotometricInterpretation=encoding.photometric,
        Rows=rows,
        Columns=columns,
        PixelSpacing=[round(case.pixel_mm, 6)] * 2,
        BitsAllocated=16,
        BitsStored=encoding.bits_stored,
        HighBit=encoding.bits_stored - 1,
        PixelRepresentation=encoding.pixel_representation,
        WindowCenter=center,
        WindowWidth=width,
        RescaleIntercept=encoding.rescale_intercept,
        RescaleSlope=encoding.rescale_slope,
        RescaleType="HU",
        WindowCenterWidthExplanation="ABDOMEN",
        RequestAttributesSequence=DicomSequence(
            [
                dicom_item(
                    AccessionNumber=visit.accession,
                    RequestedProcedureDescription="CT ABDOMEN W CONTRAST",
                    ScheduledProcedureStepDescription="CT ABDOMEN PORTAL VENOUS",
                    ScheduledProcedureStepID=visit.scheduled_step_id,
                    RequestedProcedureID=visit.requested_procedure_id,
                )
            ]
        ),
    )
    ds.PixelData = case.pixels.tobytes()
    return finish_dataset(ds, patient, visit)


def patient_study_attributes(
    patient: Patient,
    visit: Visit,
    institution: Institution,
    uids: Mapping[str, str],
    age: int,
    modality: str,
) -> dict[str, object]:
    """The attributes every simulated hospital's file has (fake PHI in standard tags):
    patient, study, series and instance UIDs (``uids``: study, series, sop), the visit's
    order numbers and staff, and ``modality``."""
    return {
        "SpecificCharacterSet": "ISO_IR 100",
        "SOPInstanceUID": uids["sop"],
        "StudyDate": f"{visit.study_datetime:%Y%m%d}",
        "StudyTime": f"{visit.study_datetime:%H%M%S}",
        "AccessionNumber": visit.accession,
        "Modality": modality,
        "InstitutionName": institution.name,
        "InstitutionAddress": institution.address,
        "ReferringPhysicianName": visit.referring_physician,
        "PerformingPhysicianName": visit.performing_physician,
        "OperatorsName": visit.operator,
        "PatientName": patient.dicom_name,
        "PatientID": patient.mrn,
        "IssuerOfPatientID": institution.code,
        "PatientBirthDate": f"{patient.birth_date:%Y%m%d}",
        "PatientSex": patient.sex,
        "PatientAge": f"{age:03d}Y",
        "StudyInstanceUID": uids["study"],
        "SeriesInstanceUID": uids["series"],
        "StudyID": visit.study_id,
    }


def finish_dataset(ds: Dataset, patient: Patient, visit: Visit) -> Dataset:
    """``ds`` with a private block of fake PHI (as PACS exports carry) and its file meta
    (explicit VR little endian, the SOP class and instance of ``ds``)."""
    block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    block.add_new(0x01, "PN", patient.dicom_name)
    block.add_new(0x02, "LO", patient.mrn)
    block.add_new(
        0x03,
        "LT",
        f"Pt {patient.family}, {patient.given} (MRN {patient.mrn}, DOB "
        f"{patient.birth_date:%m/%d/%Y}): {visit.indication}. "
        f"Ordered by {visit.referring_physician}.",
    )
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = deterministic_uid("implementation")
    meta.ImplementationVersionName = "MEDFED_PHANTOM"
    ds.file_meta = meta
    return ds


# ---------------------------------------------------------------------------------------
# Federation
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _CaseJob:
    """One case to draw and write: everything a worker process needs."""

    seed: int
    site_index: int
    site_id: str
    site_dir: Path
    institution: Institution
    case_index: int
    label: int
    profile_name: str
    mrn: str
    station: tuple[str, str]
    image_size: int
    scene: SceneConfig


def _make_case(job: _CaseJob) -> tuple[_Case, np.ndarray]:
    """Draw, render and encode one case; returns it and its lesion mask."""
    rng = np.random.default_rng(
        np.random.SeedSequence([job.seed, _CASE_STREAM, job.site_index, job.case_index])
    )
    profile = PROFILES[job.profile_name]
    visit = make_visit(rng, job.institution)
    age = int(rng.integers(PATIENT_AGE_RANGE[0], PATIENT_AGE_RANGE[1] + 1))
    patient = make_patient(rng, job.mrn, visit.study_datetime.date(), age)
    timing = rng.integers((5, -40, 120, 400, 150, 20), (60, 40, 200, 1000, 450, 90))
    delay_s, table_z, table_height, exposure_ms, current_ma, instance_number = map(int, timing)
    scene = sample_scene(rng, bool(job.label), job.scene)
    hu, lesion_fraction = rasterize(scene, profile.fov_mm, job.image_size)
    pixel_mm = profile.pixel_spacing_mm(job.image_size)
    measured = acquire(hu, profile, pixel_mm, rng)
    case = _Case(
        profile=profile,
        institution=job.institution,
        station=job.station,
        patient=patient,
        visit=visit,
        uids=_case_uids(job.seed, job.site_id, job.case_index),
        instance_number=instance_number,
        pixels=profile.encoding.encode(measured),
        pixel_mm=pixel_mm,
        acquisition_delay_s=delay_s,
        table_z_mm=table_z,
        table_height_mm=table_height,
        exposure_time_ms=exposure_ms,
        tube_current_ma=current_ma,
    )
    return case, lesion_mask(lesion_fraction, scene.has_lesion)


def _write_case(job: _CaseJob) -> tuple[str, int, str, str, int]:
    """Draw one case and write its DICOM file and mask; returns its labels.csv row."""
    case, mask = _make_case(job)
    relative = f"{case.relative_dir}/IM{case.instance_number:06d}"
    dicom_path = job.site_dir / "dicom" / f"{relative}.dcm"
    mask_path = job.site_dir / "masks" / f"{relative}.png"
    dicom_path.parent.mkdir(parents=True, exist_ok=True)
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    _ct_dataset(case).save_as(dicom_path, enforce_file_format=True)
    Image.fromarray(mask).save(mask_path, format="PNG")
    return f"{relative}.dcm", job.label, f"masks/{relative}.png", case.patient.sex, case.age


def shuffled(rng: np.random.Generator, counts: Mapping[_T, int]) -> list[_T]:
    """Each key repeated ``count`` times, in random order."""
    items = [key for key, count in counts.items() for _ in range(count)]
    return [items[i] for i in rng.permutation(len(items))]


def prepare_site_dir(site_dir: Path) -> None:
    """Remove a previous phantom export from ``site_dir``; refuse to write over anything else."""
    owned = (site_dir / "dicom", site_dir / "masks", site_dir / LABELS_FILE)
    if site_dir.exists() and not (site_dir / MARKER_FILE).exists():
        clash = [p for p in owned if p.exists()]
        if clash:
            raise FileExistsError(f"{clash[0]} exists and was not written by the phantom generator")
    for path in owned:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    site_dir.mkdir(parents=True, exist_ok=True)


def _site_jobs(
    site_dir: Path,
    spec: PhantomSiteSpec,
    site_index: int,
    institution: Institution,
    seed: int,
    image_size: int,
    scene: SceneConfig,
) -> list[_CaseJob]:
    """Prepare a site dir and decide each case's label, scanner, MRN and station."""
    prepare_site_dir(site_dir)
    rng = np.random.default_rng(np.random.SeedSequence([seed, _SITE_STREAM, site_index]))
    labels = shuffled(rng, {1: spec.n_positive, 0: spec.n_cases - spec.n_positive})
    scanners = shuffled(rng, spec.vendor_counts())
    mrns = make_mrns(spec.n_cases, rng)
    stations = {
        name: (f"{institution.code}CT{number:02d}", str(int(rng.integers(10**5, 10**6))))
        for number, name in enumerate(sorted(spec.vendor_mix), start=1)
    }
    return [
        _CaseJob(
            seed=seed,
            site_index=site_index,
            site_id=spec.site_id,
            site_dir=site_dir,
            institution=institution,
            case_index=case_index,
            label=label,
            profile_name=scanner,
            mrn=mrns[case_index],
            station=stations[scanner],
            image_size=image_size,
            scene=scene,
        )
        for case_index, (label, scanner) in enumerate(zip(labels, scanners, strict=True))
    ]


def _write_site_files(
    site_dir: Path,
    spec: PhantomSiteSpec,
    rows: list[tuple[str, int, str, str, int]],
    seed: int,
    image_size: int,
    scene: SceneConfig,
) -> None:
    """Write labels.csv and the phantom marker of a site whose cases are written."""
    write_labels(site_dir, LABEL_COLUMNS, rows)
    marker = {
        "simulated": True,
        "note": "Synthetic CT phantoms; scanner differences are simulated.",
        "generator": "simulations.phantoms",
        "seed": seed,
        "image_size": image_size,
        "scene": asdict(scene),
        "spec": asdict(spec),
        "n_positive": spec.n_positive,
        "scanners": {PROFILES[n].scanner_group: c for n, c in spec.vendor_counts().items()},
    }
    (site_dir / MARKER_FILE).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")


def write_labels(site_dir: Path, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """A site's labels.csv: ``columns``, then one line per row."""
    with (site_dir / LABELS_FILE).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)


def _run_jobs(jobs: list[_CaseJob], workers: int) -> Iterator[tuple[str, int, str, str, int]]:
    """`_write_case` over ``jobs``, in order, on ``workers`` processes (1: in this process).

    Every case draws from its own seed, so the files do not depend on ``workers``.
    """
    if workers <= 1:
        yield from map(_write_case, jobs)
        return
    # spawn: a forked child could inherit locks held by threads of the caller (torch, Ray).
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        yield from pool.map(_write_case, jobs, chunksize=_CHUNK_SIZE)


def _default_workers(n_cases: int) -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return 1 if n_cases < _PARALLEL_MIN_CASES else min(cpus, _MAX_WORKERS)


def write_phantom_federation(
    out_dir: Path,
    n_sites: int = 4,
    cases_per_site: int | None = None,
    seed: int = 0,
    image_size: int = DEFAULT_IMAGE_SIZE,
    progress: Callable[[str, int, int], None] | None = None,
    *,
    scene: SceneConfig | None = None,
    workers: int | None = None,
    specs: Sequence[PhantomSiteSpec] | None = None,
) -> list[Path]:
    """Write a phantom federation under ``out_dir``; returns the site dirs ``out_dir/<site_id>``.

    Sites are ``specs`` if given (a simulation scenario's, `simulations.scenario`), else
    `default_site_specs` (``n_sites``, ``cases_per_site``, ``seed``); images
    are ``image_size`` square pixels. ``progress(site_id, done, total)`` is called after each
    case. ``scene`` sets the anatomy and lesion ranges (default `SceneConfig()`, recorded in
    each site's phantom.json). ``workers`` processes write the cases (default: one per CPU, at most
    `_MAX_WORKERS`, and none for small federations); the files do not depend on it. A
    previous phantom export in a site dir is replaced; raises `FileExistsError` when
    a site dir holds other data at the paths this writes. Deterministic in ``seed`` (>= 0).
    """
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    scene = scene or SceneConfig()
    specs = list(specs) if specs is not None else default_site_specs(n_sites, cases_per_site, seed)
    institutions = make_institutions(
        len(specs), np.random.default_rng(np.random.SeedSequence([seed, _INSTITUTION_STREAM]))
    )
    site_dirs = [Path(out_dir) / spec.site_id for spec in specs]
    jobs = [
        _site_jobs(site_dir, spec, index, institution, seed, image_size, scene)
        for index, (site_dir, spec, institution) in enumerate(
            zip(site_dirs, specs, institutions, strict=True)
        )
    ]
    n_cases = sum(spec.n_cases for spec in specs)
    rows = _run_jobs([job for site in jobs for job in site], workers or _default_workers(n_cases))
    for site_dir, spec in zip(site_dirs, specs, strict=True):
        site_rows = []
        for done in range(1, spec.n_cases + 1):
            site_rows.append(next(rows))
            if progress is not None:
                progress(spec.site_id, done, spec.n_cases)
        _write_site_files(site_dir, spec, site_rows, seed, image_size, scene)
    return site_dirs
