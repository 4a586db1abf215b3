"""Hugging Face model cards: an audit section and ``model-index`` entries, written locally or pushed.

:func:`update_card` inserts (or replaces) one marked section in a model card
(``README.md``) and merges ``model-index`` evaluation results built with
huggingface_hub's :class:`~huggingface_hub.EvalResult` / :class:`~huggingface_hub.ModelCardData`.
It is idempotent: the section sits between :data:`BEGIN` and :data:`END`
markers and every eval result it adds carries ``source.name == "sae-audit"``,
so running it again replaces both instead of adding copies. Results by other
tools are kept. :func:`push_card` uploads the card and the report files in one
commit, by default as a pull request pinned to the revision it read
(``parent_commit``), so a concurrent edit is never overwritten.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from sae_audit.errors import SaeAuditError

BEGIN = "<!-- sae-audit:begin -->"
END = "<!-- sae-audit:end -->"
SOURCE_NAME = "sae-audit"
TASK_TYPE = "image-feature-extraction"

# (scope, key) of the metrics written into model-index.
CARD_METRICS = [("dataset", "fvu"), ("dataset", "alive_fraction"), ("pair", "fvu_gap"), ("pair", "shared_alive"),
                ("pair", "js_divergence")]


# --------------------------------------------------------------------------- reading a card
def split_front_matter(text: str, where: str = "model card") -> tuple[dict, str]:
    """Parse ``text`` into (front-matter dict, body) the way the hub reads a card.

    Raises:
        SaeAuditError: the front matter is not closed, is not valid YAML (the
            message gives the line and column in the file), or is not a mapping.
    """
    import yaml

    lines = text.splitlines(keepends=True)
    if not lines or lines[0].strip() != "---":
        return {}, text
    end = next((i for i in range(1, len(lines)) if lines[i].strip() == "---"), None)
    if end is None:
        raise SaeAuditError(f"{where}: the YAML front matter opened by '---' on line 1 is never closed by a "
                            "'---' line; fix the card before sae-audit edits it")
    block = "".join(lines[1:end])
    try:
        data = yaml.safe_load(block)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 2}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SaeAuditError(f"{where}: malformed YAML front matter{at}: {problem}; fix the card before "
                            "sae-audit edits it") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SaeAuditError(f"{where}: the YAML front matter (lines 2-{end}) is a {type(data).__name__}, "
                            "not a mapping of keys to values")
    return data, "".join(lines[end + 1:])


# --------------------------------------------------------------------------- what goes in
def _split_name(name: str) -> tuple[str, str]:
    """``fashion-mnist:test`` -> (``fashion-mnist``, ``test``); a name without split -> (name, ``full``)."""
    base, _, split = name.partition(":")
    return base, split or "full"


def eval_results(results: dict, source_url: str):
    """``model-index`` entries (a list of :class:`huggingface_hub.EvalResult`) for an audit.

    One entry per SAE, image set and metric of :data:`CARD_METRICS`; pair
    metrics are filed under the OOD set with the ID set in ``metric_config``.
    Missing (``None``) values are left out, never written as ``null``.
    """
    from huggingface_hub import EvalResult

    from sae_audit.results.metric_info import METRICS

    out = []
    id_name = next(d["name"] for d in results["datasets"] if d["role"] == "id")
    for s in results["saes"]:
        label = s["label"]
        for scope, key in CARD_METRICS:
            info = METRICS[key]
            if scope == "dataset":
                items = [(n, s["datasets"][n].get(key), f"{label}; {role}")
                         for n, role in ((d["name"], d["role"].upper()) for d in results["datasets"])]
            else:
                items = [(p["ood"], p.get(key), f"{label}; ID {id_name} vs OOD {p['ood']}") for p in s["pairs"]]
            for name, value, config in items:
                if value is None:
                    continue
                base, split = _split_name(name)
                out.append(EvalResult(
                    task_type=TASK_TYPE, task_name="SAE audit",
                    dataset_type=base, dataset_name=name, dataset_split=split,
                    metric_type=f"sae-audit/{key}", metric_value=float(value),
                    metric_name=f"{info.label} [{label}]", metric_config=config,
                    source_name=SOURCE_NAME, source_url=source_url,
                ))
    return out


def card_section(results: dict, report_link: str) -> str:
    """The Markdown audit section (between :data:`BEGIN` and :data:`END`), every name escaped."""
    from sae_audit.report.markdown import md_escape as md
    from sae_audit.report.sections import verdict
    from sae_audit.report.view import fmt

    id_name = next(d["name"] for d in results["datasets"] if d["role"] == "id")
    lines = [BEGIN, "## Sparse-autoencoder audit", "",
             f"Audited with sae-audit {md(results['tool'].get('version', ''))} on "
             f"{md(results.get('created', ''))}: model {md(results['model']['name'])}, "
             f"ID set {md(id_name)}. Full report: [{md(report_link)}]({report_link}).", ""]
    lines += [f"- {md(v)}" for v in verdict(results)]
    lines += ["", "| SAE | OOD set | FVU ID | FVU OOD | FVU gap (lower is better) | shared alive (higher is better) |",
              "|---|---|---|---|---|---|"]
    for s in results["saes"]:
        for p in s["pairs"]:
            lines.append(f"| {md(s['label'])} | {md(p['ood'])} | {fmt(s['datasets'][id_name].get('fvu'))} | "
                         f"{fmt(s['datasets'][p['ood']].get('fvu'))} | {fmt(p.get('fvu_gap'))} | "
                         f"{fmt(p.get('shared_alive'), pct=True)} |")
    lines += ["", END]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- writing a card
def card_path(path: str | os.PathLike) -> Path:
    """``path`` itself, or ``path/README.md`` for a folder.

    Raises:
        SaeAuditError: ``path`` ends with a slash (a folder) that does not exist.
    """
    p = Path(path)
    if p.is_dir():
        return p / "README.md"
    if str(path).endswith(("/", os.sep)):
        raise SaeAuditError(f"model card folder {path} does not exist")
    return p


def update_card_text(text: str, results: dict, report_link: str, where: str = "model card",
                     source_url: str | None = None) -> str:
    """The card ``text`` with the audit section and eval results in place (pure; no I/O).

    Raises:
        SaeAuditError: malformed front matter (see :func:`split_front_matter`),
            markers present but out of order or repeated.
    """
    from huggingface_hub import ModelCard

    meta, _ = split_front_matter(text, where)
    try:
        card = ModelCard(text if meta or text.lstrip().startswith("---") else "---\n{}\n---\n" + text)
    except (ValueError, TypeError) as exc:
        raise SaeAuditError(f"{where}: huggingface_hub cannot read the card's metadata: {exc}") from None
    body = card.text
    section = card_section(results, report_link)
    n_begin, n_end = body.count(BEGIN), body.count(END)
    if n_begin != n_end or n_begin > 1 or (n_begin == 1 and body.index(BEGIN) > body.index(END)):
        raise SaeAuditError(f"{where}: the sae-audit markers {BEGIN} / {END} are repeated or out of order; "
                            "remove the broken section by hand")
    if n_begin:
        start, stop = body.index(BEGIN), body.index(END) + len(END)
        body = body[:start] + section.rstrip("\n") + body[stop:]
    else:
        body = body.rstrip("\n") + ("\n\n" if body.strip() else "\n") + section
    card.text = body
    kept = [r for r in (card.data.eval_results or []) if r.source_name != SOURCE_NAME]
    card.data.eval_results = kept + eval_results(results, source_url or report_link)
    if not card.data.model_name:
        card.data.model_name = Path(str(results["model"]["name"]).rstrip("/")).name or "model"
    return card.content


def update_card(results: dict, card: str | os.PathLike, report_link: str, source_url: str | None = None) -> Path:
    """Insert or replace the audit section and eval results in the local card ``card`` (file or folder).

    ``report_link`` is where the section links the full report; ``source_url``
    (default: the same) goes into each eval result's ``source.url``.

    A missing card file is created. The file is written under a temporary name
    and renamed, and the written card is parsed back with huggingface_hub's
    :class:`~huggingface_hub.ModelCard` before it replaces the old one.

    Raises:
        SaeAuditError: malformed front matter or markers; the folder does not exist.
    """
    from huggingface_hub import ModelCard

    from sae_audit.outputs import atomic_write_text

    path = card_path(card)
    if not path.parent.is_dir():
        raise SaeAuditError(f"cannot write model card {path}: folder {path.parent} does not exist")
    try:
        text = path.read_text(encoding="utf-8") if path.exists() else ""
    except (OSError, UnicodeDecodeError) as exc:
        raise SaeAuditError(f"cannot read model card {path}: {exc}") from None
    new = update_card_text(text, results, report_link, str(path), source_url)
    ModelCard(new)  # validates the YAML and model-index the way the hub library reads them
    atomic_write_text(path, new)
    return path


# --------------------------------------------------------------------------- pushing
def hub_token(token: str | None = None) -> str:
    """The token to push with: ``token``, else huggingface_hub's (``HF_TOKEN`` or ``hf auth login``).

    Raises:
        SaeAuditError: no token anywhere, or ``HF_HUB_OFFLINE`` is set.
    """
    from huggingface_hub import constants, get_token

    if constants.HF_HUB_OFFLINE:
        raise SaeAuditError("HF_HUB_OFFLINE is set: cannot push, nothing was uploaded. Unset HF_HUB_OFFLINE "
                            "to push, or drop --push to write the card locally")
    token = token or get_token()
    if not token:
        raise SaeAuditError("no Hugging Face token: set HF_TOKEN or run `hf auth login`, then push again; "
                            "nothing was uploaded (drop --push to write the card locally)")
    return token


_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def push_card(repo_id: str, card: str | os.PathLike, report_files: dict[str, Path], token: str | None = None,
              create_pr: bool = True, revision: str | None = None) -> str:
    """Upload the card as ``README.md`` and ``report_files`` (``{path in repo: local file}``) in one commit.

    The commit is based on the repository's current head (``parent_commit``):
    if someone pushes in between, the hub rejects it instead of overwriting.
    Returns the commit or pull-request URL.

    Raises:
        SaeAuditError: a malformed repo id, no token (nothing is sent), the hub
            refuses (no access, no such repository, a concurrent edit).
    """
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    if not _REPO_ID.match(repo_id):
        raise SaeAuditError(f"--push {repo_id!r} is not a hub repository id (user/name)")
    token = hub_token(token)
    api = HfApi(token=token)
    ops = [CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=str(card_path(card)))]
    ops += [CommitOperationAdd(path_in_repo=k, path_or_fileobj=str(v)) for k, v in sorted(report_files.items())]
    try:
        parent = api.model_info(repo_id, revision=revision).sha
        info = api.create_commit(
            repo_id, operations=ops, commit_message="Add sae-audit report and model-card section",
            create_pr=create_pr, parent_commit=parent, revision=revision,
        )
    except HfHubHTTPError as exc:
        raise SaeAuditError(f"the hub refused the push to {repo_id}: {exc}") from None
    return getattr(info, "pr_url", None) or getattr(info, "commit_url", str(info))
