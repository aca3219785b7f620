"""Folders a site builds whole or not at all: the review queue, a delivery of results."""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def staged_folder(target: Path, mode: int = 0o777) -> Iterator[Path]:
    """A new hidden folder beside ``target`` (permissions ``mode``) to build ``target`` in.

    When the block ends without an error, the folder becomes ``target``, replacing any
    folder there (removed after the swap); on an error it is removed and ``target`` is
    left as it was. A reader never sees a half-built ``target``.
    """
    staging = target.with_name(f".{target.name}.partial-{secrets.token_hex(4)}")
    staging.mkdir(mode=mode, parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = target.with_name(f".{target.name}.old-{secrets.token_hex(4)}")
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)
