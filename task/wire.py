"""The records that cross the wire between a site and the coordinator.

Only what is named here may leave a site (``site_client.egress`` enforces it): model
weights, counts and score histograms per class and stratum. Never pixels, per-case scores,
labels or identifiers.

Scores are the model's logits. Histograms bin them on fixed edges, uniform in logit space,
so that every site's histograms can be summed bin by bin and an operating threshold is
always a bin edge (confusion counts at it are exact).
"""

from __future__ import annotations

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

# --- record keys -------------------------------------------------------------------------
ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
PROFILE = "profile"
DRIFT = "drift"
#: Key of the MetricRecord holding the histograms of the model named ``name``.
HISTOGRAMS_PREFIX = "histograms:"
#: Key of the ArrayRecord holding a model to evaluate in MSG_EVALUATE_STRATA.
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


def histogram_key(split: str, stratum: str, label: int) -> str:
    """MetricRecord key of one histogram: ``"<split>|<stratum>|<label>"``."""
    return f"{split}|{stratum}|{label}"


def parse_histogram_key(key: str) -> tuple[str, str, int]:
    """Inverse of `histogram_key`: ``(split, stratum, label)``."""
    split, stratum, label = key.rsplit("|", 2)
    return split, stratum, int(label)
