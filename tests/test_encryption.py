"""Encryption at rest: the store's files are AES-GCM sealed; a wrong key, a key others can
read, an altered or swapped file are each a clear error, never silently used."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from site_client.encryption import MAGIC, STORE_KEY_ENV
from site_client.policy import StoragePolicy, write_policy
from site_client.store import CaseRecord, SiteStore, SiteStoreError

OTHER_KEY = "ab" * 32


def _store_with_two_cases(root: Path) -> tuple[SiteStore, np.ndarray]:
    store = SiteStore.create(root)
    image = np.arange(48, dtype=np.float32).reshape(6, 8) * 7.5
    for case_id in ("case-a", "case-b"):
        store.save_case(case_id, image + (case_id == "case-b"), np.eye(6, 8, dtype=np.uint8))
    store.write_manifest(
        [CaseRecord(c, 1, "train", "ACME", "Scan 1", 6, 8, True) for c in ("case-a", "case-b")]
    )
    return store, image


def test_store_files_are_sealed_and_read_back(tmp_path: Path) -> None:
    store, image = _store_with_two_cases(tmp_path / "site")
    raw = (store.cases_dir / "case-a.npy.enc").read_bytes()
    assert raw.startswith(MAGIC) and image.tobytes() not in raw
    assert b"ACME" not in store.manifest_path.read_bytes()
    assert (tmp_path / "site" / "store.key").stat().st_mode & 0o077 == 0
    reopened = SiteStore.open(store.root)
    np.testing.assert_array_equal(reopened.load_image("case-a"), image)
    assert reopened.load_mask("case-a").sum() == 6
    assert [r.case_id for r in reopened.read_manifest()] == ["case-a", "case-b"]


def test_a_wrong_key_is_named_at_opening(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, _ = _store_with_two_cases(tmp_path / "site")
    monkeypatch.setenv(STORE_KEY_ENV, OTHER_KEY)
    with pytest.raises(SiteStoreError, match=r"wrong store key \(from \$MEDFED_STORE_KEY\)"):
        SiteStore.open(store.root)


def test_a_key_file_others_can_read_or_a_missing_one_is_refused(tmp_path: Path) -> None:
    store, _ = _store_with_two_cases(tmp_path / "site")
    key = store.root / "store.key"
    key.chmod(0o644)
    with pytest.raises(SiteStoreError, match=r"accessible to others .* chmod 600"):
        SiteStore.open(store.root)
    key.unlink()
    with pytest.raises(SiteStoreError, match="store key file missing"):
        SiteStore.open(store.root)


def test_an_altered_or_swapped_case_file_is_detected(tmp_path: Path) -> None:
    store, _ = _store_with_two_cases(tmp_path / "site")
    path = store.cases_dir / "case-a.npy.enc"
    blob = bytearray(path.read_bytes())
    blob[-20] ^= 0x01
    path.write_bytes(bytes(blob))
    with pytest.raises(SiteStoreError, match=r"case-a: .* fails authentication"):
        store.load_image("case-a")
    # A genuine file under another case's name is detected too (its name is sealed in).
    shutil.copy(store.cases_dir / "case-b.npy.enc", path)
    with pytest.raises(SiteStoreError, match="fails authentication"):
        store.load_image("case-a")
    manifest = bytearray(store.manifest_path.read_bytes())
    manifest[len(MAGIC) + 20] ^= 0x01
    store.manifest_path.write_bytes(bytes(manifest))
    with pytest.raises(SiteStoreError, match=r"the manifest .* fails authentication"):
        store.read_manifest()


def test_the_key_may_come_from_the_environment_or_a_file_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(STORE_KEY_ENV, OTHER_KEY)
    store, image = _store_with_two_cases(tmp_path / "site")
    assert not (store.root / "store.key").exists()
    np.testing.assert_array_equal(SiteStore.open(store.root).load_image("case-a"), image)

    key_file = tmp_path / "vault" / "site.key"
    key_file.parent.mkdir()
    key_file.write_text(OTHER_KEY)
    key_file.chmod(0o600)
    write_policy(store.root, replace(store.policy, storage=StoragePolicy(str(key_file))))
    monkeypatch.delenv(STORE_KEY_ENV)
    np.testing.assert_array_equal(SiteStore.open(store.root).load_image("case-a"), image)
