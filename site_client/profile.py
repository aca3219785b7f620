"""What a site says about itself when the coordinator asks (``query.profile``): counts only.

Its id and minimum cell size; case counts per split, class and scanner group; modalities,
body parts and the range of study years (the original years; stored headers have shifted
dates); the counts of its intake sessions and their quarantine reasons; how its cases were
de-identified; training and test counts per subgroup stratum, suppressed below the
minimum cell size as evaluation results are (`site_client.evaluation`); and the head of its
audit trail (entries, last hash). Keys and types:
`task.wire.PROFILE_KEYS`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from flwr.app import ConfigRecord

from site_client.decode import UNKNOWN
from site_client.evaluation import subgroup_value
from site_client.intake_report import intake_totals, latest_deidentification
from site_client.store import CaseRecord, SiteStore
from task.audit import AuditLog
from task.wire import STRATUM_SUBGROUP


def site_profile(store: SiteStore) -> ConfigRecord:
    """The profile of ``store`` as a ConfigRecord (module docstring)."""
    records = store.read_manifest()
    profile = ConfigRecord(
        {
            "site-id": store.site_id,
            "min-cell-size": store.policy.min_cell_size,
            "n-train": sum(r.split == "train" for r in records),
            "n-test": sum(r.split == "test" for r in records),
            "n-train-positive": sum(r.split == "train" and r.label == 1 for r in records),
            "n-test-positive": sum(r.split == "test" and r.label == 1 for r in records),
        }
    )
    _add_scanners(profile, records)
    _add_counts(profile, "modalities", "modality-n", (r.acquisition.modality for r in records))
    _add_counts(profile, "body-parts", "body-part-n", (r.acquisition.body_part for r in records))
    years = [r.acquisition.study_year for r in records if r.acquisition.study_year is not None]
    if years:
        profile["study-year-first"] = min(years)
        profile["study-year-last"] = max(years)
        profile["study-year-n"] = len(years)
    _add_subgroups(profile, store, records)
    _add_intake(profile, store)
    # The head of the site's audit trail, which the coordinator records: a trail rewritten
    # later no longer matches it.
    profile["audit-entries"], profile["audit-head"] = AuditLog.in_folder(store.root).head()
    return profile


def _add_scanners(profile: ConfigRecord, records: list[CaseRecord]) -> None:
    """Parallel lists: scanner-manufacturers[i] scanner-models[i] has scanner-n-train[i]
    and scanner-n-test[i] cases."""
    counts = Counter((r.manufacturer, r.model, r.split) for r in records)
    scanners = sorted({(r.manufacturer, r.model) for r in records})
    profile["scanner-manufacturers"] = [m for m, _ in scanners]
    profile["scanner-models"] = [model for _, model in scanners]
    profile["scanner-n-train"] = [counts[(m, model, "train")] for m, model in scanners]
    profile["scanner-n-test"] = [counts[(m, model, "test")] for m, model in scanners]


def _add_counts(
    profile: ConfigRecord, names_key: str, counts_key: str, values: Iterable[str]
) -> None:
    """Parallel lists of each value (an empty one as UNKNOWN) and its number of cases."""
    counts = Counter(value or UNKNOWN for value in values)
    profile[names_key] = sorted(counts)
    profile[counts_key] = [counts[name] for name in sorted(counts)]


def _add_subgroups(profile: ConfigRecord, store: SiteStore, records: list[CaseRecord]) -> None:
    """Training and test counts per subgroup stratum (``subgroup:<column>=<value>``) of the
    columns the site's evaluation policy lets out; a stratum with a count between 1 and the
    minimum cell size is named in ``subgroup-suppressed``, its counts withheld."""
    policy = store.policy.evaluation
    counts: Counter[tuple[str, str]] = Counter()
    for record in records:
        for column in policy.subgroup_columns:
            value = subgroup_value(record.subgroups.get(column, ""), column, policy)
            if value is not None:
                counts[(f"{STRATUM_SUBGROUP}:{column}={value}", record.split)] += 1
    reported, suppressed = [], []
    for stratum in sorted({s for s, _ in counts}):
        cells = (counts[(stratum, "train")], counts[(stratum, "test")])
        small = any(0 < n < store.policy.min_cell_size for n in cells)
        (suppressed if small else reported).append((stratum, cells))
    profile["subgroup-strata"] = [s for s, _ in reported]
    profile["subgroup-n-train"] = [train for _, (train, _) in reported]
    profile["subgroup-n-test"] = [test for _, (_, test) in reported]
    profile["subgroup-suppressed"] = [s for s, _ in suppressed]


def _add_intake(profile: ConfigRecord, store: SiteStore) -> None:
    """Counts of all the site's intake sessions, and how its cases were de-identified (its
    latest session; absent for a store made before intake reports)."""
    totals = intake_totals(store.intake_reports_dir)
    profile["intake-sessions"] = totals.sessions
    profile["intake-received"] = totals.received
    profile["intake-stored"] = totals.stored
    profile["intake-already-stored"] = totals.already_stored
    profile["intake-quarantined"] = totals.quarantined
    profile["intake-failed"] = totals.failed
    reasons = sorted(totals.quarantine_reasons)
    profile["intake-quarantine-reasons"] = reasons
    profile["intake-quarantine-n"] = [totals.quarantine_reasons[r] for r in reasons]
    method = latest_deidentification(store.intake_reports_dir)
    if method is not None:
        profile["deid-profile"] = str(method.get("profile", ""))
        profile["deid-standard"] = str(method.get("standard", ""))
        profile["deid-options"] = [str(o) for o in method.get("options", [])]
        profile["deid-table-sha256"] = str(method.get("table_sha256", ""))
        profile["deid-software"] = str(method.get("software", ""))
