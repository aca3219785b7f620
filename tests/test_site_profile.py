"""What a site tells the coordinator about itself: counts of its cases, their acquisition
(modality, body part, original study years), its intake sessions and subgroups, and only
counts; a small subgroup count never leaves."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from test_ingest import EXPECTED_QUARANTINE, GOOD, SiteInput, build_input

from server.sites import SiteProfile
from site_client.deid import Deidentifier
from site_client.ingest import ingest_site
from site_client.policy import write_policy
from site_client.profile import site_profile
from site_client.store import Acquisition, SiteStore
from task.wire import PROFILE_KEYS


@pytest.fixture
def site_input(tmp_path: Path) -> SiteInput:
    return build_input(tmp_path / "input")


def _store(tmp_path: Path, min_cell_size: int) -> SiteStore:
    store = SiteStore.create(tmp_path / "site-a")
    write_policy(store.root, dataclasses.replace(store.policy, min_cell_size=min_cell_size))
    return SiteStore.open(store.root)


def test_profile_counts_intake_sessions_acquisition_and_subgroups(
    tmp_path: Path, site_input: SiteInput
) -> None:
    store = _store(tmp_path, min_cell_size=1)
    ingest_site(store, site_input.dicom_dir, site_input.labels_csv, seed=3)
    ingest_site(store, site_input.dicom_dir, site_input.labels_csv, seed=3)  # changes nothing
    profile = site_profile(store)
    assert set(profile) <= PROFILE_KEYS

    # Two sessions: the second found every good file already stored.
    quarantined = sum(EXPECTED_QUARANTINE.values())
    assert profile["intake-sessions"] == 2
    assert profile["intake-stored"] == GOOD and profile["intake-already-stored"] == GOOD
    assert profile["intake-quarantined"] == 2 * quarantined
    assert profile["intake-received"] == 2 * (GOOD + quarantined) + profile["intake-failed"]
    reasons = dict(
        zip(profile["intake-quarantine-reasons"], profile["intake-quarantine-n"], strict=True)
    )
    assert reasons == {reason: 2 * n for reason, n in EXPECTED_QUARANTINE.items()}

    # The original study year (2024), not the shifted one the stored headers carry.
    assert (profile["study-year-first"], profile["study-year-last"]) == (2024, 2024)
    assert profile["study-year-n"] == GOOD
    assert (profile["modalities"], profile["modality-n"]) == (["CT"], [GOOD])
    assert profile["body-parts"] == ["UNKNOWN"]  # the factory's files do not say

    # Subgroup counts per split; every case is in one sex stratum.
    records = store.read_manifest()
    strata = profile["subgroup-strata"]
    assert strata == ["subgroup:sex=F", "subgroup:sex=M"]
    for i, sex in enumerate(("F", "M")):
        for split, key in (("train", "subgroup-n-train"), ("test", "subgroup-n-test")):
            expected = sum(r.subgroups["sex"] == sex and r.split == split for r in records)
            assert profile[key][i] == expected
    assert profile["subgroup-suppressed"] == []


def test_the_coordinator_reads_the_profile_into_the_evidence_shape(
    tmp_path: Path, site_input: SiteInput
) -> None:
    store = _store(tmp_path, min_cell_size=1)
    ingest_site(store, site_input.dicom_dir, site_input.labels_csv, seed=3)
    site = SiteProfile.from_record(7, site_profile(store))
    assert site.acquisition == {
        "modalities": {"CT": GOOD},
        "body_parts": {"UNKNOWN": GOOD},
        "study_years": {"first": 2024, "last": 2024, "n": GOOD},
    }
    assert set(site.subgroups["counts"]["sex"]) == {"F", "M"}
    assert site.intake is not None and site.intake["stored"] == GOOD
    assert site.deidentification is not None
    method = Deidentifier(store.secret).method()
    assert site.deidentification["table_sha256"] == method["table_sha256"]


def test_small_subgroups_are_named_not_counted(tmp_path: Path, site_input: SiteInput) -> None:
    store = _store(tmp_path, min_cell_size=5)  # 4 women and 4 men, some in test
    ingest_site(store, site_input.dicom_dir, site_input.labels_csv, seed=3)
    profile = site_profile(store)
    assert profile["subgroup-strata"] == []
    assert profile["subgroup-suppressed"] == ["subgroup:sex=F", "subgroup:sex=M"]
    site = SiteProfile.from_record(7, profile)
    assert site.subgroups == {"counts": {}, "suppressed": ["sex=F", "sex=M"]}


def test_an_empty_store_and_a_manifest_from_before_acquisition_columns(tmp_path: Path) -> None:
    store = _store(tmp_path, min_cell_size=5)
    profile = site_profile(store)
    assert profile["intake-sessions"] == 0 and "study-year-first" not in profile
    assert Acquisition.from_row({"case_id": "c"}) == Acquisition()
    assert Acquisition.from_row({"modality": "MR", "body_part": "", "study_year": "2019"}) == (
        Acquisition("MR", "", 2019)
    )
