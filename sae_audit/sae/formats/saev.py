"""saev checkpoints (OSU-NLP-Group/saev): a folder with ``sae.pt``.

``sae.pt`` is one line of JSON (the header), then a ``torch.save``'d state dict
(``W_enc [d_vit, d_sae]``, ``b_enc``, ``W_dec [d_sae, d_vit]``, ``b_dec``). The
state dict is read with ``torch.load(weights_only=True)``, and only from a
``torch.save`` zip archive whose entries are stored uncompressed and fit in the
file (so what is loaded is bounded by the file's size); a file that needs code
to unpickle is refused. The header's ``d_vit * exp_factor`` is compared with the
state dict's tensor shapes before the SAE is built.

Each header generation is read with the semantics of the saev code that wrote
it. What follows comes from saev's git history (github.com/OSU-NLP-Group/saev,
``saev/nn/modeling.py``, later ``src/saev/nn/modeling.py``; times EDT):

- No ``schema`` key (saev 0.1.0 on PyPI and GitHub before 2025-04-28): the
  header is the config itself (``d_vit``, ``exp_factor``, ...); the SAE is ReLU
  and ``forward`` subtracts ``b_dec`` before encoding:
  ``z = relu((x - b_dec) @ W_enc + b_enc)``.
- Schema 1, "era 1A" (``dump`` writes ``{"schema": 1, "cfg": {...}, "cls":
  <config class>, "commit": <short git hash or "unknown">, "lib": <version>}``):
  introduced in 5951e84 (2025-04-28, "successfully load old checkpoints"). Until
  e7ca004 (2025-07-31 15:25, "don't remove decoder bias since it's zero by
  default") ``forward`` still computed ``(x - b_dec) @ W_enc + b_enc``, and
  ``init_b_dec`` set ``b_dec`` to the mean of a data sample, so ``b_dec`` is far
  from zero and must be subtracted: ``apply_b_dec_to_input=True``.

  - ``cls: "Relu"``: ``z = relu(h)``.
  - ``cls: "TopK"`` (added in 33f4c14, 2025-07-15, on the branch merged by
    9f39cf8, 2025-07-31 17:34): the ``top_k`` largest entries of each row of
    ``h`` are kept with their raw values (a mask times ``h``, no ReLU):
    ``topk_relu=False``.
  - ``cls: "BatchTopK"`` (same commits): ``h`` of the whole batch is flattened
    and the ``top_k`` largest entries *of the batch* are kept (``top_k`` in
    total, not per sample and not ``top_k * batch`` as in Bussmann et al.
    2024); f5d892c (2025-07-31) only capped ``k`` at the batch's size. See
    "BatchTopK" below.

  The same header was still written for about five hours after e7ca004, by code
  whose ``forward`` no longer subtracts ``b_dec`` (e7ca004 to 65c5a2b, before
  8d38c23 switched ``dump`` to schema 2 at 2025-07-31 20:19). Those files are
  told apart by the header's ``commit`` field, when saev ran from a git
  checkout: a commit in :data:`SCHEMA1_NO_BDEC_COMMITS` is read without the
  subtraction. (A wheel install writes ``"commit": "unknown"``; such a file is
  read as era 1A, which is what the brief window of the other semantics makes
  likeliest.)
- Schema 1 with the activation as an object (``cfg.activation`` =
  ``{"cls": ..., "params": {...}}``, the "format 1B" saev's own loader
  mentions) and schema 2 (8d38c23, 2025-07-31 20:19, until schema 3 in
  4ab5d33, 2025-10-03): ``encode`` does *not* subtract ``b_dec``, and TopK
  keeps the raw selected values (no ReLU): ``apply_b_dec_to_input=False``,
  ``topk_relu=False``. BatchTopK selects per sample from 00d07b7 (2025-08-07,
  "add encode() helper") on, read as Top-k per sample; schema-2 files written
  before it (commits in :data:`SCHEMA2_BATCH_SELECTION_COMMITS`) still selected
  over the batch and are refused like era 1A's BatchTopK.
- A selected value can be negative where no ReLU follows: it still enters the
  reconstruction, but the audit's firing statistics count only values > 0 as
  firing.

BatchTopK with batch-level selection is refused, not approximated. An audit
encodes images in batches of its own size, and the era's rule keeps ``top_k``
values for the *whole* batch, so an image's code depends on which other images
share its batch and on the training batch size, which the checkpoint does not
record (nor any inference threshold). A per-image Top-k would give every image
``top_k`` latents where training gave the batch ``top_k`` in total; its L0,
FVU and firing frequencies would describe a different SAE while looking like
this one's. The message says how a user who accepts that approximation can
ask for it explicitly (``"cls": "TopK"`` in a copy of the header).
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path

import torch

from sae_audit.errors import SaeAuditError
from sae_audit.safe_files import json_type, open_regular, parse_json, printable
from sae_audit.sae.config import SAEConfig
from sae_audit.sae.formats.common import get_object, positive_int

FILE_NAME = "sae.pt"
MAX_HEADER = 1 << 20
#: Largest ``sae.pt`` read (64 GiB); it is read into memory whole.
MAX_FILE_BYTES = 64 << 30

#: saev commits (full hashes; headers hold a short prefix) whose ``dump`` wrote
#: schema 1 with ``cls`` Relu/TopK/BatchTopK while ``forward`` no longer
#: subtracted ``b_dec``: e7ca004 (2025-07-31 15:25) up to 8d38c23 (20:19, excluded).
SCHEMA1_NO_BDEC_COMMITS = (
    "e7ca004660a3ab414da7002fcecfc157d5b786aa", "ab690dc03fe95926b0f9215476db0fca46a06a2b",
    "fad99298d1458e372361f3f16693cbd672f9d71a", "795479bf1f82bb1c16f7e3bbb06ff71e35730e24",
    "5056de48451e471a2978972abcf2196b291da32c", "9f39cf867fc2bcf75bdbb04dfb6f2ffa1531e932",
    "6845bc22bdfe38d2a3e1b401b067ba8fa1a555be", "5fee417720e4c3cacca1ad2d8177c1455877838a",
    "ea2c9f59a17924f1a66b60a03fecbad66fbe9848", "8aecac1833f6412b9f6262b28b90248da6d49d26",
    "f5d892c65a1b2cec1603651f820b884c13656a93", "65c5a2b55e11c380d1b0ae537524977b240b346d",
)
#: saev commits that wrote schema 2 while BatchTopK still selected over the
#: flattened batch: 8d38c23 (2025-07-31 20:19) up to 00d07b7 (2025-08-07, excluded).
SCHEMA2_BATCH_SELECTION_COMMITS = (
    "8d38c23a353bc3cadd5c316a5a6b8ed56801bbd0", "9ecf55ba4f6601bf3c3114314514537b198673e4",
    "4ddfb898236269a091d88d32aec584f239139228", "afb8679f7b16109df4ae1c4ca61b60330904080f",
    "89cb76f934966988f685e7aac719aa084084572c", "2fe190b73b2435b2dfcc48a2c6d19ffeb0c668a6",
)
_ACTIVATIONS = ("Relu", "TopK", "BatchTopK")


def detect(folder: Path) -> bool:
    """A ``sae.pt`` in the folder (it may be a non-regular file: ``read`` says so)."""
    return os.path.lexists(folder / FILE_NAME)


def _written_by(header: dict, commits: tuple[str, ...]) -> bool:
    """Whether the header's ``commit`` (a short git hash) is one of ``commits``."""
    commit = header.get("commit")
    if not isinstance(commit, str) or len(commit) < 7:
        return False
    commit = commit.strip().lower()
    return all(c in "0123456789abcdef" for c in commit) and any(full.startswith(commit) for full in commits)


def _split(path: Path) -> tuple[dict, bytes]:
    not_saev = (f"{printable(path)} does not start with a JSON header line, so it is not a saev checkpoint "
                "(sae-audit does not unpickle arbitrary .pt files)")
    with open_regular(path, "saev checkpoint", MAX_FILE_BYTES) as fh:
        line = fh.readline(MAX_HEADER)
        rest = fh.read()
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise SaeAuditError(not_saev) from None
    header = parse_json(text, f"{printable(path)}: the header line", not_json=not_saev)
    if not isinstance(header, dict):
        raise SaeAuditError(f"{printable(path)}: the header line must be a JSON object, not {json_type(header)}")
    return header, rest


def _batch_refusal(source, k: int, when: str) -> SaeAuditError:
    return SaeAuditError(
        f"{source}: this saev BatchTopK SAE ({when}) kept the top_k={k} largest values of a whole training "
        "batch, not top_k per image, so an image's code depends on the rest of its batch and on a batch size "
        "the checkpoint does not record; sae-audit will not guess a per-image rule. To audit it as a per-image "
        "Top-k SAE anyway (top_k latents per image, raw values), change \"BatchTopK\" to \"TopK\" in the first "
        "line of a copy of sae.pt and load the copy"
    )


def _config(header: dict, source) -> SAEConfig:
    schema = header.get("schema")
    if schema is not None and (not isinstance(schema, int) or isinstance(schema, bool)):
        raise SaeAuditError(f"{source}: the header's schema must be an integer, got {json_type(schema)} {schema!r}")
    batch_level = False
    if schema is None:
        cfg = header
        kind, params, b_dec_in = "Relu", {}, True
    elif schema in (1, 2):
        cfg = get_object(header, "cfg", source)
        if "cfg" not in header:
            raise SaeAuditError(f"{source}: header schema {schema} lacks the 'cfg' object")
        act = cfg.get("activation")
        if schema == 1 and header.get("cls") in _ACTIVATIONS:  # era 1A: the config class names the activation
            kind, params = header["cls"], {"top_k": cfg.get("top_k", 32)}
            b_dec_in = not _written_by(header, SCHEMA1_NO_BDEC_COMMITS)
            batch_level = True
            when = "saev schema 1, written between 2025-07-15 and 2025-07-31"
        elif isinstance(act, dict):
            kind, params = act.get("cls"), get_object(act, "params", source)
            b_dec_in = False
            batch_level = schema == 1 or _written_by(header, SCHEMA2_BATCH_SELECTION_COMMITS)
            when = "saev schema 2, written between 2025-07-31 and 2025-08-07"
        elif act is None:
            raise SaeAuditError(
                f"{source}: header schema {schema} names no activation (cfg.activation, or the header's cls "
                f"Relu/TopK/BatchTopK; cls is {header.get('cls')!r}), so its encoding is unknown"
            )
        else:
            raise SaeAuditError(f"{source}: cfg.activation must be a JSON object, got {json_type(act)}")
    else:
        raise SaeAuditError(f"{source}: saev header schema {schema!r} is not supported (1 or 2, or none)")
    d_vit = positive_int(cfg, "d_vit", source)
    exp = positive_int(cfg, "exp_factor", source)
    d_sae = d_vit * exp
    if kind == "Relu":
        return SAEConfig(d_in=d_vit, d_sae=d_sae, k=d_sae, architecture="relu", apply_b_dec_to_input=b_dec_in)
    if kind in ("TopK", "BatchTopK"):
        k = positive_int(params, "top_k", source)
        if kind == "BatchTopK" and batch_level:
            raise _batch_refusal(source, k, when)
        return SAEConfig(d_in=d_vit, d_sae=d_sae, k=k, architecture="topk",
                         apply_b_dec_to_input=b_dec_in, topk_relu=False)
    raise SaeAuditError(f"{source}: saev activation {kind!r} is not supported (Relu, TopK, BatchTopK)")


def _check_archive(rest: bytes, path) -> None:
    """The weights must be a ``torch.save`` zip whose entries are stored, and together no larger than the file."""
    try:
        infos = zipfile.ZipFile(io.BytesIO(rest)).infolist()
    except (zipfile.BadZipFile, ValueError, OSError, EOFError):
        raise SaeAuditError(
            f"{printable(path)}: the weights after the header are not a torch.save archive (zip); refused "
            "without unpickling"
        ) from None
    if any(i.compress_type != zipfile.ZIP_STORED for i in infos) or sum(i.file_size for i in infos) > len(rest):
        raise SaeAuditError(
            f"{printable(path)}: the weights archive holds compressed entries that would expand beyond the "
            "file's size (torch.save never writes those); refused"
        )


def read(folder: Path):
    """Read ``sae.pt``, checking the header against the state dict's shapes before building the SAE.

    Raises:
        SaeAuditError: the file is missing, not a regular file, lacks a JSON
            header line (or it is nested too deeply, or has keys of the wrong
            type), is of an unsupported schema or activation, is a BatchTopK
            SAE whose selection was over the batch (see the module docstring),
            or its weights are not a plain tensor state dict matching the header.
    """
    from sae_audit.sae.io import sae_from_tensors

    path = folder / FILE_NAME
    header, rest = _split(path)
    config = _config(header, path)
    _check_archive(rest, path)
    try:
        state = torch.load(io.BytesIO(rest), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError, OSError) as exc:
        raise SaeAuditError(
            f"{path}: the weights after the header are not a plain tensor state dict; refused without "
            f"unpickling ({str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__})"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SaeAuditError(f"{path}: the weights after the header are not a tensor state dict")
    return sae_from_tensors(config, dict(state), path)
