"""The hooks: the ``rotate`` image-set family, the ``concentration`` suite with its metrics, a report section.

This module is what the ``sae_audit`` entry point names; sae-audit registers
it with its plugin manager, which calls the functions below once, at start-up.
"""

from __future__ import annotations

from sae_audit.hookspecs import hookimpl
from sae_audit.results import MetricInfo

from sae_audit_concentration.rotated import open_rotated
from sae_audit_concentration.section import concentration_section
from sae_audit_concentration.suite import ConcentrationAccumulator, compare


@hookimpl
def sae_audit_register_image_sets(register):
    register("rotate", open_rotated, "any set rotated by DEG degrees: rotate:DEG:SET (e.g. rotate:90:digits)",
             family=True)


#: What the suite's output holds, declared so that --fail-on, report diff, the model card and the verdict know.
METRICS = [
    MetricInfo("firing_entropy", "firing entropy (bits)", None, "dataset",
               "entropy of the distribution of firings over latents", path="entropy_bits",
               interval="entropy_bits_ci", digits=2),
    MetricInfo("top1pct_share", "share of firings in the top 1% of latents", None, "dataset",
               "share of all firings held by the ceil(d_sae / 100) latents that fire most", pct=True,
               interval="top1pct_share_ci"),
    MetricInfo("entropy_drop", "firing-entropy drop, ID − OOD (bits)", False, "pair",
               "how much the OOD set's firings crowd onto fewer latents than the ID set's",
               interval="entropy_drop_ci", floor="entropy_drop_floor_ci", digits=2),
    MetricInfo("top1pct_share_gap", "top-1% share gap, OOD − ID", False, "pair",
               "how much more of the OOD set's firings the top 1% of latents hold", pct=True,
               interval="top1pct_share_gap_ci", floor="top1pct_share_gap_floor_ci"),
]


@hookimpl
def sae_audit_register_suites(register):
    register("concentration", lambda context: ConcentrationAccumulator(context.sae.d_sae, seed=context.seed),
             "firing entropy and top-1% share of latents, with bootstrap intervals; ID vs OOD against a noise floor",
             compare=compare, metrics=METRICS)


@hookimpl
def sae_audit_register_report_sections(register):
    register("firing-concentration", concentration_section)
