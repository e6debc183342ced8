"""The properties an aggregation rule may guarantee, and who guarantees what.

Every rule has the :data:`UNIVERSAL` properties unless :data:`OPT_OUTS` lists it with a
reason; a rule also has the properties its paper claims (its ``claims``). The property suite
(``tests/test_aggregation_properties.py``) checks every rule × property pair it guarantees as
its own test case, on matrices that are random, rank-deficient, ill-conditioned (condition
≥ 1e12), Pareto-stationary, near-parallel, and scaled from 1e-12 to 1e12.
``docs/aggregation.md`` shows the table (:func:`property_table`).

Definitions follow torchjd's (Quinton & Rey, arXiv 2406.16232, section 2), with ``d`` the
rule's direction for rows ``G``:
"""

from __future__ import annotations

from fedmtl.aggregation.rule import Rule, Weighting

PROPERTIES: dict[str, str] = {
    "well-formed": "returns a finite direction of the rows' width (a weighting: m finite weights) and never "
    "raises on finite input",
    "permutation-invariant": "permuting the rows (with their losses, counts and ids) leaves d unchanged",
    "homogeneous": "multiplying every row by s > 0 multiplies d by s (from s = 1e-12 to 1e12)",
    "nonnegative-weights": "a weighting's weights are never negative",
    "non-conflicting": "g_iᵀd ≥ 0 for every row i: no objective is worsened to first order",
    "linear-under-scaling": "d(diag(αc₁ + βc₂) G) = α d(diag(c₁) G) + β d(diag(c₂) G) for c₁, c₂ > 0 entrywise, "
    "α, β ≥ 0 (a zero entry makes a zero row, which ConFIG leaves out of its common direction)",
    "strongly-stationary": "d = 0 only where some w > 0 has Σ w_i g_i = 0",
}
"""Every property by name, with its definition."""

UNIVERSAL: tuple[str, ...] = ("well-formed", "permutation-invariant", "homogeneous", "nonnegative-weights")
"""Properties every rule has unless it opts out (``nonnegative-weights``: weightings only)."""

OPT_OUTS: dict[tuple[str, str], str] = {
    # -- randomised rules ----------------------------------------------------------------
    ("rlw", "permutation-invariant"): "its weights are random: a new draw at every call",
    ("pcgrad", "permutation-invariant"): "the projection order is random (Yu et al. 2020)",
    # -- rules whose weights depend on the rows' magnitudes ------------------------------
    ("qffl", "homogeneous"): "h_k adds q F_k^(q-1) L² ‖u_k‖² to L F_k^q: the step is not linear in the rows",
    ("fedmgda+", "homogeneous"): "updates are normalised to unit length: d does not grow with the rows",
    ("gradnorm", "homogeneous"): "the weights take a gradient step on |w_i‖g_i‖ − target|, which depends on ‖g_i‖",
    # -- weightings with signed weights --------------------------------------------------
    ("imtl-g", "nonnegative-weights"): "equal projections on unit rows need negative weights when rows conflict",
    ("aligned-mtl", "nonnegative-weights"): "the aligned basis V Λ^(-1/2) Vᵀ 1 has negative entries",
    # -- findings of the independent check (CAGrad, Aligned-MTL, FairGrad, FedFV, TERM, ...) --
    # -- existing rules, found by the property suite -------------------------------------
    # -- rules from torchjd 0.18 ---------------------------------------------------------
    ("gradvac", "permutation-invariant"): "the order in which each row visits the others is random (Wang et al. "
    "2021), drawn by row position",
    ("gradvac", "homogeneous"): "the correction is singular at cos(g_i', g_j) = −1: on exactly opposite rows it "
    "cancels g_i' down to ε and rounding, so later calls differ between scales (up to 7e-6 S seen)",
    ("pcd", "permutation-invariant"): "the first row (or the row of task `primary`) is the primary objective: "
    "reordering the rows changes which objective has priority",
    ("pcd", "homogeneous"): "ε = 1e-8 is added to the moving average of ‖g_i‖² in the rows' own units: rows with "
    "‖g_i‖² ≲ 1e-8 are no longer normalised",
    ("excess-mtl", "homogeneous"): "the official code's √(S + 1e-7) is absolute: for entries ≲ 3e-4 the excess "
    "risks, and their ratios to the baseline, change with the rows' scale",
    # -- rules from the multi-task literature --------------------------------------------
    # -- federated and robust rules ------------------------------------------------------
    ("rfa", "homogeneous"): "the smoothing ν is an absolute distance: rows much shorter than ν get the weighted mean",
    ("centered-clipping", "homogeneous"): "the clipping radius τ is absolute: scaled rows are clipped differently",
    ("fedgradnorm", "homogeneous"): "the weights step by α‖g_i‖: from the second call they depend on the rows' scale",
}
"""``(rule, property) -> reason`` for every universal property a rule does not have."""


def applies(cls: type[Rule], prop: str) -> bool:
    """Whether a property is meaningful for ``cls`` (weights exist only for weightings)."""
    return prop != "nonnegative-weights" or issubclass(cls, Weighting)


CHECKED_AT_RUNTIME: tuple[str, ...] = ("well-formed", "nonnegative-weights")
"""What every call of a weighting checks (:meth:`fedmtl.aggregation.rule.Weighting.weigh`):
finite weights of the right shape, none negative unless the rule says ``nonnegative = False``
(an aggregator's direction is checked for its shape, not its values)."""


def built_in(cls: type[Rule]) -> bool:
    """Whether ``cls`` is one of fedmtl's rules (the property suite checks those)."""
    return cls.__module__.startswith("fedmtl.")


def guaranteed(cls: type[Rule]) -> tuple[str, ...]:
    """The properties ``cls`` guarantees: universal ones minus opt-outs, plus its claims. A
    plugin's rule, which the property suite never ran, is credited with its claims and with
    what every call checks (:data:`CHECKED_AT_RUNTIME`; nonnegative weights only when its
    ``nonnegative`` says so)."""
    if built_in(cls):
        universal = [p for p in UNIVERSAL if applies(cls, p) and (cls.name, p) not in OPT_OUTS]
    elif issubclass(cls, Weighting):
        universal = [p for p in CHECKED_AT_RUNTIME if p != "nonnegative-weights" or getattr(cls, "nonnegative", False)]
    else:  # an aggregator's direction is checked for its shape only
        universal = []
    return tuple(universal + [p for p in cls.claims if p not in universal])


def unknown_claims(cls: type[Rule]) -> list[str]:
    """Claims of ``cls`` that are not in :data:`PROPERTIES` (a typo would go unchecked)."""
    return [p for p in cls.claims if p not in PROPERTIES]


def property_table(rules: dict[str, type[Rule]]) -> list[str]:
    """Markdown lines: one row per rule, one column per property (✓ guaranteed, — not
    applicable, a footnote number for an opt-out), then the opt-outs with their reasons."""
    names = list(PROPERTIES)
    lines = ["| rule | kind | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    notes: list[str] = []
    for name, cls in rules.items():
        have = guaranteed(cls)
        cells = []
        for prop in names:
            if prop in have:
                cells.append("✓")
            elif (name, prop) in OPT_OUTS:
                notes.append(f"{len(notes) + 1}. `{name}`: not {prop}, because {OPT_OUTS[(name, prop)]}.")
                cells.append(f"✗ ({len(notes)})")
            elif not applies(cls, prop):
                cells.append("—")
            else:
                cells.append("")
        lines.append(f"| `{name}` | {cls.kind} | " + " | ".join(cells) + " |")
    return lines + ["", "Opt-outs (✗: a property the rule does not have, and why):", "", *notes]
