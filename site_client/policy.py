"""A site's policy: the settings a hospital controls, read from ``SITE/site.toml``."""

from __future__ import annotations

import re
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path

import tomli_w

POLICY_FILE = "site.toml"
_SITE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class PolicyError(ValueError):
    """site.toml is missing a value, holds a wrong one, or cannot be parsed."""


@dataclass(frozen=True)
class SitePolicy:
    """What the site allows.

    site_id: the name the consortium knows the site by (letters, digits, ``_.-``).
    min_cell_size: strata with fewer test cases than this are suppressed: no result for
        them leaves the site.
    """

    site_id: str
    min_cell_size: int = 5

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
    section = data.get("site")
    if not isinstance(section, dict):
        raise PolicyError(f"{path}: missing [site] table")
    known = set(SitePolicy.__dataclass_fields__)
    unknown = sorted(set(section) - known)
    if unknown:
        raise PolicyError(f"{path}: unknown key(s) in [site]: {', '.join(unknown)}")
    if "site_id" not in section:
        raise PolicyError(f"{path}: [site] needs site_id")
    try:
        return SitePolicy(**section)
    except TypeError as exc:
        raise PolicyError(f"{path}: {exc}") from exc
    except PolicyError as exc:
        raise PolicyError(f"{path}: {exc}") from exc


def write_policy(site_dir: Path, policy: SitePolicy) -> None:
    """Write ``policy`` to ``site_dir/site.toml``."""
    (site_dir / POLICY_FILE).write_text(tomli_w.dumps({"site": asdict(policy)}), encoding="utf-8")
