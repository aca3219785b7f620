"""The site store: a site's de-identified cases on disk.

Layout of a site directory ``SITE/``::

    site.toml                     the site's policy (site id, minimum cell size, ...)
    secret.key                    32-byte key (hex, 0600) for pseudonyms, UIDs, DP noise seeds
    store.key                     the store's encryption key (hex, 0600; see below)
    store/key-check.enc           encrypted at creation: recognises a wrong key at opening
    store/manifest.csv.enc        one row per case (MANIFEST_COLUMNS, then subgroup columns)
    store/cases/<case>.npy.enc    decoded image, float32, modality units, MONOCHROME2 polarity
    store/masks/<case>.npy.enc    lesion mask, uint8 0/1, same shape (when labels.csv names one)
    store/quarantine/<n>.dcm.enc  files that could not be used, as they arrived
    store/quarantine.csv.enc      each quarantined file's source, reason and SHA-256
    store/received/<case>.csv.enc a received case not labelled yet (`site_client.received`)
    intake-reports/*.json         one report per ingest or receive session: counts only

Everything under ``store/`` is encrypted with AES-256-GCM (`site_client.encryption`); the
key comes from MEDFED_STORE_KEY or from the key file (``[storage] key_file`` in site.toml,
default ``store.key``). The manifest never holds original paths, names or UIDs: a case is
known by its pseudonymous id (keyed HMAC of its SOP Instance UID).
"""

from __future__ import annotations

import csv
import io
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from site_client.encryption import (
    KEY_CHECK,
    StoreCipher,
    StoreCryptoError,
    create_store_key,
    load_store_key,
)
from site_client.policy import POLICY_FILE, SitePolicy, read_policy, write_policy

SECRET_FILE = "secret.key"

MIN_SECRET_BYTES = 16


class SiteStoreError(RuntimeError):
    """The site directory is not a usable site store."""


def write_secret_file(path: Path, secret: bytes | None = None) -> bytes:
    """Create ``path`` (mode 0600, never overwriting) holding ``secret`` as hex; default:
    32 random bytes. Returns the secret."""
    secret = secrets.token_bytes(32) if secret is None else secret
    if len(secret) < MIN_SECRET_BYTES:
        raise SiteStoreError(f"{path}: a secret needs at least {MIN_SECRET_BYTES} bytes")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret.hex())
    return secret


def read_secret_file(path: Path) -> bytes:
    """The secret held (as hex) in ``path``; `SiteStoreError` naming the file otherwise."""
    try:
        secret = bytes.fromhex(path.read_text().strip())
    except FileNotFoundError as exc:
        raise SiteStoreError(f"{path}: secret file is missing") from exc
    except (OSError, ValueError) as exc:
        raise SiteStoreError(f"{path}: secret file must hold hex") from exc
    if len(secret) < MIN_SECRET_BYTES:
        raise SiteStoreError(f"{path}: secret is shorter than {MIN_SECRET_BYTES} bytes")
    return secret


@dataclass(frozen=True)
class Acquisition:
    """How a case was acquired, beyond its scanner: its modality and body part (DICOM code
    strings), the year of its study, the original year (the stored header's dates are
    shifted by de-identification), and its pixel spacing in mm (DICOM PixelSpacing: the
    distance between rows, then between columns), which segmentation needs for distances.
    Empty, or None for the year and spacing, where the header is silent."""

    modality: str = ""
    body_part: str = ""
    study_year: int | None = None
    pixel_spacing: tuple[float, float] | None = None

    #: Their columns in the manifest and the received index, in `to_columns` order.
    COLUMNS: ClassVar[tuple[str, ...]] = ("modality", "body_part", "study_year", "pixel_spacing")

    def to_columns(self) -> list[str]:
        """The values of `COLUMNS` as CSV cells (the spacing as DICOM writes it, ``r\\c``)."""
        year = "" if self.study_year is None else str(self.study_year)
        spacing = "" if self.pixel_spacing is None else "\\".join(map(repr, self.pixel_spacing))
        return [self.modality, self.body_part, year, spacing]

    @classmethod
    def from_row(cls, row: Mapping[str, str | None]) -> Acquisition:
        """From a CSV row holding `COLUMNS` (a row written before they existed: empty)."""
        year = (row.get("study_year") or "").strip()
        spacing = (row.get("pixel_spacing") or "").strip()
        row_mm, _, column_mm = spacing.partition("\\")
        return cls(
            row.get("modality") or "",
            row.get("body_part") or "",
            int(year) if year else None,
            (float(row_mm), float(column_mm)) if spacing else None,
        )


MANIFEST_COLUMNS = (
    "case_id",
    "label",
    "split",
    "manufacturer",
    "model",
    "rows",
    "columns",
    "has_mask",
    *Acquisition.COLUMNS,
)


@dataclass(frozen=True)
class CaseRecord:
    """One de-identified case in the manifest."""

    case_id: str
    label: int
    split: str
    manufacturer: str
    model: str
    rows: int
    columns: int
    has_mask: bool = False
    subgroups: dict[str, str] = field(default_factory=dict)
    acquisition: Acquisition = field(default_factory=Acquisition)

    @property
    def scanner(self) -> str:
        """The scanner group: ``"<Manufacturer> <ManufacturerModelName>"``."""
        return f"{self.manufacturer} {self.model}".strip()


class SiteStore:
    """A site directory (see the module docstring). Open one with `create` or `open`."""

    def __init__(self, root: Path, policy: SitePolicy, secret: bytes, cipher: StoreCipher) -> None:
        self.root = root
        self.policy = policy
        self.secret = secret
        self.cipher = cipher

    @property
    def site_id(self) -> str:
        """The consortium's name for this site."""
        return self.policy.site_id

    @property
    def store_dir(self) -> Path:
        return self.root / "store"

    @property
    def manifest_path(self) -> Path:
        return self.store_dir / "manifest.csv.enc"

    @property
    def cases_dir(self) -> Path:
        return self.store_dir / "cases"

    @property
    def masks_dir(self) -> Path:
        return self.store_dir / "masks"

    @property
    def intake_reports_dir(self) -> Path:
        return self.root / "intake-reports"

    @classmethod
    def create(
        cls, root: Path, site_id: str | None = None, secret: bytes | None = None
    ) -> SiteStore:
        """Open the store at ``root``, creating it (policy, secret, folders) if it is new.

        ``site_id`` defaults to the folder name; for an existing store it must match.
        ``secret`` (at least 16 bytes) is the new store's key; default: 32 random bytes,
        which is what a real site must use. Simulations pass a key derived from their seed
        so that the same seed gives the same pseudonyms, and so the same split.
        """
        if (root / POLICY_FILE).exists():
            store = cls.open(root)
            if site_id is not None and site_id != store.site_id:
                raise SiteStoreError(
                    f"{root}: store belongs to site {store.site_id!r}, not {site_id!r}"
                )
            return store
        root.mkdir(parents=True, exist_ok=True)
        policy = SitePolicy(site_id=site_id or root.resolve().name)
        write_policy(root, policy)
        secret_path = root / SECRET_FILE
        if not secret_path.exists():
            write_secret_file(secret_path, secret)
        create_store_key(policy.storage.key_path(root))
        store = cls._open(root)
        store.write_file(KEY_CHECK, b"medfed store key check")
        for folder in (store.cases_dir, store.masks_dir):
            folder.mkdir(parents=True, exist_ok=True)
        return store

    @classmethod
    def open(cls, root: Path) -> SiteStore:
        """Open an existing store; raises `SiteStoreError` naming what is missing."""
        store = cls._open(root)
        try:
            store.read_file(KEY_CHECK)
        except FileNotFoundError as exc:
            raise SiteStoreError(f"{root}: store/{KEY_CHECK}.enc is missing") from exc
        except StoreCryptoError as exc:
            raise SiteStoreError(
                f"{root}: wrong store key (from {store.cipher.source}): the store cannot be "
                "decrypted with it"
            ) from exc
        return store

    @classmethod
    def _open(cls, root: Path) -> SiteStore:
        if not root.is_dir():
            raise SiteStoreError(f"{root}: no such site directory")
        policy = read_policy(root)
        try:
            key, source = load_store_key(policy.storage.key_path(root))
            cipher = StoreCipher(key, source)
        except StoreCryptoError as exc:
            raise SiteStoreError(str(exc)) from exc
        return cls(root, policy, read_secret_file(root / SECRET_FILE), cipher)

    def has_file(self, name: str) -> bool:
        """Whether the store holds ``store/<name>.enc``."""
        return (self.store_dir / f"{name}.enc").exists()

    def write_file(self, name: str, data: bytes) -> None:
        """Encrypt ``data`` into ``store/<name>.enc``, atomically."""
        path = self.store_dir / f"{name}.enc"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(self.cipher.encrypt(data, name))
        tmp.replace(path)

    def remove_file(self, name: str) -> None:
        """Delete ``store/<name>.enc`` (nothing happens when it is absent)."""
        (self.store_dir / f"{name}.enc").unlink(missing_ok=True)

    def file_names(self, folder: str) -> list[str]:
        """The names (as `read_file` takes them) of the files in ``store/<folder>/``, sorted."""
        base = self.store_dir / folder
        return sorted(f"{folder}/{p.name.removesuffix('.enc')}" for p in base.glob("*.enc"))

    def read_file(self, name: str) -> bytes:
        """The decrypted content of ``store/<name>.enc``; `StoreCryptoError` when it fails
        authentication."""
        return self.cipher.decrypt((self.store_dir / f"{name}.enc").read_bytes(), name)

    def read_manifest(self) -> list[CaseRecord]:
        """All cases in the store, in manifest order (empty for a new store)."""
        if not self.manifest_path.exists():
            return []
        try:
            text = self.read_file("manifest.csv").decode("utf-8")
        except StoreCryptoError as exc:
            raise SiteStoreError(f"site {self.site_id}: the manifest {exc}") from exc
        reader = csv.DictReader(io.StringIO(text, newline=""))
        subgroup_columns = [c for c in reader.fieldnames or [] if c not in MANIFEST_COLUMNS]
        return [
            CaseRecord(
                case_id=row["case_id"],
                label=int(row["label"]),
                split=row["split"],
                manufacturer=row["manufacturer"],
                model=row["model"],
                rows=int(row["rows"]),
                columns=int(row["columns"]),
                has_mask=row["has_mask"] == "1",
                subgroups={c: row[c] for c in subgroup_columns},
                acquisition=Acquisition.from_row(row),
            )
            for row in reader
        ]

    def write_manifest(self, records: list[CaseRecord]) -> None:
        """Replace the manifest with ``records`` (written atomically, encrypted; left as it
        is when its content would not change)."""
        subgroup_columns = sorted({c for r in records for c in r.subgroups})
        buffer = io.StringIO(newline="")
        writer = csv.writer(buffer)
        writer.writerow([*MANIFEST_COLUMNS, *subgroup_columns])
        for r in records:
            writer.writerow(
                [
                    r.case_id,
                    r.label,
                    r.split,
                    r.manufacturer,
                    r.model,
                    r.rows,
                    r.columns,
                    int(r.has_mask),
                    *r.acquisition.to_columns(),
                    *(r.subgroups.get(c, "") for c in subgroup_columns),
                ]
            )
        content = buffer.getvalue().encode("utf-8")
        if self.manifest_path.exists() and self.read_file("manifest.csv") == content:
            return  # unchanged: keep the file (a new nonce would change every byte)
        self.write_file("manifest.csv", content)

    def save_case(self, case_id: str, image: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Store a decoded image (2-D, float32) and optionally its mask (uint8 0/1)."""
        self.write_file(f"cases/{case_id}.npy", _npy(image.astype(np.float32, copy=False)))
        if mask is not None:
            self.write_file(f"masks/{case_id}.npy", _npy((mask > 0).astype(np.uint8)))

    def load_image(self, case_id: str) -> np.ndarray:
        """The stored image of ``case_id`` (float32, 2-D)."""
        return self._load(f"cases/{case_id}.npy", case_id)

    def load_mask(self, case_id: str) -> np.ndarray:
        """The stored lesion mask of ``case_id`` (uint8 0/1, 2-D)."""
        return self._load(f"masks/{case_id}.npy", case_id)

    def _load(self, name: str, case_id: str) -> np.ndarray:
        path = self.store_dir / f"{name}.enc"
        try:
            return np.load(io.BytesIO(self.read_file(name)), allow_pickle=False)
        except StoreCryptoError as exc:
            raise SiteStoreError(
                f"site {self.site_id}: case {case_id}: {path} fails authentication (altered "
                "or corrupted); the store is damaged: never used, ingest the site again"
            ) from exc
        except (OSError, ValueError) as exc:
            raise SiteStoreError(
                f"site {self.site_id}: case {case_id} is in the manifest but {path} is missing "
                "or unreadable; the store is damaged (ingest the site again)"
            ) from exc


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()
