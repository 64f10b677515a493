"""Every column name, enum and assay constant in one place.

Plate and well metadata follow pycytominer's ``Metadata_*`` convention, so exported tables load
straight into pycytominer and CellProfiler Analyst. Nothing else in the project spells these
strings out: import them from here.
"""

from __future__ import annotations

from typing import Final, Literal

# --- the assay -------------------------------------------------------------------------------
CHANNELS: Final = ("nucleus", "neuron", "microglia")
"""Channel roles, in the order the model sees them (last axis of every field and crop)."""
ChannelRole = Literal["nucleus", "neuron", "microglia"]

CONCENTRATIONS_UM: Final = (0.0, 0.005, 0.05, 0.5, 5.0, 20.0)
"""Inflammatory stimulus concentration (uM) of each class; the index is the class label."""
N_CLASSES: Final = len(CONCENTRATIONS_UM)
CONTROL_CLASS: Final = 0
DISEASE_CLASS: Final = N_CLASSES - 1
CLASS_NAMES: Final = tuple(f"{c:g} uM" for c in CONCENTRATIONS_UM)

ROLES: Final = ("control", "disease", "treatment", "empty")
Role = Literal["control", "disease", "treatment", "empty"]

# Layout names live in one place: the layout registry (``layouts.layout_names``, ``BUILTIN_LAYOUTS``).

PLATE_FORMATS: Final = {96: (8, 12), 384: (16, 24), 1536: (32, 48)}
"""Wells -> (rows, columns)."""

CROPS_PER_WELL: Final = 15
"""The study's crops per well."""
MAX_CROPS_PER_WELL: Final = 1000
"""Most crops asked of a well: crops tile the fields, so past a few hundred they add time, not
information."""

# --- plate map / well metadata (pycytominer style) ------------------------------------------
PLATE: Final = "Metadata_Plate"
WELL: Final = "Metadata_Well"          # display form, "A01"
ROW: Final = "Metadata_Row"            # 1-based integer, A = 1
COL: Final = "Metadata_Col"            # 1-based integer
COMPOUND: Final = "Metadata_Compound"
DOSE: Final = "Metadata_Dose_uM"       # compound dose, uM
ROLE: Final = "Metadata_Role"
CLASS: Final = "Metadata_Class"        # 0..5, training plates only
FIELD: Final = "Metadata_Field"        # 1-based site / field index
CROP: Final = "Metadata_Crop"          # 0-based crop index within a field
PLATE_MAP_OPTIONAL: Final = (PLATE, COMPOUND, DOSE, ROLE, CLASS)

# --- ground truth written by the synthetic assay -------------------------------------------
TRUE_SEVERITY: Final = "Truth_Severity"
TRUE_RESCUE: Final = "Truth_Rescue"            # fraction 0..1 of the disease phenotype undone
TRUE_EC50: Final = "Truth_EC50_uM"
TRUE_HILL: Final = "Truth_Hill"
TRUE_MAX_RESCUE: Final = "Truth_Max_Rescue"
TRUE_STIMULUS: Final = "Truth_Stimulus_uM"  # inflammatory stimulus concentration, uM

# --- predictions and scores ----------------------------------------------------------------
MEMBER: Final = "Model_Member"                  # ensemble member (fold) index
MODEL_ID: Final = "Model_Id"
FIELD_HASH: Final = "Field_Hash"
PROB_COLUMNS: Final = tuple(f"P_class{k}" for k in range(N_CLASSES))
"""Mean softmax probability of each class."""
VOTE_COLUMNS: Final = tuple(f"Vote_class{k}" for k in range(N_CLASSES))
"""Fraction of the well's crops whose arg-max is each class (the study's ratio method)."""
P_CONTROL: Final = "P_control"                  # headline: ensemble mean of class-0 softmax
P_CONTROL_SD: Final = "P_control_member_sd"     # ensemble disagreement
CALLED_CLASS: Final = "Called_class"
N_CROPS: Final = "N_crops"
RESCUE_PCT: Final = "Rescue_pct"
CHANNEL_P_CONTROL: Final = tuple(f"{P_CONTROL}_{c}" for c in CHANNELS)
"""Per-well P(control) of each single-channel model, in CHANNELS order (``P_control_nucleus``, ...)."""

INFLAMMATION_SCORE: Final = "Inflammation_score"
"""The expected class, sum_k k * P_class_k: 0 = looks like control .. 5 = looks like 20 uM stimulus.
It moves with the phenotype over the whole range, where P(control) saturates near 0 past mild
stimulation; see ``scoring.inflammation_score``."""

# --- how a well's class is called from its crops (the model card's ``well_call``) ---------------
WellCall = Literal["mean_probability", "plurality"]
WELL_CALLS: Final = ("mean_probability", "plurality")
"""``mean_probability``: arg-max of the well's mean class probabilities (our trained bundles);
``plurality``: the class most of the well's crops (fields) are called, ties to the lower class
(the study's well call)."""
DEFAULT_WELL_CALL: Final = "mean_probability"

WellMetric = Literal["P_control", "Called_class", "Inflammation_score", "Rescue_pct", "P_control_member_sd",
                     "N_crops"]
WELL_METRICS: Final = (P_CONTROL, CALLED_CLASS, INFLAMMATION_SCORE, RESCUE_PCT, P_CONTROL_SD, N_CROPS)

# --- the screening readout: the one well score that rescue %, hits, QC and EC50 use --------------
Readout = Literal["inflammation_score", "p_control"]
READOUTS: Final = ("inflammation_score", "p_control")
DEFAULT_READOUT: Final = "inflammation_score"
READOUT_COLUMNS: Final = {"inflammation_score": INFLAMMATION_SCORE, "p_control": P_CONTROL}
"""Readout -> the well-table column it reads."""
READOUT_LABELS: Final = {
    "inflammation_score": "inflammation score (0 = control ... 5 = 20 uM)",
    "p_control": "P(control)",
}
METRIC_CONTROL_SIDE: Final = {P_CONTROL: 1, RESCUE_PCT: 1, INFLAMMATION_SCORE: -1, CALLED_CLASS: -1}
"""+1 when control wells score higher than disease wells on a well score, -1 when lower: SSMD is
signed with it, so a plate whose controls sit on the control side is positive."""
MODEL_FIT: Final = "Metadata_Model_fit"  # ok | POOR | unchecked: the run's model-fit verdict (exports)
READOUT: Final = "Metadata_Readout"     # the run's readout, one of READOUTS (exports)
# (Metadata_-prefixed: pycytominer reads every other column of an export as a numeric feature)
ExportTable = Literal["wells", "treatments", "fits"]
EXPORT_TABLES: Final = ("wells", "treatments", "fits")

# --- statistics tables (stats.py) ----------------------------------------------------------
MEAN: Final = "Mean"                    # mean of the metric over the group's wells
SD: Final = "SD"                        # sample SD (ddof 1) of the metric
T_WELCH: Final = "T_welch"              # Welch's t, treatment vs disease wells
P_WELCH: Final = "P_welch"              # two-sided
Q_WELCH: Final = "Q_welch"              # Benjamini-Hochberg across treatments
U_MWU: Final = "U_mannwhitney"          # Mann-Whitney U of the treatment wells
P_MWU: Final = "P_mannwhitney"          # two-sided
Q_MWU: Final = "Q_mannwhitney"          # Benjamini-Hochberg across treatments
HIT: Final = "Hit"                      # rescue >= threshold and Q_welch <= FDR
N_DOSES: Final = "N_doses"              # distinct doses fitted
EC50: Final = "EC50_uM"
EC50_CI_LOW: Final = "EC50_ci_low_uM"   # 95 % CI
EC50_CI_HIGH: Final = "EC50_ci_high_uM"
HILL: Final = "Hill"                    # drc LL.4 sign: < 0 when the response rises with dose
TOP: Final = "Top"                      # upper asymptote of the 4PL fit
BOTTOM: Final = "Bottom"                # lower asymptote of the 4PL fit
P_FLAT: Final = "P_flat"                # F-test p of the 4PL fit against a flat line
CONVERGED: Final = "Converged"
FIT_MESSAGE: Final = "Fit_message"
CHANNEL: Final = "Channel"
PEARSON_R: Final = "Pearson_r"
P_PEARSON: Final = "P_pearson"          # two-sided
SLOPE: Final = "Slope"                  # least squares of y on x
INTERCEPT: Final = "Intercept"

# --- result store: runs and their provenance (store.py) -------------------------------------
RUN_ID: Final = "Run_Id"
RUN_CREATED: Final = "Created"          # UTC timestamp
RUN_STATUS: Final = "Status"
CODE_VERSION: Final = "Code_Version"
RUN_PARAMETERS: Final = "Parameters"   # a run's parameters as JSON (the app's runs table)
CACHE_HITS: Final = "Cache_hits"        # fields whose crop predictions came from the store
CACHE_MISSES: Final = "Cache_misses"    # fields that went through inference
N_WELLS: Final = "N_wells"
SOURCE: Final = "Source"                # the plate's image folder
PLATE_FORMAT: Final = "Plate_format"    # 96 | 384 | 1536
PLATE_LAYOUT: Final = "Layout"          # a layout name (layouts.layout_names)
FIELD_HEIGHT: Final = "Field_height"    # pixels
FIELD_WIDTH: Final = "Field_width"      # pixels
PIXEL_TYPE: Final = "Pixel_type"        # uint8 | uint16
CHANNEL_MAP: Final = "Channel_map"      # role -> channel id in the file names
N_RUNS: Final = "N_runs"
LAST_RUN: Final = "Last_run"            # UTC timestamp of the newest run
PLATE_LIST_COLUMNS: Final = (PLATE, SOURCE, PLATE_LAYOUT, PLATE_FORMAT, FIELD_HEIGHT, FIELD_WIDTH, PIXEL_TYPE,
                             CHANNEL_MAP, RUN_CREATED, N_RUNS, LAST_RUN)
"""Columns of ``ResultStore.list_plates`` (``Created`` is when the plate was first stored)."""


# --- screening campaigns: many plates scored together (campaign.py, campaign_results.py) -------
CAMPAIGN_ID: Final = "Campaign_Id"
BATCH: Final = "Metadata_Batch"         # the lab's batch label of a plate (manifest), "" when none
ACQUIRED: Final = "Metadata_Date"       # acquisition date of a plate (manifest, ISO YYYY-MM-DD), NaT when none
POSITION: Final = "Position"            # 1-based row of the plate in the campaign's manifest
MESSAGE: Final = "Message"              # why a campaign plate failed ("" otherwise)
UPDATED: Final = "Updated"              # UTC timestamp of the row's last change
PLATE_MAP_FILE: Final = "Plate_map"     # the plate map file a campaign plate was scored with
HITS_PROVISIONAL: Final = "Hits_provisional"  # why a plate's hit calls are provisional ("" when not)
CampaignStatus = Literal["pending", "stored", "failed"]
CAMPAIGN_STATUSES: Final = ("pending", "stored", "failed")
"""A campaign plate is ``pending`` until its run is stored (``stored``, with its ``Run_Id``), or
``failed`` with a ``Message`` (bad images, a plate map that does not match them)."""
N_PLATES: Final = "N_plates"
N_STORED: Final = "N_stored"
N_FAILED: Final = "N_failed"
Z_PRIME: Final = "Z_prime"
SSMD: Final = "SSMD"
QC_PASS: Final = "QC_pass"              # Z' >= 0 (the plate's hit calls are not provisional on QC)
N_HITS: Final = "N_hits"                # treatments (compound x dose) called hits on a plate
N_PLATES_TESTED: Final = "N_plates_tested"  # plates where a compound has treatment wells
N_PLATES_HIT: Final = "N_plates_hit"        # plates where at least one of its doses is a hit
HIT_DOSES: Final = "Hit_doses_uM"           # the doses (uM) called hits on any plate, ascending, "; "-joined
HIT_PLATES: Final = "Hit_plates"            # the plates it was a hit on, in acquisition order
N_PLATES_FIT: Final = "N_plates_fit"        # plates whose 4PL fit converged with a finite EC50
EC50_GEOMEAN: Final = "EC50_geomean_uM"     # geometric mean of the plates' EC50s
EC50_MIN: Final = "EC50_min_uM"
EC50_MAX: Final = "EC50_max_uM"
EC50_LOG10_SD: Final = "EC50_log10_sd"      # SD (ddof 1) of log10 EC50 across plates: the spread
EC50_FOLD_RANGE: Final = "EC50_fold_range"  # max / min EC50 across plates
CAMPAIGN_COLUMNS: Final = (CAMPAIGN_ID, POSITION, PLATE, SOURCE, PLATE_MAP_FILE, BATCH, ACQUIRED, MODEL_ID,
                           RUN_STATUS, RUN_ID, MESSAGE, UPDATED)
"""``ResultStore.load_campaign``: one row per plate of a campaign, in acquisition order."""
CAMPAIGN_LIST_COLUMNS: Final = (CAMPAIGN_ID, N_PLATES, N_STORED, N_FAILED, MODEL_ID, UPDATED)
"""``ResultStore.list_campaigns``: one row per campaign (``Model_Id``: the models used, "; "-joined)."""
MEAN_CONTROL: Final = "Mean_control"   # the plate's control wells' mean readout (its own normalisation)
MEAN_DISEASE: Final = "Mean_disease"   # the plate's disease wells' mean readout
CAMPAIGN_PLATE_QC_COLUMNS: Final = (POSITION, PLATE, BATCH, ACQUIRED, MODEL_ID, RUN_ID, READOUT, MEAN_CONTROL,
                                    MEAN_DISEASE, Z_PRIME, SSMD, QC_PASS, MODEL_FIT, N_HITS, HITS_PROVISIONAL)
"""``campaign_results``: plate QC over a campaign, one row per stored plate in acquisition order."""
CAMPAIGN_HIT_COLUMNS: Final = (COMPOUND, N_PLATES_TESTED, N_PLATES_HIT, HIT_DOSES, HIT_PLATES)
CAMPAIGN_EC50_COLUMNS: Final = (COMPOUND, N_PLATES_TESTED, N_PLATES_FIT, EC50_GEOMEAN, EC50_MIN,
                                EC50_MAX, EC50_LOG10_SD, EC50_FOLD_RANGE)


# --- the tables that cross module boundaries: one list of columns each ------------------------------
PLATE_MAP_COLUMNS: Final = (PLATE, WELL, ROW, COL, COMPOUND, DOSE, ROLE, CLASS)
"""A normalised plate map (``platemap.load_plate_map``), and the plate-map columns stored with every
well and well score."""
CROP_PROB_COLUMNS: Final = (WELL, FIELD, CROP, MEMBER, *PROB_COLUMNS)
"""A crop-level probability table (one row per crop and ensemble member)."""
SCORE_COLUMNS: Final = (*PLATE_MAP_COLUMNS, *PROB_COLUMNS, P_CONTROL, *VOTE_COLUMNS, CALLED_CLASS, P_CONTROL_SD,
                        N_CROPS)
"""The stored per-well score table (``scoring.score_wells``; ``Inflammation_score`` is derived on read)."""
TREATMENT_COLUMNS: Final = (COMPOUND, DOSE, N_WELLS, MEAN, SD, RESCUE_PCT, T_WELCH, P_WELCH, U_MWU, P_MWU,
                            Q_WELCH, Q_MWU, HIT)
"""``stats.compare_treatments``: one row per compound and dose."""
FIT_COLUMNS: Final = (COMPOUND, N_WELLS, N_DOSES, EC50, EC50_CI_LOW, EC50_CI_HIGH, HILL, TOP, BOTTOM, P_FLAT,
                      CONVERGED, FIT_MESSAGE)
"""``doseresponse.fit_compounds``: one row per compound."""

# --- installed model bundles (``bundles.describe_bundles``; the app's model list) --------------
BUNDLE_PATH: Final = "Path"                  # the bundle folder
BUNDLE_KIND: Final = "Kind"                  # ensemble | single_channel
BUNDLE_ARCH: Final = "Architecture"
BUNDLE_INPUT: Final = "Input_px"             # network input edge, pixels
BUNDLE_MEMBERS: Final = "Members"
BUNDLE_GEOMETRY: Final = "Crop_geometry"     # e.g. "128 px tiles at 0.65 um/px", "whole field"
BUNDLE_WELL_CALL: Final = "Well_call"        # one of WELL_CALLS
BUNDLE_TRAINING: Final = "Training_plates"
BUNDLE_VAL_ACC: Final = "Validation_accuracy"  # e.g. "wells 96.7 %, crops 72.0 %"
BUNDLE_ORIGIN: Final = "Origin"              # trained here / imported from ... / synthetic demo
BUNDLE_PROBLEM: Final = "Problem"            # why the card cannot be used ("" when it can)
BUNDLE_COLUMNS: Final = (BUNDLE_PATH, MODEL_ID, BUNDLE_KIND, BUNDLE_ARCH, BUNDLE_INPUT, BUNDLE_MEMBERS,
                         BUNDLE_GEOMETRY, BUNDLE_WELL_CALL, BUNDLE_TRAINING, BUNDLE_VAL_ACC, BUNDLE_ORIGIN,
                         BUNDLE_PROBLEM)
"""Columns of ``bundles.describe_bundles``: one row per installed model bundle."""
