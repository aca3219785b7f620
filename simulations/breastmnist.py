"""BreastMNIST split into simulated hospitals: real ultrasound images, simulated sites.

BreastMNIST (MedMNIST v2: Yang et al., Scientific Data 10:41, 2023; from the Breast
Ultrasound Images dataset, Al-Dhabyani et al., Data in Brief 28:104863, 2020; CC BY 4.0)
holds 780 breast ultrasound images of ONE hospital at 28x28 pixels, in official train, val
and test splits. A scenario with ``source = "breastmnist"`` splits them into its sites:

- the official train and val images (the training pool) by the scenario's site sizes and
  prevalences (quantity and label skew drawn as for phantoms, `scenario.site_draws`), at
  least `MIN_CLASS_CASES` of each class per site; a class the sites ask more of than the
  pool holds is shared in proportion to what they ask;
- the official test split across the sites in proportion to each site's share of each
  class, as each site's test data: the sites' test data pooled are exactly the official
  test split, held out of all training.

The positive label (1) is malignant, MedMNIST's label 0 (the clinically positive finding);
benign and normal are 0. Each image becomes an Ultrasound Image Storage file (8-bit
MONOCHROME2) as seen through the site's simulated ultrasound system
(`scanners.US_PROFILES`: gain, contrast, speckle, blur), with fake PHI of a fake female
patient (`simulations.fake_phi`), written with the phantom writer's shared header code.
The split into sites and the scanner differences are simulated: `PROVENANCE` says so.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.uid import UltrasoundImageStorage

from simulations.fake_phi import (
    make_institutions,
    make_mrns,
    make_patient,
    make_visit,
)
from simulations.phantoms import (
    MARKER_FILE,
    PATIENT_AGE_RANGE,
    apportion,
    deterministic_uid,
    dicom_item,
    finish_dataset,
    patient_study_attributes,
    prepare_site_dir,
    shuffled,
    write_labels,
)
from simulations.scanners import US_PROFILES
from site_client.policy import BurnedInTextPolicy

PROJECT_ROOT = Path(__file__).resolve().parents[1]
#: Where the data are by default, relative to the project root (read-only, never copied).
DEFAULT_DATA = Path("../shared/data/breastmnist/breastmnist.npz")
#: MedMNIST's label of malignant cases (the positive class here).
MEDMNIST_MALIGNANT = 0
MIN_CLASS_CASES = 2
LABEL_COLUMNS = ("path", "label", "split", "sex", "age")
#: What every figure on these data must say about them.
PROVENANCE = (
    "real breast ultrasound images from one source hospital (BreastMNIST, MedMNIST v2, "
    "Yang et al. 2023, CC BY 4.0, from the Breast Ultrasound Images dataset of Al-Dhabyani "
    "et al. 2020); the split into sites and the scanner differences between them are "
    "simulated"
)
#: The simulated sites' policy for their ultrasound images, which the site policy treats as
#: carrying burned-in text (`site_client.burned_in`): store them with the top row blanked,
#: where (in this simulation) the ultrasound systems put their annotation. BreastMNIST's
#: crops carry no text; the default policy (quarantine) would refuse every image.
SITE_BURNED_IN_TEXT = BurnedInTextPolicy("mask", ((0, 0, 1, 28),))
_STREAM = 0xB2E5
_POOL_STREAM, _TEST_STREAM, _SITE_STREAM, _INSTITUTION_STREAM = range(4)
#: (id, training cases, prevalence, scanner mix) of one site (`scenario.site_draws`).
SiteDraw = tuple[str, int, float, dict[str, float]]


class BreastMNISTError(RuntimeError):
    """The data cannot be read, or cannot give the sites what they need (one line)."""


@dataclass(frozen=True)
class BreastMNIST:
    """The data: the training pool (official train then val) and the official test split,
    labels 1 = malignant. ``sha256`` is the file's."""

    pool_images: np.ndarray
    pool_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    path: Path
    sha256: str


@dataclass(frozen=True)
class SitePlan:
    """One site's share: indices into the pool (training) and into the official test
    split, and its scanner mix."""

    site_id: str
    pool: tuple[int, ...]
    test: tuple[int, ...]
    vendor_mix: dict[str, float]


def data_file(path: str | Path | None = None) -> Path:
    """The data file: ``path`` (relative paths from the project root) or `DEFAULT_DATA`."""
    chosen = Path(path) if path is not None else DEFAULT_DATA
    return chosen if chosen.is_absolute() else PROJECT_ROOT / chosen


def malignant(medmnist_labels: np.ndarray) -> np.ndarray:
    """MedMNIST's BreastMNIST labels (0 malignant, 1 normal or benign) -> 1 malignant, 0 not."""
    return (np.asarray(medmnist_labels).ravel() == MEDMNIST_MALIGNANT).astype(np.int64)


def load_breastmnist(path: str | Path | None = None) -> BreastMNIST:
    """Read the BreastMNIST .npz (`data_file`); `BreastMNISTError` (one line) when it is
    absent or is not BreastMNIST."""
    file = data_file(path)
    try:
        raw = file.read_bytes()
        with np.load(file) as npz:
            arrays = {k: npz[k] for k in npz.files}
        pool = np.concatenate([arrays["train_images"], arrays["val_images"]])
        pool_labels = np.concatenate([arrays["train_labels"], arrays["val_labels"]])
        test, test_labels = arrays["test_images"], arrays["test_labels"]
    except (OSError, ValueError, KeyError) as exc:
        reason = "not found" if isinstance(exc, FileNotFoundError) else f"unreadable ({exc})"
        raise BreastMNISTError(
            f"{file}: BreastMNIST data {reason}; set data_path in the scenario "
            f"(default {DEFAULT_DATA}, from the project root)"
        ) from exc
    return BreastMNIST(
        pool, malignant(pool_labels), test, malignant(test_labels), file,
        hashlib.sha256(raw).hexdigest(),
    )  # fmt: skip


def _shares(weights: list[float], total: int, minimum: int, what: str) -> list[int]:
    """``total`` split into ``minimum`` each plus shares of the rest in proportion to
    ``weights``."""
    rest = total - minimum * len(weights)
    if rest < 0:
        raise BreastMNISTError(
            f"BreastMNIST has {total} {what}: too few for {len(weights)} sites with {minimum} each"
        )
    norm = sum(weights) or 1.0
    extra = apportion({str(i): w / norm for i, w in enumerate(weights)}, rest)
    return [minimum + extra[str(i)] for i in range(len(weights))]


def plan_sites(data: BreastMNIST, draws: list[SiteDraw], seed: int) -> list[SitePlan]:
    """Which images go to which site (see the module's docstring), from ``seed``."""
    pool: list[list[int]] = [[] for _ in draws]
    test: list[list[int]] = [[] for _ in draws]
    for label in (1, 0):
        what = "malignant" if label else "benign or normal"
        wanted = [
            max(MIN_CLASS_CASES, round(p * n) if label else n - round(p * n))
            for _, n, p, _ in draws
        ]
        available = np.flatnonzero(data.pool_labels == label)
        counts = wanted
        if sum(wanted) > len(available):
            counts = _shares([float(w) for w in wanted], len(available), MIN_CLASS_CASES, what)
        test_ids = np.flatnonzero(data.test_labels == label)
        test_counts = _shares([float(c) for c in counts], len(test_ids), 1, f"{what} test images")
        for source, per_site, target, stream in (
            (available, counts, pool, _POOL_STREAM),
            (test_ids, test_counts, test, _TEST_STREAM),
        ):
            order = _rng(seed, stream, label).permutation(source)
            ends = np.cumsum(per_site)
            for site, (start, end) in enumerate(zip(ends - per_site, ends, strict=True)):
                target[site].extend(int(i) for i in order[start:end])
    return [
        SitePlan(site_id, tuple(sorted(p)), tuple(sorted(t)), mix)
        for (site_id, _, _, mix), p, t in zip(draws, pool, test, strict=True)
    ]


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, _STREAM, *stream]))


def write_breastmnist_federation(
    out_dir: Path, data: BreastMNIST, draws: list[SiteDraw], seed: int
) -> list[Path]:
    """Each site's export under ``out_dir/<site>``: ``dicom/**.dcm``, labels.csv (path,
    label, split, sex, age) and phantom.json (what was written, marked simulated, with the
    indices of its images in the pool and the official test split). Deterministic in
    ``seed``; returns the site folders."""
    plans = plan_sites(data, draws, seed)
    institutions = make_institutions(len(plans), _rng(seed, _INSTITUTION_STREAM))
    site_dirs = []
    for index, (plan, institution) in enumerate(zip(plans, institutions, strict=True)):
        site_dir = Path(out_dir) / plan.site_id
        prepare_site_dir(site_dir)
        cases = [("train", i) for i in plan.pool] + [("test", i) for i in plan.test]
        rng = _rng(seed, _SITE_STREAM, index)
        cases = [cases[i] for i in rng.permutation(len(cases))]
        scanners = shuffled(rng, apportion(plan.vendor_mix, len(cases)))
        mrns = make_mrns(len(cases), rng)
        rows = []
        for number, ((split, i), scanner, mrn) in enumerate(
            zip(cases, scanners, mrns, strict=True), start=1
        ):
            images, labels = (
                (data.pool_images, data.pool_labels)
                if split == "train"
                else (data.test_images, data.test_labels)
            )
            visit = make_visit(rng, institution)
            age = int(rng.integers(PATIENT_AGE_RANGE[0], PATIENT_AGE_RANGE[1] + 1))
            patient = make_patient(rng, mrn, visit.study_datetime.date(), age, sex="F")
            profile = US_PROFILES[scanner]
            uids = {
                kind: deterministic_uid(seed, "breastmnist", plan.site_id, number, kind)
                for kind in ("study", "series", "sop")
            }
            ds = dicom_item(
                **patient_study_attributes(patient, visit, institution, uids, age, "US"),
                SOPClassUID=UltrasoundImageStorage,
                ImageType=["ORIGINAL", "PRIMARY", "BREAST", "0001"],
                ContentDate=f"{visit.study_datetime:%Y%m%d}",
                ContentTime=f"{visit.study_datetime:%H%M%S}",
                Manufacturer=profile.manufacturer,
                ManufacturerModelName=profile.model,
                SoftwareVersions=profile.software_versions,
                TransducerData=[profile.transducer],
                StationName=f"{institution.code}US{sorted(plan.vendor_mix).index(scanner) + 1:02d}",
                StudyDescription="US BREAST",
                SeriesDescription="BREAST B-MODE",
                BodyPartExamined="BREAST",
                SeriesNumber=1,
                InstanceNumber=number,
                PatientOrientation="",
                SamplesPerPixel=1,
                PhotometricInterpretation="MONOCHROME2",
                Rows=images.shape[1],
                Columns=images.shape[2],
                BitsAllocated=8,
                BitsStored=8,
                HighBit=7,
                PixelRepresentation=0,
            )
            ds.PixelData = profile.acquire(images[i], rng).tobytes()
            relative = f"{patient.folder_name}/{visit.study_datetime:%Y%m%d}_US/IM{number:06d}.dcm"
            path = site_dir / "dicom" / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            finish_dataset(ds, patient, visit).save_as(path, enforce_file_format=True)
            rows.append((relative, int(labels[i]), split, patient.sex, age))
        write_labels(site_dir, LABEL_COLUMNS, rows)
        _write_marker(site_dir, plan, data, seed, scanners)
        site_dirs.append(site_dir)
    return site_dirs


def _write_marker(
    site_dir: Path, plan: SitePlan, data: BreastMNIST, seed: int, scanners: list[str]
) -> None:
    marker = {
        "simulated": True,
        "real_images": True,
        "note": PROVENANCE,
        "generator": "simulations.breastmnist",
        "data": {"file": str(data.path), "sha256": data.sha256},
        "seed": seed,
        "site_id": plan.site_id,
        "pool_indices": list(plan.pool),
        "test_indices": list(plan.test),
        "n_train_positive": int(data.pool_labels[list(plan.pool)].sum()),
        "n_test_positive": int(data.test_labels[list(plan.test)].sum()),
        "scanners": {
            US_PROFILES[name].scanner_group: scanners.count(name) for name in sorted(set(scanners))
        },
    }
    (site_dir / MARKER_FILE).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
