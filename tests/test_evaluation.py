"""What a site reports per stratum: subgroup strata only from the columns its policy lets
out, numeric ones in bands, small strata suppressed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from site_client.dataset import SiteData
from site_client.evaluation import stratified_histograms, subgroup_value
from site_client.policy import EvaluationPolicy, PolicyError
from site_client.store import CaseRecord

POLICY = EvaluationPolicy()


def _data(subgroups: list[dict[str, str]]) -> SiteData:
    records = tuple(
        CaseRecord(f"c{i}", i % 2, "test", "ACME", "One", 8, 8, subgroups=row)
        for i, row in enumerate(subgroups)
    )
    n = len(records)
    return SiteData(torch.zeros(n, 1, 8, 8), torch.tensor([r.label for r in records]), records)


@pytest.mark.parametrize(
    ("raw", "column", "expected"),
    [
        ("63", "age", "60-69"),
        ("60", "age", "60-69"),
        ("59.9", "age", "50-59"),
        ("sixty", "age", None),
        ("", "age", None),
        ("F", "sex", "F"),
        (" M ", "sex", "M"),
        ("DOE^JOHN|x", "sex", None),
        ("", "sex", None),
    ],
)
def test_subgroup_values_are_banded_or_plain(raw: str, column: str, expected: str | None) -> None:
    assert subgroup_value(raw, column, POLICY) == expected


def test_only_the_policy_s_columns_leave_and_small_strata_are_suppressed() -> None:
    rows = [
        {"sex": "F" if i < 12 else "M", "age": str(40 + i), "mrn": f"MRN{i:04d}"} for i in range(16)
    ]
    data = _data(rows)
    result = stratified_histograms(np.zeros(16), data, "test", 5, evaluation=POLICY)
    strata = {key.split("|")[1] for key in result.histograms}
    assert "subgroup:sex=F" in strata and "subgroup:age=40-49" in strata
    assert not [s for s in strata if "mrn" in s or "MRN" in s]  # not in the policy
    # 4 men, 6 cases aged 50-55: under the minimum cell size of 5 only the men are withheld.
    assert "test|subgroup:sex=M" in result.suppressed
    assert "subgroup:age=50-59" in strata
    counts = result.histograms["test|subgroup:sex=F|0"], result.histograms["test|subgroup:sex=F|1"]
    assert sum(map(sum, counts)) == 12
    none = stratified_histograms(np.zeros(16), data, "test", 5, evaluation=None)
    assert not [k for k in none.histograms if "subgroup" in k]


def test_evaluation_policy_rejects_bad_settings() -> None:
    with pytest.raises(PolicyError, match="band_width"):
        EvaluationPolicy(band_width=0)
    with pytest.raises(PolicyError, match="subgroup_columns"):
        EvaluationPolicy(subgroup_columns="sex")  # type: ignore[arg-type]
