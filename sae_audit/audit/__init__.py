"""One audit: images -> model -> hook points -> SAEs -> suites -> results dict.

Two entry points:

- :func:`run_audit` takes an :class:`AuditRequest` (what ``sae-audit run``
  builds from its flags): it opens the image sets, loads the SAEs and the
  model (at the SAEs' training resolution unless told otherwise) and the
  judge model, and audits;
- :func:`audit_loaded` audits objects already in memory (a
  :class:`~sae_audit.models.VisionModel`, :class:`AuditedSAE` s, image sets).

Each image set is read once; every hook point any SAE needs is captured in one
forward pass per batch (stopped after the deepest hooked block), every SAE
encodes, and the codes stream into per-(SAE, set) accumulators. The returned
dict is the ``results.json`` document (:mod:`sae_audit.results`).

Plugins take part through the lifecycle hooks (:mod:`sae_audit.hookspecs`):
``sae_audit_run_configured`` before the first image, ``sae_audit_audit_image_set``
around each image set (the built-in plugin's implementation is
:func:`audit_image_set`), ``sae_audit_run_finished`` on the finished document.
"""

from sae_audit.audit.request import AuditRequest, AuditSettings
from sae_audit.audit.run import audit_loaded, run_audit
from sae_audit.audit.stream import (
    AuditContext,
    AuditedSAE,
    ImageSetAudit,
    audit_image_set,
    check_compatible,
    check_suite_output,
    sae_hook_point,
    sae_label,
)

__all__ = [
    "AuditContext", "AuditRequest", "AuditSettings", "AuditedSAE", "ImageSetAudit", "audit_image_set", "audit_loaded",
    "check_compatible", "check_suite_output", "run_audit", "sae_hook_point", "sae_label",
]
