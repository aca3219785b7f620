"""Burned-in text: images that may carry it are quarantined by default, or stored with the
site policy's regions masked; never stored as they are."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_factory import CtSpec, ct_dataset, write_ct
from pydicom import uid
from pydicom.dataset import Dataset

from site_client.burned_in import burned_in_text_risk, mask_regions
from site_client.ingest import ingest_site
from site_client.policy import (
    BurnedInTextPolicy,
    PolicyError,
    SitePolicy,
    read_policy,
    write_policy,
)
from site_client.quarantine import StoreQuarantine
from site_client.store import SiteStore


def _dataset(**attributes: object) -> Dataset:
    ds = ct_dataset(CtSpec(rows=40, columns=48))
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize(
    ("attributes", "reason"),
    [
        ({"BurnedInAnnotation": "YES"}, "BurnedInAnnotation (0028,0301) is YES"),
        ({"SOPClassUID": uid.SecondaryCaptureImageStorage}, "Secondary Capture"),
        (
            {"SOPClassUID": uid.UltrasoundImageStorage, "BurnedInAnnotation": "NO"},
            "Ultrasound Image Storage images routinely carry burned-in text",
        ),
        ({"Modality": "US"}, "modality US"),
        ({"Modality": "CR"}, "modality CR image does not state BurnedInAnnotation NO"),
        ({"Modality": "CR", "BurnedInAnnotation": "NO"}, None),
        ({}, None),  # CT, nothing said
    ],
)
def test_which_images_may_carry_burned_in_text(
    attributes: dict[str, object], reason: str | None
) -> None:
    risk = burned_in_text_risk(_dataset(**attributes))
    if reason is None:
        assert risk is None
    else:
        assert risk is not None and reason in risk


def test_mask_regions_blanks_boxes_clipped_to_the_image() -> None:
    image = np.arange(20, dtype=np.float32).reshape(4, 5) + 3
    masked = mask_regions(image, [(0, 0, 1, 5), (2, 3, 9, 9)])
    assert (masked[0] == 3).all() and (masked[2:, 3:] == 3).all()
    assert masked[1, 0] == image[1, 0] and (image[0] != 3).any()  # the original is untouched


def _site(tmp_path: Path) -> tuple[Path, Path]:
    """Three files: a plain CT, a CT flagged BurnedInAnnotation YES, an ultrasound image."""
    dicom = tmp_path / "dicom"
    rng = np.random.default_rng(1)
    for index, (name, changes) in enumerate(
        [("ct.dcm", {}), ("flagged.dcm", {"BurnedInAnnotation": "YES"}), ("us.dcm", {})],
        start=1,
    ):
        pixels = rng.integers(900, 1300, (40, 48)).astype(np.uint16)
        path = write_ct(dicom / name, CtSpec(index=index, rows=40, columns=48, pixels=pixels))
        if name != "ct.dcm":
            ds = pydicom.dcmread(path)
            for keyword, value in changes.items():
                setattr(ds, keyword, value)
            if name == "us.dcm":
                ds.Modality = "US"
            ds.save_as(path)
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\nct.dcm,0\nflagged.dcm,1\nus.dcm,0\n")
    return dicom, labels


def test_by_default_images_that_may_carry_text_are_quarantined(tmp_path: Path) -> None:
    dicom, labels = _site(tmp_path)
    store = SiteStore.create(tmp_path / "site")
    report = ingest_site(store, dicom, labels)
    assert (report.stored, report.quarantined) == (1, 2)
    assert report.quarantine_reasons == {"may carry burned-in text": 2}
    reasons = {e.source: e.reason for e in StoreQuarantine(store).entries()}
    assert "BurnedInAnnotation (0028,0301) is YES" in reasons["flagged.dcm"]
    assert "modality US" in reasons["us.dcm"]
    assert all("[burned_in_text]" in reason for reason in reasons.values())


def test_a_site_may_store_them_with_its_text_regions_masked(tmp_path: Path) -> None:
    dicom, labels = _site(tmp_path)
    store = SiteStore.create(tmp_path / "site")
    policy = BurnedInTextPolicy(action="mask", regions=((0, 0, 6, 48), (34, 30, 40, 48)))
    write_policy(store.root, replace(store.policy, burned_in_text=policy))
    store = SiteStore.open(store.root)
    report = ingest_site(store, dicom, labels)
    assert (report.stored, report.quarantined, report.burned_in_masked) == (3, 0, 2)
    images = [store.load_image(r.case_id) for r in store.read_manifest()]
    masked = [im for im in images if (im[:6] == im.min()).all()]
    assert len(masked) == 2
    assert all((im[34:, 30:] == im.min()).all() for im in masked)


def test_burned_in_text_policy_round_trips_and_rejects_nonsense(tmp_path: Path) -> None:
    policy = SitePolicy("x", burned_in_text=BurnedInTextPolicy("mask", ((0, 0, 10, 20),)))
    write_policy(tmp_path, policy)
    assert read_policy(tmp_path) == policy
    with pytest.raises(PolicyError, match="needs regions"):
        BurnedInTextPolicy(action="mask")
    with pytest.raises(PolicyError, match=r"top < bottom"):
        BurnedInTextPolicy(action="mask", regions=((5, 0, 5, 10),))
    (tmp_path / "site.toml").write_text(
        '[site]\nsite_id = "x"\n[burned_in_text]\naction = "blur"\n'
    )
    with pytest.raises(PolicyError, match=r"site\.toml: action must be 'quarantine' or 'mask'"):
        read_policy(tmp_path)
