"""Which plugins took part in an audit: the ``plugins`` list of ``results.json``.

A plugin took part when it contributed something to the run: the model
family's adapter, the reader of an audited SAE's format, an image set (or the
base of one: :meth:`sae_audit.data.ImageSet.lineage`), a suite that ran, or an
implementation of a lifecycle hook (it saw the run, and could change it).
sae-audit's built-in plugin always takes part. Plugins that were merely
installed are in ``provenance.plugins`` instead.
"""

from __future__ import annotations

from sae_audit.models.registry import family_registrations
from sae_audit.plugin_manager import BUILTIN, PluginManager

#: Hooks whose implementations see every run.
LIFECYCLE_HOOKS = ("sae_audit_run_configured", "sae_audit_audit_image_set", "sae_audit_run_finished")


def plugins_that_took_part(manager: PluginManager, vm, saes, image_sets, suites) -> list[dict]:
    """``[{name, distribution, version}]`` of the plugins that contributed to this run, built-in first.

    Args:
        vm: the audited :class:`~sae_audit.models.VisionModel`.
        saes: the :class:`~sae_audit.audit.AuditedSAE` s.
        image_sets: every :class:`~sae_audit.data.ImageSet` of the run.
        suites: the :class:`~sae_audit.suites.SuiteInfo` s that ran.
    """
    names = {BUILTIN}
    names |= {r.plugin for r in family_registrations() if r.value is getattr(vm, "adapter", None)}
    names |= {getattr(item.sae, "read_by", None) for item in saes}
    names |= {s.registered_by for image_set in image_sets for s in image_set.lineage()}
    names |= {info.plugin for info in suites}
    for hook in LIFECYCLE_HOOKS:
        names |= set(manager.implementers(hook))
    return manager.provenance(only=names - {None})
