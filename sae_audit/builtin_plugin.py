"""sae-audit's own plugin: the built-in families, formats, image sets, suites and sections.

It is registered first by :class:`sae_audit.plugins.PluginManager` (and listed
under the ``sae_audit`` entry-point group in ``pyproject.toml``), and takes the
same path as any third-party plugin: the module-level registries it reads
(:data:`sae_audit.models.adapters.ADAPTERS`, :data:`sae_audit.sae.io.FORMAT_READERS`,
:data:`sae_audit.data.demo.DEMO_SETS`, :data:`sae_audit.suites.SUITES`) are
what sae-audit ships; what the rest of the code looks things up in is the
plugin manager's registries, where plugins' contributions join them.
"""

from __future__ import annotations

from html import escape

from sae_audit.hookspecs import hookimpl


@hookimpl
def sae_audit_register_model_adapters(register):
    from sae_audit.models.adapters import ADAPTERS

    for adapter in ADAPTERS.values():
        register(adapter)


@hookimpl
def sae_audit_register_sae_formats(register):
    from sae_audit.sae.io import FORMAT_READERS

    for reader in FORMAT_READERS:
        register(reader.name, reader.detect, reader.read)


@hookimpl
def sae_audit_register_image_sets(register):
    from sae_audit.data.demo import DEMO_SETS

    for demo in DEMO_SETS.values():
        register(demo.name, demo.factory, f"{demo.description} ({demo.package})")


@hookimpl
def sae_audit_register_suites(register):
    from sae_audit.suites import SUITES

    from sae_audit.suites.coverage import CoverageAccumulator

    # Coverage always runs (the audit builds it itself); it is registered so
    # that listings and name conflicts see it.
    register("coverage", lambda c: CoverageAccumulator(c.sae.d_sae, c.sae.d_in, c.sae.k),
             "firing frequencies, alive/dead/dense latents, L0, effective units and reconstruction, ID vs OOD")
    for suite in SUITES.values():
        register(suite.name, suite.factory, suite.description, compare=suite.compare,
                 needs_labels=suite.needs_labels, needs_embeddings=suite.needs_embeddings)


def _plugins_section(results: dict):
    from sae_audit.plugins import ReportSection

    plugins = [p for p in results.get("plugins") or [] if p.get("name") != "builtin"]
    if not plugins:
        return None
    rows = [(p["name"], p.get("distribution") or "n/a", p.get("version") or "n/a") for p in plugins]

    def md(text: str) -> str:
        return str(text).replace("|", "\\|").replace("`", "\\`")

    markdown = "Plugins that took part in this audit:\n\n| plugin | distribution | version |\n|---|---|---|\n"
    markdown += "".join(f"| {md(a)} | {md(b)} | {md(c)} |\n" for a, b, c in rows)
    html = ("<table><caption>Plugins that took part in this audit</caption><thead><tr><th scope=\"col\">plugin"
            "</th><th scope=\"col\">distribution</th><th scope=\"col\">version</th></tr></thead><tbody>")
    html += "".join(f"<tr><th scope=\"row\">{escape(a)}</th><td>{escape(b)}</td><td>{escape(c)}</td></tr>"
                    for a, b, c in rows)
    html += "</tbody></table>"
    return ReportSection("Plugins", markdown, html)


@hookimpl
def sae_audit_register_report_sections(register):
    register("plugins", _plugins_section)


@hookimpl
def sae_audit_card_metadata(config):
    """``library_name``, ``tags`` (with the architecture's tag) and ``base_model`` of every SAE card.

    ``base_model`` is ``config.model`` only when it reads as a hub id (``name`` or
    ``org/name``, as ``huggingface_hub.utils.validate_repo_id`` accepts them); a local
    path (``.cache/models/x``, ``/abs/path``) is left out, as the hub would reject it.
    """
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    arch_tag = {"topk": "top-k-sae"}.get(config.architecture, f"{config.architecture}-sae")
    meta = {"library_name": "sae-audit", "tags": ["sparse-autoencoder", "interpretability", arch_tag]}
    if config.model:
        try:
            validate_repo_id(config.model)
            meta["base_model"] = config.model
        except HFValidationError:
            pass
    return meta


@hookimpl(trylast=True)
def sae_audit_audit_image_set(model, saes, image_set, config, progress, suites, judge, suite_accs):
    from sae_audit.audit import audit_image_set

    return audit_image_set(model, saes, image_set, config, progress, suites=suites, judge=judge,
                           suite_accs=suite_accs)
