"""Burned-in annotations: text in the pixels, which no header de-identification removes.

`burned_in_text_risk` says why an image may carry burned-in text: its BurnedInAnnotation
(0028,0301) is YES; it is a secondary capture or an ultrasound image (classes and
modalities that routinely carry patient names and dates in the pixels), whatever its
header claims; or it is a radiograph (CR, DX) that does not state BurnedInAnnotation NO.
By default such images are quarantined (`site_client.policy.BurnedInTextPolicy`); a site
may instead allow them with listed pixel regions masked (`mask_regions`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydicom import uid
from pydicom.dataset import Dataset

#: SOP classes whose images routinely carry burned-in text.
TEXT_BEARING_SOP_CLASSES = frozenset(
    {
        uid.SecondaryCaptureImageStorage,
        uid.MultiFrameSingleBitSecondaryCaptureImageStorage,
        uid.MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
        uid.MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
        uid.MultiFrameTrueColorSecondaryCaptureImageStorage,
        uid.UltrasoundImageStorage,
        uid.UltrasoundMultiFrameImageStorage,
        uid.EnhancedUSVolumeStorage,
    }
)
#: Modalities whose images routinely carry burned-in text.
TEXT_BEARING_MODALITIES = frozenset({"US", "SC", "OT", "XC", "DOC"})
#: Modalities whose images often carry burned-in labels unless the header says otherwise.
LABELLED_MODALITIES = frozenset({"CR", "DX", "MG", "RF", "XA", "PX", "IO"})


def burned_in_text_risk(ds: Dataset) -> str | None:
    """Why ``ds``'s pixels may hold burned-in text, in one line; None if nothing says so."""
    stated = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if stated == "YES":
        return "BurnedInAnnotation (0028,0301) is YES"
    sop_class = str(ds.get("SOPClassUID", "") or "")
    if sop_class in TEXT_BEARING_SOP_CLASSES:
        return f"{uid.UID(sop_class).name} images routinely carry burned-in text"
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if modality in TEXT_BEARING_MODALITIES:
        return f"modality {modality} images routinely carry burned-in text"
    if modality in LABELLED_MODALITIES and stated != "NO":
        return f"modality {modality} image does not state BurnedInAnnotation NO"
    return None


def mask_regions(image: np.ndarray, regions: Sequence[Sequence[int]]) -> np.ndarray:
    """A copy of ``image`` (rows, columns) with each region ``(top, left, bottom, right)``
    (pixels, bottom and right exclusive, clipped to the image) set to the image's minimum."""
    masked = image.copy()
    fill = image.min() if image.size else 0
    for top, left, bottom, right in regions:
        masked[max(top, 0) : max(bottom, 0), max(left, 0) : max(right, 0)] = fill
    return masked
