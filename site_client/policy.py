"""A site's policy: the settings a hospital controls, read from ``SITE/site.toml``.

```toml
[site]
site_id = "site-a"
min_cell_size = 5

[privacy]            # optional
max_epsilon = 10.0   # the most privacy loss the site accepts, over all runs (no entry: no ceiling)
delta = 1e-4         # the site's delta (default: 0.1 / number of training cases)

[storage]            # optional
key_file = "/secure/site-a.key"   # the store's encryption key (default: SITE/store.key)

[burned_in_text]     # optional: images that may carry text in their pixels
action = "mask"      # "quarantine" (default) or "mask"
regions = [[0, 0, 40, 512]]   # with "mask": [top, left, bottom, right] pixel boxes blanked

[receiver]           # optional: the DICOM receiver (`medfed site receive`)
ae_title = "MEDFED"  # the receiver's own AE title (default "MEDFED")
port = 11112         # default 11112
bind = "127.0.0.1"   # default: this machine only; "0.0.0.0" listens on the network
allowed_ae_titles = ["PACS1", "CT_ROOM2"]   # who may send; empty (default): nobody

[evaluation]         # optional: which labels.csv subgroup columns results may be stratified by
subgroup_columns = ["sex", "age"]   # default; [] sends no subgroup results
banded_columns = ["age"]            # numeric columns reported in bands (default: age)
band_width = 10                     # band width in the column's unit (default: 10 years)

[coordinator]        # optional: the consortium's coordinator (written by `medfed site join`)
signing_public_key = "kit/model-signing.pub"   # refuse any model not signed with its key

[delivery]           # optional: results for the hospital's systems (`medfed site deliver`)
uncertainty_band = 0.05   # scores this close to the operating threshold are equivocal
case_id_system = "https://hospital.example/id/medfed-case"   # default urn:medfed:<site>:case-id
patient_id_system = "https://hospital.example/id/mrn"        # needed for the link file's patient_id
accession_system = "https://hospital.example/id/accession"   # for its accession_number
```
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import tomli_w

POLICY_FILE = "site.toml"
_SITE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class PolicyError(ValueError):
    """site.toml is missing a value, holds a wrong one, or cannot be parsed."""


@dataclass(frozen=True)
class PrivacyPolicy:
    """The site's privacy ceiling.

    max_epsilon: the largest epsilon the site's data may ever have spent, over every run
        (the privacy ledger composes them). None: no ceiling. With a ceiling the site
        trains only with DP-SGD at the site, never without DP or with central DP.
    delta: the site's delta; None: 0.1 / number of training cases (below 1/n, as DP needs).
    """

    max_epsilon: float | None = None
    delta: float | None = None

    def __post_init__(self) -> None:
        if self.max_epsilon is not None and not (
            self.max_epsilon > 0 and math.isfinite(self.max_epsilon)
        ):
            raise PolicyError(f"max_epsilon must be positive and finite, got {self.max_epsilon}")
        if self.delta is not None and not 0 < self.delta < 1:
            raise PolicyError(f"delta must be in (0, 1), got {self.delta}")

    def delta_for(self, n_train: int) -> float:
        """The delta to account at for a training split of ``n_train`` cases."""
        return self.delta if self.delta is not None else DEFAULT_DELTA_SCALE / max(n_train, 1)


@dataclass(frozen=True)
class BurnedInTextPolicy:
    """What ingest does with images that may carry burned-in text
    (`site_client.burned_in.burned_in_text_risk`).

    action: "quarantine" (default) or "mask": store them with ``regions`` blanked.
    regions: [top, left, bottom, right] pixel boxes (bottom and right exclusive) where the
        site's devices put their text; required with "mask".
    """

    action: str = "quarantine"
    regions: tuple[tuple[int, int, int, int], ...] = ()

    def __post_init__(self) -> None:
        if self.action not in ("quarantine", "mask"):
            raise PolicyError(f"action must be 'quarantine' or 'mask', got {self.action!r}")
        boxes = tuple(tuple(int(v) for v in box) for box in self.regions)
        if any(len(box) != 4 or box[0] >= box[2] or box[1] >= box[3] for box in boxes):
            raise PolicyError(
                "regions must be [top, left, bottom, right] with top < bottom, left < right"
            )
        if self.action == "mask" and not boxes:
            raise PolicyError("action 'mask' needs regions to mask")
        object.__setattr__(self, "regions", boxes)


@dataclass(frozen=True)
class StoragePolicy:
    """Where the store's encryption key lives (`site_client.encryption`).

    key_file: path of the key file (relative paths are relative to the site directory);
        None: ``store.key`` in the site directory. The environment variable
        MEDFED_STORE_KEY, when set, takes precedence.
    """

    key_file: str | None = None

    def key_path(self, site_dir: Path) -> Path:
        """The key file's path for the site directory ``site_dir``."""
        return site_dir / (self.key_file or DEFAULT_KEY_FILE)


DEFAULT_KEY_FILE = "store.key"


@dataclass(frozen=True)
class CoordinatorPolicy:
    """What the site requires of the coordinator.

    signing_public_key: the coordinator's Ed25519 model-signing public key (PEM; a path
        relative to the site directory); every model the site receives must carry a valid
        signature made with it (`task.signing`), or the site refuses the message. None: models
        are not checked (a simulation on one machine).
    """

    signing_public_key: str | None = None

    def signing_key_path(self, site_dir: Path) -> Path | None:
        """The public key's path for the site directory ``site_dir`` (None if unset)."""
        return None if self.signing_public_key is None else site_dir / self.signing_public_key


#: What an AE title may hold: 1-16 characters of printable ASCII, no backslash (PS3.5 6.2),
#: without leading or trailing spaces (they are not significant).
_AE_TITLE = re.compile(r"^[!-\[\]-~]([ -\[\]-~]{0,14}[!-\[\]-~])?$")


def check_ae_title(title: str, what: str = "AE title") -> str:
    """``title`` when it is a valid AE title; `PolicyError` naming ``what`` otherwise."""
    if not isinstance(title, str) or not _AE_TITLE.match(title):
        raise PolicyError(
            f"{what} {title!r} must be 1-16 printable ASCII characters, no backslash, "
            "no leading or trailing space"
        )
    return title


@dataclass(frozen=True)
class ReceiverPolicy:
    """The DICOM receiver (`site_client.receiver`, ``medfed site receive``).

    ae_title: the receiver's own AE title, which senders address.
    port: the TCP port it listens on.
    bind: the address it listens on: "127.0.0.1" (default) accepts connections from this
        machine only; "0.0.0.0" listens on every network interface.
    allowed_ae_titles: the calling AE titles that may send (an allow-list); associations
        from any other are rejected. Empty (the default) means nobody: the receiver
        refuses to start, never accepts all.
    """

    ae_title: str = "MEDFED"
    port: int = 11112
    bind: str = "127.0.0.1"
    allowed_ae_titles: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_ae_title(self.ae_title)
        if isinstance(self.port, bool) or not isinstance(self.port, int):
            raise PolicyError(f"port must be an integer, got {self.port!r}")
        if not 1 <= self.port <= 65535:
            raise PolicyError(f"port must be in 1-65535, got {self.port}")
        if not isinstance(self.bind, str) or not self.bind.strip():
            raise PolicyError(f"bind must be an address such as 127.0.0.1, got {self.bind!r}")
        if isinstance(self.allowed_ae_titles, str):
            raise PolicyError("allowed_ae_titles must be a list of AE titles")
        titles = tuple(self.allowed_ae_titles)
        for title in titles:
            check_ae_title(title, "allowed AE title")
        object.__setattr__(self, "allowed_ae_titles", titles)


@dataclass(frozen=True)
class EvaluationPolicy:
    """Which subgroup results may leave the site (`site_client.evaluation`).

    subgroup_columns: labels.csv subgroup columns that test results may be stratified by.
        Only these: a column added for the site's own use never reaches the coordinator,
        not even its name. Each stratum is still subject to ``min_cell_size``.
    banded_columns: numeric columns among them reported in bands of ``band_width`` (an
        age of 63 is reported as the stratum ``60-69``), never as raw values.
    band_width: the width of a band, in the column's own unit.
    """

    subgroup_columns: tuple[str, ...] = ("sex", "age")
    banded_columns: tuple[str, ...] = ("age",)
    band_width: int = 10

    def __post_init__(self) -> None:
        for name in ("subgroup_columns", "banded_columns"):
            value = getattr(self, name)
            if isinstance(value, str) or not all(isinstance(c, str) for c in value):
                raise PolicyError(f"{name} must be a list of column names")
            object.__setattr__(self, name, tuple(value))
        if isinstance(self.band_width, bool) or not isinstance(self.band_width, int):
            raise PolicyError(f"band_width must be an integer, got {self.band_width!r}")
        if self.band_width < 1:
            raise PolicyError(f"band_width must be >= 1, got {self.band_width}")


@dataclass(frozen=True)
class DeliveryPolicy:
    """How the site delivers results to the hospital's EHR and PACS (`site_client.delivery`).

    uncertainty_band: a score closer than this to the operating threshold is reported as
        equivocal (review advised); ``medfed site deliver --uncertainty-band`` overrides it.
    case_id_system: the FHIR identifier system (a URI) of medfed's pseudonymous case ids at
        this site; None: ``urn:medfed:<site_id>:case-id``.
    patient_id_system, accession_system: the hospital's identifier systems (URIs) for the
        patient ids and accession numbers of a link file; needed only when it has them.
    """

    uncertainty_band: float = 0.05
    case_id_system: str | None = None
    patient_id_system: str | None = None
    accession_system: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.uncertainty_band, bool) or not isinstance(
            self.uncertainty_band, int | float
        ):
            raise PolicyError(f"uncertainty_band must be a number, got {self.uncertainty_band!r}")
        if not 0 <= self.uncertainty_band < 0.5:
            raise PolicyError(f"uncertainty_band must be in [0, 0.5), got {self.uncertainty_band}")
        for name in ("case_id_system", "patient_id_system", "accession_system"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not _URI.match(value)):
                raise PolicyError(f"{name} must be an absolute URI (scheme:...), got {value!r}")


#: An absolute URI without spaces, as FHIR identifier systems are.
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$")

#: Default delta = DEFAULT_DELTA_SCALE / n_train.
DEFAULT_DELTA_SCALE = 0.1


@dataclass(frozen=True)
class SitePolicy:
    """What the site allows.

    site_id: the name the consortium knows the site by (letters, digits, ``_.-``).
    min_cell_size: strata with fewer test cases than this are suppressed: no result for
        them leaves the site.
    privacy: the privacy ceiling (`PrivacyPolicy`, the ``[privacy]`` table).
    burned_in_text: images that may carry burned-in text (the ``[burned_in_text]`` table).
    storage: where the store's encryption key is (the ``[storage]`` table).
    receiver: the DICOM receiver's settings (the ``[receiver]`` table).
    evaluation: the subgroup results that may leave the site (the ``[evaluation]`` table).
    coordinator: what the site requires of the coordinator (the ``[coordinator]`` table).
    delivery: how results reach the hospital's systems (the ``[delivery]`` table).
    """

    site_id: str
    min_cell_size: int = 5
    privacy: PrivacyPolicy = field(default_factory=PrivacyPolicy)
    burned_in_text: BurnedInTextPolicy = field(default_factory=BurnedInTextPolicy)
    storage: StoragePolicy = field(default_factory=StoragePolicy)
    receiver: ReceiverPolicy = field(default_factory=ReceiverPolicy)
    evaluation: EvaluationPolicy = field(default_factory=EvaluationPolicy)
    coordinator: CoordinatorPolicy = field(default_factory=CoordinatorPolicy)
    delivery: DeliveryPolicy = field(default_factory=DeliveryPolicy)

    def __post_init__(self) -> None:
        if not _SITE_ID.match(self.site_id):
            raise PolicyError(
                f"site_id {self.site_id!r} must be 1-64 letters, digits, '_', '.' or '-'"
            )
        if self.min_cell_size < 1:
            raise PolicyError(f"min_cell_size must be >= 1, got {self.min_cell_size}")


def read_policy(site_dir: Path) -> SitePolicy:
    """Read ``site_dir/site.toml``; raises `PolicyError` with the file and field at fault."""
    path = site_dir / POLICY_FILE
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise PolicyError(f"{path}: no site policy (is {site_dir} a site store?)") from exc
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{path}: not valid TOML ({exc})") from exc
    unknown_tables = sorted(set(data) - {"site", *_TABLES})
    if unknown_tables:
        raise PolicyError(f"{path}: unknown table(s): {', '.join(unknown_tables)}")
    section = _table(data, "site", path, required=True)
    _check_keys(section, SitePolicy, "site", path, exclude=frozenset(_TABLES))
    if "site_id" not in section:
        raise PolicyError(f"{path}: [site] needs site_id")
    try:
        tables = {}
        for name, cls in _TABLES.items():
            table = _table(data, name, path, required=False)
            _check_keys(table, cls, name, path)
            tables[name] = cls(**table)
        return SitePolicy(**section, **tables)
    except TypeError as exc:
        raise PolicyError(f"{path}: {exc}") from exc
    except PolicyError as exc:
        raise PolicyError(f"{path}: {exc}") from exc


#: The optional tables of site.toml beside [site], and what each holds.
_TABLES: dict[str, type] = {
    "privacy": PrivacyPolicy,
    "burned_in_text": BurnedInTextPolicy,
    "storage": StoragePolicy,
    "receiver": ReceiverPolicy,
    "evaluation": EvaluationPolicy,
    "coordinator": CoordinatorPolicy,
    "delivery": DeliveryPolicy,
}


def _table(data: dict, name: str, path: Path, required: bool) -> dict:
    section = data.get(name, None if required else {})
    if not isinstance(section, dict):
        raise PolicyError(f"{path}: missing [{name}] table")
    return section


def _check_keys(
    section: dict, cls: type, name: str, path: Path, exclude: frozenset[str] = frozenset()
) -> None:
    unknown = sorted((set(section) - set(cls.__dataclass_fields__)) | (set(section) & exclude))
    if unknown:
        raise PolicyError(f"{path}: unknown key(s) in [{name}]: {', '.join(unknown)}")


def write_policy(site_dir: Path, policy: SitePolicy) -> None:
    """Write ``policy`` to ``site_dir/site.toml`` (unset and default tables left out)."""
    document: dict = {"site": {k: v for k, v in asdict(policy).items() if k not in _TABLES}}
    for name in _TABLES:
        values = getattr(policy, name)
        if values == type(values)():
            continue
        document[name] = {
            k: [list(box) for box in v] if k == "regions" else v
            for k, v in asdict(values).items()
            if v is not None
        }
    (site_dir / POLICY_FILE).write_text(tomli_w.dumps(document), encoding="utf-8")
