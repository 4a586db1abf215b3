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

import json
import os
import re
import stat
import tempfile
from pathlib import Path

from sae_audit.errors import SaeAuditError, is_network_error
from sae_audit.safe_files import describe_mode, printable, read_text

BEGIN = "<!-- sae-audit:begin -->"
BOM = "\ufeff"
#: Largest model card read (16 MiB); hub cards are a few kilobytes.
MAX_CARD_BYTES = 16 << 20
END = "<!-- sae-audit:end -->"
SOURCE_NAME = "sae-audit"
TASK_TYPE = "image-feature-extraction"

# (scope, key) of the metrics written into model-index.
CARD_METRICS = [("dataset", "fvu"), ("dataset", "alive_fraction"), ("pair", "fvu_gap"), ("pair", "shared_alive"),
                ("pair", "js_divergence")]


# --------------------------------------------------------------------------- reading a card
def split_front_matter(text: str, where: str = "model card") -> tuple[dict, str]:
    """Parse ``text`` into (front-matter dict, body) the way the hub reads a card.

    A leading UTF-8 byte-order mark is ignored (the body never starts with it).

    Raises:
        SaeAuditError: the front matter is not closed, is not valid YAML (the
            message gives the line and column in the file), is nested too
            deeply for the YAML parser, or is not a mapping.
    """
    import yaml

    text = text[1:] if text.startswith(BOM) else text
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
    except RecursionError:
        raise SaeAuditError(f"{where}: the YAML front matter (lines 2-{end}) is nested too deeply (lists or "
                            "mappings inside each other thousands of levels deep); fix the card before sae-audit "
                            "edits it") from None
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


def card_metrics(results: dict) -> list:
    """The metrics written into ``model-index``: :data:`CARD_METRICS`, then every suite metric of the document
    that has a direction (a descriptive one, such as an input count, says nothing about the model)."""
    from sae_audit.results.metric_info import METRICS, document_metrics

    chosen = [METRICS[key] for _, key in CARD_METRICS]
    return chosen + [m for m in document_metrics(results).values() if m.suite and m.higher_is_better is not None]


def eval_results(results: dict, source_url: str):
    """``model-index`` entries (a list of :class:`huggingface_hub.EvalResult`) for an audit.

    One entry per SAE, image set and metric of :func:`card_metrics`; pair
    metrics are filed under the OOD set with the ID set in ``metric_config``.
    Missing (``None``) values are left out, never written as ``null``.
    """
    from huggingface_hub import EvalResult

    from sae_audit.results.metric_info import is_number, metric_items

    out = []
    roles = {d["name"]: d["role"].upper() for d in results["datasets"]}
    for s in results["saes"]:
        label = s["label"]
        for info in card_metrics(results):
            for name, id_name, value in metric_items(s, info):
                if not is_number(value) or name not in roles:
                    continue
                config = f"{label}; {roles[name]}" if id_name is None else f"{label}; ID {id_name} vs OOD {name}"
                base, split = _split_name(name)
                out.append(EvalResult(
                    task_type=TASK_TYPE, task_name="SAE audit",
                    dataset_type=base, dataset_name=name, dataset_split=split,
                    metric_type=f"sae-audit/{info.key}", metric_value=float(value),
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


# --------------------------------------------------------------------------- finding the section
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")


def find_markers(body: str, marker: str) -> list[tuple[int, int]]:
    """The ``(start, end)`` offsets in ``body`` of every ``marker`` that is a marker line outside code fences.

    A marker line holds the marker alone, indented by at most three spaces (as
    an HTML block must be in CommonMark: four make an indented code block).
    Fenced code blocks follow CommonMark: a line of at least three backticks or
    tildes, indented by at most three spaces (a backtick fence's info string
    holds no backtick), opens a block that only a line of the same character,
    at least as long and followed by nothing but spaces, closes; an unclosed
    fence runs to the end of the document. A marker shown inside such a block
    (say, in documentation of this very feature) is left alone.
    """
    out: list[tuple[int, int]] = []
    fence: tuple[str, int] | None = None
    for m in _LINE.finditer(body):
        line = m.group().rstrip("\r\n")
        f = _FENCE.match(line)
        if fence is not None:
            if f and f.group(1)[0] == fence[0] and len(f.group(1)) >= fence[1] and not f.group(2).strip(" \t"):
                fence = None
            continue
        if f and not (f.group(1)[0] == "`" and "`" in f.group(2)):
            fence = (f.group(1)[0], len(f.group(1)))
            continue
        text = line.rstrip(" \t")
        indent = len(text) - len(text.lstrip(" "))
        if indent <= 3 and text[indent:] == marker:
            out.append((m.start() + indent, m.start() + indent + len(marker)))
    return out


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
        raise SaeAuditError(f"model card folder {printable(path)} does not exist")
    return p


def update_card_text(text: str, results: dict, report_link: str, where: str = "model card",
                     source_url: str | None = None) -> str:
    """The card ``text`` with the audit section and eval results in place (pure; no I/O).

    The section is the text from the :data:`BEGIN` line to the :data:`END`
    line; markers inside fenced code blocks are text, not markers (see
    :func:`find_markers`). A leading byte-order mark is kept.

    Raises:
        SaeAuditError: malformed front matter (see :func:`split_front_matter`),
            markers present but out of order or repeated.
    """
    from huggingface_hub import ModelCard

    if text.startswith(BOM):
        return BOM + update_card_text(text[1:], results, report_link, where, source_url)
    meta, _ = split_front_matter(text, where)
    try:
        card = ModelCard(text if meta or text.lstrip().startswith("---") else "---\n{}\n---\n" + text)
    except (ValueError, TypeError) as exc:
        raise SaeAuditError(f"{where}: huggingface_hub cannot read the card's metadata: {exc}") from None
    body = card.text
    section = card_section(results, report_link)
    begins, ends = find_markers(body, BEGIN), find_markers(body, END)
    if len(begins) != len(ends) or len(begins) > 1 or (begins and begins[0][0] > ends[0][0]):
        raise SaeAuditError(f"{where}: the sae-audit markers {BEGIN} / {END} are repeated or out of order; "
                            "remove the broken section by hand")
    if begins:
        start, stop = begins[0][0], ends[0][1]
        body = body[:start] + section.rstrip("\n") + body[stop:]
    else:
        body = body.rstrip("\n") + ("\n\n" if body.strip() else "\n") + section
    card.text = body
    kept = [r for r in (card.data.eval_results or []) if r.source_name != SOURCE_NAME]
    card.data.eval_results = kept + eval_results(results, source_url or report_link)
    if not card.data.model_name:
        card.data.model_name = Path(str(results["model"]["name"]).rstrip("/")).name or "model"
    return card.content


def card_target(card: str | os.PathLike,
                results_path: str | os.PathLike | None = None) -> tuple[Path, os.stat_result | None]:
    """The file a card update writes, and its current status (``None`` when it does not exist yet).

    Rules, so that writing a card never destroys something that is not a card:

    - an existing card must be a regular file: a FIFO, a device (``/dev/stdout``),
      a socket or a folder is refused, never replaced by a regular file;
    - a symbolic link to a regular file is written *through*: the target file
      gets the new content and the link stays a link; a dangling or looping
      link is refused;
    - a card nobody may write (no write bit in its mode, e.g. 0444) or this
      user cannot write is refused, as is a card in a folder this user cannot
      write;
    - the card must not be ``results_path`` (the results being turned into the
      card; compared as files, so links and hard links count), nor any file
      that holds a sae-audit results document.

    Raises:
        SaeAuditError: one of the rules above is broken (the message says
            which and what to do); the card's folder does not exist.
    """
    path = card_path(card)
    shown = printable(path)
    if os.path.islink(path):
        try:
            st = os.stat(path)
        except OSError as exc:
            raise SaeAuditError(f"model card {shown} is a symbolic link that cannot be followed "
                                f"({exc.strerror or exc}); point it at an existing file or pass another path") from None
        target = Path(os.path.realpath(path))
    else:
        target = path
        try:
            st = os.stat(path)
        except FileNotFoundError:
            st = None
        except OSError as exc:
            raise SaeAuditError(f"cannot use model card {shown}: {exc.strerror or exc}") from None
    if st is None:
        if not path.parent.is_dir():
            raise SaeAuditError(f"cannot write model card {shown}: folder {printable(path.parent)} does not exist")
    elif not stat.S_ISREG(st.st_mode):
        raise SaeAuditError(f"model card {shown} is {describe_mode(st.st_mode)}, not a regular file; sae-audit "
                            "only replaces regular files; pass the path of a README.md to write")
    if results_path is not None and st is not None:
        try:
            same = os.path.samefile(target, results_path)
        except OSError:
            same = False
        if same:
            raise SaeAuditError(f"model card {shown} is the results file being read ({printable(results_path)}); "
                                "pass another path for the card (e.g. the model's README.md)")
    if st is not None:
        if st.st_mode & 0o222 == 0 or not os.access(target, os.W_OK):
            raise SaeAuditError(f"model card {shown} is read-only (mode {stat.S_IMODE(st.st_mode):04o}); make it "
                                "writable (chmod u+w) or pass another path; it was left untouched")
    if not os.access(target.parent, os.W_OK | os.X_OK):
        raise SaeAuditError(f"cannot write model card {shown}: this user cannot create files in "
                            f"{printable(target.parent)}")
    return target, st


def _looks_like_results(text: str) -> bool:
    if not text.lstrip().startswith("{"):
        return False
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return False
    return isinstance(data, dict) and "schema_version" in data and "saes" in data and "datasets" in data


def _replace_file(target: Path, data: bytes, old: os.stat_result | None) -> None:
    """Write ``data`` to ``target`` through a temporary file and a rename, keeping the old file's mode and owner."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), stat.S_IMODE(old.st_mode) if old is not None else 0o644)
            if old is not None and hasattr(os, "fchown") and (old.st_uid, old.st_gid) != (os.geteuid(), os.getegid()):
                try:
                    os.fchown(f.fileno(), old.st_uid, old.st_gid)
                except OSError:
                    pass  # only root may give a file away; the mode is kept either way
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def update_card(results: dict, card: str | os.PathLike, report_link: str, source_url: str | None = None,
                results_path: str | os.PathLike | None = None) -> Path:
    """Insert or replace the audit section and eval results in the local card ``card`` (file or folder).

    ``report_link`` is where the section links the full report; ``source_url``
    (default: the same) goes into each eval result's ``source.url``;
    ``results_path``, the results file ``results`` was read from, is refused
    as the card.

    A missing card file is created (mode 0644). An existing one is checked by
    :func:`card_target` (regular file, writable, not the results), read (at
    most :data:`MAX_CARD_BYTES`, a leading UTF-8 byte-order mark kept),
    written under a temporary name, parsed back with huggingface_hub's
    :class:`~huggingface_hub.ModelCard`, and renamed over the old one with the
    old one's mode (and owner, where allowed). A symbolic link to the card is
    kept: its target is replaced.

    Returns:
        The path written (the link's target for a link).
    Raises:
        SaeAuditError: malformed front matter or markers; the folder does not
            exist; any refusal of :func:`card_target`; the card is not UTF-8,
            too large, or holds a sae-audit results document.
    """
    from huggingface_hub import ModelCard

    target, old = card_target(card, results_path)
    shown = printable(card_path(card))
    text = read_text(target, MAX_CARD_BYTES, "model card") if old is not None else ""
    if _looks_like_results(text):
        raise SaeAuditError(f"{shown} holds a sae-audit results document, not a model card; pass the card's "
                            "path (e.g. the model's README.md) and leave the results where they are")
    new = update_card_text(text, results, report_link, shown, source_url)
    try:
        ModelCard(new[1:] if new.startswith(BOM) else new)  # validates the YAML and model-index as the hub reads them
    except (ValueError, TypeError) as exc:
        raise SaeAuditError(f"{shown}: huggingface_hub cannot read the updated card: {exc}") from None
    try:
        _replace_file(target, new.encode("utf-8"), old)
    except OSError as exc:
        raise SaeAuditError(f"cannot write model card {shown}: {exc.strerror or exc}; it was left untouched") from None
    return target


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


def check_repo_id(repo_id: str) -> None:
    """Refuse a malformed hub repository id before anything is written or sent.

    Raises:
        SaeAuditError: ``repo_id`` is not ``user/name`` (huggingface_hub's own rules).
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        if not _REPO_ID.match(repo_id or ""):
            raise HFValidationError("expected user/name")
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise SaeAuditError(f"`push` {repo_id!r} is not a hub repository id (user/name): {exc}",
                            field="push") from None


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

    check_repo_id(repo_id)
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
    except Exception as exc:  # noqa: BLE001 - no network, DNS, TLS, a proxy, an unreachable endpoint
        if not is_network_error(exc):
            raise
        raise SaeAuditError(f"could not reach the Hugging Face hub to push to {repo_id} ({type(exc).__name__}: "
                            f"{exc}); the local card was written, nothing was uploaded") from None
    return getattr(info, "pr_url", None) or getattr(info, "commit_url", str(info))
