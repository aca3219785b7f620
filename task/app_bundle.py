"""medfed's deployment app as a Flower app bundle (FAB): what the coordinator submits and
what each site approves by its SHA-256.

The app (``task/deploy_app``) holds only thin entry modules that call the installed medfed
(`server.server_app`, `site_client.client_app`); Flower builds its FAB deterministically,
so a site can build it from its own installed medfed and compare hashes.
"""

from __future__ import annotations

import hashlib
import io
import tomllib
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

APP_DIR = Path(__file__).resolve().parent / "deploy_app"


class AppBundleError(ValueError):
    """A file or folder that is not a Flower app (one line)."""


@dataclass(frozen=True)
class AppBundle:
    """A FAB: its bytes and SHA-256 (the hash Flower records as the run's fab_hash)."""

    content: bytes
    sha256: str

    @classmethod
    def of(cls, content: bytes) -> AppBundle:
        return cls(content, hashlib.sha256(content).hexdigest())

    def files(self) -> dict[str, int]:
        """Path -> size in bytes of every file in the bundle."""
        with zipfile.ZipFile(io.BytesIO(self.content)) as archive:
            return {info.filename: info.file_size for info in archive.infolist()}

    def project(self) -> dict[str, Any]:
        """The bundle's pyproject.toml."""
        with zipfile.ZipFile(io.BytesIO(self.content)) as archive:
            return tomllib.loads(archive.read("pyproject.toml").decode("utf-8"))


def build_app_bundle(app: Path = APP_DIR) -> AppBundle:
    """The FAB of ``app``: a project folder (built here) or a ``.fab`` file (read)."""
    from flwr.cli.build import build_fab_from_disk

    if app.is_file():
        content = app.read_bytes()
        if not zipfile.is_zipfile(io.BytesIO(content)):
            raise AppBundleError(f"{app}: not a Flower app bundle (.fab)")
        return AppBundle.of(content)
    if not (app / "pyproject.toml").is_file():
        raise AppBundleError(f"{app}: neither a .fab file nor a folder with pyproject.toml")
    try:
        with warnings.catch_warnings():  # pathspec's deprecation notice, inside Flower
            warnings.simplefilter("ignore", DeprecationWarning)
            return AppBundle.of(build_fab_from_disk(app))
    except Exception as exc:  # Flower raises typer/click exits and ValueErrors alike
        raise AppBundleError(f"{app}: cannot build a Flower app from it ({exc})") from exc
