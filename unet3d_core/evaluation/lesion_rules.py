"""The lesion-wise rules the BraTS challenge scored each year with: which lesions count, and how.

:func:`rules_for` picks one year's :class:`RuleSet` for a cohort; the scoring
itself is :mod:`unet3d_core.evaluation.lesions`. Three families of rules are offered
(``--lesion_rules``); the cohort picks the parameters:

``2023`` (``rachitsaluja/BraTS-2023-Metrics`` @ 43c9052, ``metrics.py``)
    Ground-truth components (26-connected) whose ``d``-fold dilations (3-D
    cross of connectivity 2) touch are one lesion. A predicted component is a
    true positive of every lesion whose dilation it meets; each lesion's Dice
    and HD95 are taken against the union of its true positives. Lesions of
    volume <= threshold (mm^3) are left out; every predicted component meeting
    no lesion is a false positive scoring Dice 0 and HD95 374. Score = sum over
    kept lesions / (kept lesions + false positives); nothing to score gives
    Dice 1 and HD95 0. ``d`` and the threshold: GLI, SSA, PED 3 and 50; MEN 1
    and 50; MET 1 and 2.
``2024`` / ``2025`` (``rachitsaluja/BraTS-2024-Metrics`` @ 9a0ab9c / 9e8879a,
    ``metrics_<COHORT>.py``, the commits the 2024 and 2025 leaderboards used)
    As 2023, plus: predicted components are merged by dilation like the
    truth's and merged predictions of at most ``threshold`` voxels are dropped
    (MEN-RT: mm^3); lesions of one region that touch the same lesion of a
    partner region become one (GLI: NETC, ET, RC and SNFH with each other;
    SSA and MET: ET through NETC), with the scripts' own pairing rule.
    GLI: ``d`` 5 for NETC and RC, 3 otherwise (the script's SNFH check is
    misspelt, so SNFH stays at 3), threshold 10 for ET and 20 otherwise, HD95
    penalty 337 (the diagonal of its 182x218x182 grid). PED: 5 and 10, 374.
    SSA: 3 and 50, 374. MET: 1 and 2; 2025 adds RC and takes the image
    diagonal as penalty. MEN-RT: 1 and 50 mm^3, penalty the image diagonal,
    false positives not counted. MEN follows the 2023 rules.
``2026`` (``BraTS-evaluation`` 0.0.8 on PyPI, built on panoptica)
    Lesions are plain 26-connected components, matched one to one by maximum
    bipartite matching on Dice (any overlap qualifies). Lesion-wise Dice and
    HD95 are the means over matched pairs (panoptica's ``sq_dsc`` and
    ``sq_hd95``); HD95 is the 95th percentile of the pooled surface distances
    of both directions. No match gives Dice 0 and HD95 373 (the package
    reports infinity, its parsers 373); no lesion on either side gives Dice 1
    and HD95 0 (the package reports NaN, which its parsers leave out).

The 2025 scripts also score normalised surface Dice (``LesionNSD05_<R>`` and
``LesionNSD10_<R>``, tolerances 0.5 and 1.0 mm), the 2026 package
``LesionNSD_<R>`` at the smallest voxel spacing; :mod:`unet3d_core.evaluation.lesions`
says how.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Optional, Sequence, Tuple

from unet3d_core.data.layouts import LAYOUTS
from unet3d_core.errors import ConfigError
from unet3d_core.model.config import LESION_RULE_CHOICES

YEARS = tuple(choice for choice in LESION_RULE_CHOICES if choice != "auto")
AUTO = "auto"
DIAGONAL = None  # penalty: the diagonal of the image grid, in voxels
NO_MATCH_HD95_2026 = 373.0  # BraTS-evaluation's value for an infinite HD95
# NSD tolerances (mm) -> metric name; None is the smallest voxel spacing (the 2026 package's default).
NSD_2025 = ((0.5, "NSD05"), (1.0, "NSD10"))
NSD_2026 = ((None, "NSD"),)


@dataclass(frozen=True)
class RegionRule:
    """How one region's lesions are found and scored."""

    dilation: int  # d: dilations that merge nearby lesions and reach predicted ones
    threshold: float  # lesions of at most this volume (mm^3) are not scored
    merge_with: Tuple[str, ...] = ()  # partner regions, in the order the 2024 script merges through them


@dataclass(frozen=True)
class RuleSet:
    """The lesion-wise rules of one year for one cohort."""

    year: str
    cohort: str
    method: str  # "dilation" (2023-2025) or "panoptica" (2026)
    regions: "OrderedDict[str, RegionRule]"  # the regions scored, in report order
    partners: "OrderedDict[str, RegionRule]"  # regions only merged with (not scored)
    penalty: Optional[float] = 374.0  # HD95 of a missed lesion and of a false positive; None: image diagonal
    merge_predictions: bool = False  # 2024+: predictions merged by dilation and small ones dropped
    prediction_threshold_in_mm3: bool = False  # MEN-RT: the prediction filter compares mm^3, not voxels
    count_false_positives: bool = True
    source: str = ""
    nsd: Tuple[Tuple[Optional[float], str], ...] = ()  # (tolerance in mm or None, metric name) the rules score

    @property
    def nsd_names(self) -> Tuple[str, ...]:
        """The NSD metric names of these rules (``NSD05``, ``NSD10`` or ``NSD``), empty when none."""
        return tuple(name for _, name in self.nsd)

    def _describe_nsd(self) -> str:
        if not self.nsd:
            return ""
        tolerances = ", ".join("{} at {}".format(name, "the smallest voxel spacing (1 mm on BraTS)"
                                                 if tolerance is None else "{:g} mm".format(tolerance))
                               for tolerance, name in self.nsd)
        return "; normalised surface Dice {} (border voxels within the tolerance)".format(tolerances)

    def describe(self) -> str:
        """One line naming the rules and their source, for reports."""
        if self.method == "panoptica":
            return ("BraTS {} rules for {} ({}): 26-connected lesions matched one to one on Dice; means over "
                    "matched lesions; no match: Dice 0, HD95 {:g}{}".format(
                        self.year, self.cohort, self.source, NO_MATCH_HD95_2026,
                        self._describe_nsd() + (", no match 0" if self.nsd else "")))
        parts = ", ".join("{} d={} >{:g} mm3".format(name, rule.dilation, rule.threshold)
                          for name, rule in self.regions.items())
        penalty = "image diagonal" if self.penalty is None else "{:g}".format(self.penalty)
        extras = []
        if self.merge_predictions:
            extras.append("predictions merged, small ones dropped")
        if any(rule.merge_with for rule in self.regions.values()):
            extras.append("touching regions merged")
        if not self.count_false_positives:
            extras.append("false positives not counted")
        return "BraTS {} rules for {} ({}): {}; HD95 penalty {}{}{}".format(
            self.year, self.cohort, self.source, parts, penalty, "; " + ", ".join(extras) if extras else "",
            self._describe_nsd())


def _rules(*entries):
    return OrderedDict((name, RegionRule(*values)) for name, *values in entries)


_R23 = "rachitsaluja/BraTS-2023-Metrics@43c9052 metrics.py"
_R24 = "rachitsaluja/BraTS-2024-Metrics@{} metrics_{}.py"
_PARAMETERS_2023 = {"GLI": (3, 50.0), "SSA": (3, 50.0), "PED": (3, 50.0), "MEN": (1, 50.0), "MET": (1, 2.0),
                    "GoAT": (3, 50.0)}
# The regions each BraTS-evaluation configuration scores (config_<name>.yaml), by cohort.
_PANOPTICA_REGIONS = {"GLI": ("WT", "TC", "ET", "NETC", "SNFH", "RC"), "SSA": ("WT", "TC", "ET", "NETC", "SNFH"),
                      "PED": ("WT", "TC", "ET", "NETC", "CC", "ED"), "MET": ("WT", "TC", "ET", "RC"),
                      "MEN-RT": ("GTV",), "MEN": ("WT", "TC", "ET"), "GoAT": ("WT", "TC", "ET")}
_PANOPTICA_CONFIG = {"GLI": "gli", "SSA": "gli", "PED": "ped", "MET": "mets", "MEN-RT": "MenRT", "MEN": "MenPre",
                     "GoAT": "GoAT"}
# The year each layout's own release was scored in, for --lesion_rules auto.
DEFAULT_YEAR = {"brats2024-gli": "2024", "brats-ped": "2024", "brats-men-rt": "2024", "brats-goat": "2024"}


# The first rules that score the resection cavity (RC) of a cohort whose files may hold one: --lesion_rules auto
# moves to them when the truth has an RC voxel (MET scores RC from 2025; GLI's RC data are the 2024-2025 releases).
RC_RULES = {"MET": "2025", "GLI": "2025"}


def choose_auto(layout: str, cohort: str, lesion_regions: Mapping[str, Sequence[int]],
                present: Optional[Iterable[int]], where: str) -> Tuple[str, str]:
    """The year ``--lesion_rules auto`` means for this data, and one line saying why.

    The layout's own release year, unless the truth holds a resection cavity that year's rules leave out.
    ``present``: the internal labels the truth holds, an iterable read only as far as needed (None: not
    known, e.g. records written before unet3d recorded them); ``where``: the data, as the line names it.
    """
    default = DEFAULT_YEAR.get(layout, "2023")
    cavity = tuple(lesion_regions.get("RC", ()))
    upgrade = RC_RULES.get(cohort)
    if not cavity or upgrade is None or int(upgrade) <= int(default):
        return default, "--lesion_rules auto: the {} rules, those of the {} release ({})".format(default, layout, where)
    if present is None:
        return default, ("--lesion_rules auto: the {} rules of the {} release; whether {} holds a resection cavity "
                         "(RC, label {}) is not recorded (preprocess it again to record it), so RC is not scored; "
                         "--lesion_rules {} scores it".format(default, layout, where, cavity[0], upgrade))
    if any(int(label) in cavity for label in present):  # stops at the first cavity voxel's case
        return upgrade, ("--lesion_rules auto: the {} rules, because {} holds a resection cavity (RC, label {}), "
                         "which the {} rules of the {} release do not score".format(upgrade, where, cavity[0],
                                                                                   default, layout)
                         if cohort == "MET" else
                         "--lesion_rules auto: the {} rules, the newest that score the resection cavity (RC, "
                         "label {}) {} holds".format(upgrade, cavity[0], where))
    return default, ("--lesion_rules auto: the {} rules of the {} release ({} holds no resection cavity)".format(
        default, layout, where))


def rules_year(flag: str, layout: str, present: Callable[[], Optional[Iterable[int]]],
               where: str) -> Tuple[str, Optional[str]]:
    """The year ``--lesion_rules FLAG`` scores ``where`` (a ``layout`` data set) by, and for ``auto`` the line
    saying which and why (``present()``: the labels its truth holds, see :func:`choose_auto`)."""
    if flag != AUTO:
        return flag, None
    spec = LAYOUTS[layout]
    return choose_auto(spec.name, spec.cohort, spec.lesion_regions, present(), where)


def _rules_2023(cohort, regions) -> RuleSet:
    dilation, threshold = _PARAMETERS_2023[cohort]
    scored = [name for name in ("WT", "TC", "ET") if name in regions] or list(regions)[:1]
    return RuleSet("2023", cohort, "dilation", _rules(*[(name, dilation, threshold) for name in scored]),
                   OrderedDict(), 374.0, source=_R23)


def rules_for(year: str, cohort: str, regions: Sequence[str], layout: str = "") -> RuleSet:
    """The rule set of ``year`` for ``cohort``, restricted to the ``regions`` the data defines.

    Raises:
        ConfigError: a year the cohort was not scored in (MEN-RT before 2024) or an unknown year.
    """
    if year == AUTO:
        year = DEFAULT_YEAR.get(layout, "2023")
    if year not in YEARS:
        raise ConfigError("--lesion_rules {}: choose auto, {}".format(year, ", ".join(YEARS)))
    regions = list(regions)
    if year == "2026":
        names = [name for name in _PANOPTICA_REGIONS.get(cohort, ("WT", "TC", "ET")) if name in regions]
        source = "BraTS-evaluation 0.0.8 config_{}".format(_PANOPTICA_CONFIG.get(cohort, "gli"))
        return RuleSet(year, cohort, "panoptica", _rules(*[(name, 0, 0.0) for name in names]), OrderedDict(),
                       NO_MATCH_HD95_2026, source=source, nsd=NSD_2026)
    if cohort == "MEN-RT":
        if year == "2023":
            raise ConfigError("--lesion_rules 2023: the 2023 rules have no MEN-RT cohort (it started in 2024); "
                              "use 2024 or later")
        commit = "9a0ab9c" if year == "2024" else "9e8879a"
        return RuleSet(year, cohort, "dilation", _rules(("GTV", 1, 50.0)), OrderedDict(), DIAGONAL,
                       merge_predictions=True, prediction_threshold_in_mm3=True, count_false_positives=False,
                       source=_R24.format(commit, "MEN_RT"), nsd=NSD_2025 if year == "2025" else ())
    if year == "2023" or cohort in ("MEN", "GoAT"):
        rules = _rules_2023(cohort, regions)
        if year != "2023":
            source = (_R24.format("9e8879a", "MEN") if cohort == "MEN" and year == "2025"
                      else _R23 + " (no {} script in {})".format(cohort, year))
            # 2025's metrics_MEN.py adds NSD; GoAT has no script, so no NSD.
            nsd = NSD_2025 if cohort == "MEN" and year == "2025" else ()
            rules = RuleSet(year, cohort, "dilation", rules.regions, OrderedDict(), 374.0, source=source, nsd=nsd)
        return rules
    commit = "9a0ab9c" if year == "2024" else "9e8879a"
    if cohort == "GLI":
        table = _rules(("WT", 3, 20.0), ("TC", 3, 20.0), ("NETC", 5, 20.0, ("ET", "RC")),
                       ("SNFH", 3, 20.0, ("ET", "RC", "NETC")), ("ET", 3, 10.0, ("NETC", "RC")),
                       ("RC", 5, 20.0, ("ET", "NETC")))
        partners, penalty = OrderedDict(), 337.0
    elif cohort in ("SSA", "MET"):
        dilation, threshold = (3, 50.0) if cohort == "SSA" else (1, 2.0)
        names = ["WT", "TC", "ET"] + (["RC"] if cohort == "MET" and year == "2025" else [])
        table = _rules(*[(name, dilation, threshold, ("NETC",) if name == "ET" else ()) for name in names])
        partners = _rules(("NETC", dilation, threshold))
        penalty = DIAGONAL if cohort == "MET" and year == "2025" else 374.0
    elif cohort == "PED":
        table = _rules(*[(name, 5, 10.0) for name in ("WT", "TC", "ET", "NETC", "CC", "ED")])
        partners, penalty = OrderedDict(), 374.0
    else:
        raise ConfigError("--lesion_rules {}: no rules for cohort {}".format(year, cohort))
    table = OrderedDict((name, rule) for name, rule in table.items() if name in regions)
    for name, rule in table.items():
        missing = [partner for partner in rule.merge_with if partner not in regions]
        if missing:  # a partner region the data cannot have (no label 4): nothing to merge through
            table[name] = RegionRule(rule.dilation, rule.threshold,
                                     tuple(partner for partner in rule.merge_with if partner in regions))
    partners = OrderedDict((name, rule) for name, rule in partners.items() if name in regions)
    source = _R24.format(commit, cohort)
    return RuleSet(year, cohort, "dilation", table, partners, penalty, merge_predictions=True, source=source,
                   nsd=NSD_2025 if year == "2025" else ())
