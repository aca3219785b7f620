"""The records that cross the wire between a site and the coordinator.

Only what is named here may leave a site (``site_client.egress`` enforces it): model
weights, counts and score histograms per class and stratum, and for segmentation the
per-stratum aggregates of per-case Dice and HD95 (counts per fixed bin, sums, sums of
squares). Never pixels, masks, per-case scores, labels or identifiers.

Scores are the model's logits. Histograms bin them on fixed edges, uniform in logit space,
so that every site's histograms can be summed bin by bin and an operating threshold is
always a bin edge (confusion counts at it are exact).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# --- message types (Flower "<category>.<action>") ---------------------------------------
#: Site profile: site id, case counts per split and per scanner group.
MSG_PROFILE = "query.profile"
#: Federated training round (the strategy's own messages).
MSG_TRAIN = "train"
#: Local-only baseline: train from the initial model on the site's data alone.
MSG_TRAIN_LOCAL = "train.local"
#: Per-round evaluation of the global model (loss, accuracy, AUC on the site's test split).
MSG_EVALUATE = "evaluate"
#: Stratified score histograms of one or more models on the site's data.
MSG_EVALUATE_STRATA = "evaluate.strata"
#: Drift of the site's new (received, unlabelled) data from its labelled data, for a model.
MSG_DRIFT = "query.drift"
#: Segmentation: per-stratum Dice and HD95 aggregates of one or more models on the test split.
MSG_EVALUATE_SEGMENTATION = "evaluate.segmentation"

# --- record keys -------------------------------------------------------------------------
ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
PROFILE = "profile"
DRIFT = "drift"
#: Key of the MetricRecord holding the histograms of the model named ``name``.
HISTOGRAMS_PREFIX = "histograms:"
#: Key of the MetricRecord holding the segmentation aggregates of the model named ``name``.
SEGMENTATION_PREFIX = "segmentation:"
#: Key of the ArrayRecord holding a model to evaluate in MSG_EVALUATE_STRATA or
#: MSG_EVALUATE_SEGMENTATION.
MODEL_PREFIX = "model:"
NUM_EXAMPLES = "num-examples"
#: ConfigRecord keys of the task's settings: the model's shape under this prefix
#: (`task.config_record`), the training settings unprefixed, and the run's seed.
MODEL_CONFIG_PREFIX = "model-"
SEED_KEY = "seed"
#: Config key of MSG_TRAIN_LOCAL: epochs to train.
EPOCHS_KEY = "epochs"
#: Config key of MSG_EVALUATE_STRATA: models also scored on the training split.
TRAIN_SPLIT_MODELS_KEY = "train-split-models"
#: The suppressed strata of an MSG_EVALUATE_STRATA reply: ConfigRecord SUPPRESSED, key "strata".
SUPPRESSED = "suppressed"

# --- what each reply may hold ------------------------------------------------------------
#: ConfigRecord PROFILE of an MSG_PROFILE reply (`site_client.profile`): counts only. Lists
#: are parallel: scanner-manufacturers[i], scanner-models[i] has scanner-n-train[i] /
#: scanner-n-test[i] cases; modalities[i] has modality-n[i]; and so on.
PROFILE_KEYS = frozenset(
    {
        "site-id",
        "min-cell-size",
        "n-train",
        "n-test",
        "n-train-positive",
        "n-test-positive",
        "scanner-manufacturers",
        "scanner-models",
        "scanner-n-train",
        "scanner-n-test",
        "modalities",
        "modality-n",
        "body-parts",
        "body-part-n",
        # The range of the original study years (absent when no case has a study date).
        "study-year-first",
        "study-year-last",
        "study-year-n",
        # Training and test counts per subgroup stratum; strata with a count below the
        # minimum cell size are named in subgroup-suppressed, their counts withheld.
        "subgroup-strata",
        "subgroup-n-train",
        "subgroup-n-test",
        "subgroup-suppressed",
        # The site's intake sessions added up: received = stored + already stored +
        # quarantined + failed; quarantine reason categories and their counts.
        "intake-sessions",
        "intake-received",
        "intake-stored",
        "intake-already-stored",
        "intake-quarantined",
        "intake-failed",
        "intake-quarantine-reasons",
        "intake-quarantine-n",
        # How the site's cases were de-identified (its latest intake session; absent for a
        # store made before intake reports): profile, options, table SHA-256, software.
        "deid-profile",
        "deid-standard",
        "deid-options",
        "deid-table-sha256",
        "deid-software",
        # The head of the site's audit trail (task.audit): entries and last hash.
        "audit-entries",
        "audit-head",
    }
)
#: ConfigRecord DRIFT of an MSG_DRIFT reply (`site_client.drift`): statistics and counts of
#: at least the minimum cell size. Lists are parallel: groups[i], features[i] compared over
#: n-reference-of[i] and n-new-of[i] cases give psi[i], ks[i], ks-p[i], alarms[i];
#: unvalidated-scanners[j] has unvalidated-n[j] new cases (0: fewer than the minimum cell
#: size, withheld); too-small names groups not compared. n-new is 0 below the minimum.
DRIFT_KEYS = frozenset(
    {
        "alarm",
        "n-reference",
        "n-new",
        "groups",
        "features",
        "n-reference-of",
        "n-new-of",
        "psi",
        "ks",
        "ks-p",
        "alarms",
        "unvalidated-scanners",
        "unvalidated-n",
        "too-small",
    }
)
#: The privacy record of a release trained with DP-SGD at the site: this run's epsilon at
#: the site after it, the site's total over every run (absent once unbounded: the store
#: released a model trained without DP before), and the release's DP-SGD parameters.
DP_METRIC_KEYS = frozenset(
    {
        "dp-epsilon",
        "dp-epsilon-total",
        "dp-delta",
        "dp-noise-multiplier",
        "dp-sample-rate",
        "dp-max-grad-norm",
    }
)
#: MetricRecord METRICS of MSG_TRAIN / MSG_TRAIN_LOCAL replies (with ArrayRecord ARRAYS).
TRAIN_METRIC_KEYS = (
    frozenset({NUM_EXAMPLES, "train-loss", "steps", "train-seconds"}) | DP_METRIC_KEYS
)
#: MetricRecord METRICS of an MSG_EVALUATE reply: the site's whole test split. The
#: histograms are absent when the split is smaller than the site's minimum cell size.
EVALUATE_METRIC_KEYS = frozenset(
    {NUM_EXAMPLES, "test-loss", "evaluate-seconds", "hist-negative", "hist-positive"}
)
#: One stratum's segmentation aggregate (`validation.segmentation.SegmentationAggregate`):
#: n cases, of which n-empty have an empty reference mask (n-false-positive of them a
#: non-empty prediction); the others have a lesion, and their per-case Dice is counted in
#: dice-hist (bins `DICE_BINS`) with its sum and sum of squares; of those, n-missed have an
#: empty prediction and n-no-spacing no pixel spacing (no HD95); the rest have their HD95
#: in mm counted in hd95-hist (bins `HD95_BINS`) with its sum and sum of squares.
SEGMENTATION_FIELDS = frozenset(
    {
        "n",
        "n-empty",
        "n-false-positive",
        "n-missed",
        "n-no-spacing",
        "dice-hist",
        "dice-sum",
        "dice-sum-sq",
        "hd95-hist",
        "hd95-sum",
        "hd95-sum-sq",
    }
)
#: MetricRecord METRICS of an MSG_EVALUATE reply for a segmentation model: the whole test
#: split's aggregate (`SEGMENTATION_FIELDS`), absent below the minimum cell size.
EVALUATE_SEGMENTATION_METRIC_KEYS = (
    frozenset({NUM_EXAMPLES, "test-loss", "evaluate-seconds"}) | SEGMENTATION_FIELDS
)

# --- the models of a run (names in run.json, site aggregates and evidence) ---------------
GLOBAL_MODEL = "global"
#: Prefix of each site's local-only model: "local-<site id>".
LOCAL_MODEL_PREFIX = "local-"
#: All sites' training data in one place (simulations only).
POOLED_CENTRALIZED = "pooled-centralized"

# --- strata ------------------------------------------------------------------------------
#: A stratum is named "<kind>=<value>"; the whole site's data is "site=all".
STRATUM_SITE = "site=all"
STRATUM_MANUFACTURER = "manufacturer"
STRATUM_SCANNER = "scanner"
#: Subgroup strata are "subgroup:<column>=<value>" (labels.csv subgroup columns the site's
#: policy lets out; numeric ones in bands such as "60-69").
STRATUM_SUBGROUP = "subgroup"

# --- score histograms --------------------------------------------------------------------
LOGIT_RANGE = 8.0
LOGIT_BIN_WIDTH = 0.05
#: Inner edges, uniform in logit space; the first and last bins are open-ended.
SCORE_BIN_EDGES: np.ndarray = np.round(
    np.arange(-LOGIT_RANGE, LOGIT_RANGE + LOGIT_BIN_WIDTH / 2, LOGIT_BIN_WIDTH), 6
)
#: Number of bins: one more than the number of inner edges.
N_SCORE_BINS = len(SCORE_BIN_EDGES) + 1


def score_bin_index(logits: np.ndarray) -> np.ndarray:
    """Bin index in [0, N_SCORE_BINS) of each logit; bin i holds edges[i-1] <= s < edges[i]."""
    return np.searchsorted(SCORE_BIN_EDGES, np.asarray(logits, dtype=np.float64), side="right")


@dataclass(frozen=True)
class ValueBins:
    """Fixed bins of a per-case value in [edges[0], ...): bin i holds
    edges[i] <= v < edges[i+1]; the last bin also holds edges[-1] itself when ``open_top`` is
    False (a bounded value such as Dice), and everything from edges[-1] up when it is True."""

    edges: tuple[float, ...]
    open_top: bool

    @property
    def n(self) -> int:
        """Number of bins."""
        return len(self.edges) - 1 + int(self.open_top)

    def index(self, values: np.ndarray) -> np.ndarray:
        """Bin index in [0, n) of each of ``values`` (finite, >= edges[0])."""
        found = np.searchsorted(self.edges, np.asarray(values, dtype=np.float64), side="right")
        return np.clip(found - 1, 0, self.n - 1)

    def lower(self, index: int) -> float:
        """The lower edge of bin ``index``."""
        return self.edges[index]

    def upper(self, index: int) -> float:
        """The upper edge of bin ``index`` (infinity for an open top bin)."""
        return self.edges[index + 1] if index + 1 < len(self.edges) else math.inf


#: Per-case Dice in 50 bins of width 0.02 on [0, 1].
DICE_BINS = ValueBins(tuple(np.round(np.linspace(0.0, 1.0, 51), 6).tolist()), open_top=False)
#: Per-case HD95 (mm) in bins of 0.5 mm up to 100 mm, and one bin for 100 mm and more.
HD95_BINS = ValueBins(tuple(np.round(np.arange(0.0, 100.25, 0.5), 6).tolist()), open_top=True)


def histogram_key(split: str, stratum: str, label: int) -> str:
    """MetricRecord key of one histogram: ``"<split>|<stratum>|<label>"``."""
    return f"{split}|{stratum}|{label}"


def parse_histogram_key(key: str) -> tuple[str, str, int]:
    """Inverse of `histogram_key`: ``(split, stratum, label)``."""
    split, stratum, label = key.rsplit("|", 2)
    return split, stratum, int(label)


def segmentation_key(split: str, stratum: str, field: str) -> str:
    """MetricRecord key of one field (`SEGMENTATION_FIELDS`) of a stratum's segmentation
    aggregate: ``"<split>|<stratum>|<field>"``."""
    return f"{split}|{stratum}|{field}"


def parse_segmentation_key(key: str) -> tuple[str, str, str]:
    """Inverse of `segmentation_key`: ``(split, stratum, field)``; ValueError for a key
    that is not one."""
    split, stratum, field = key.rsplit("|", 2)
    if field not in SEGMENTATION_FIELDS:
        raise ValueError(f"{field!r} is not a segmentation aggregate field")
    return split, stratum, field
