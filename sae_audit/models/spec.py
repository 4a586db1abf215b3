"""Which vision model to load, and how: the model part of every request."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sae_audit.errors import SaeAuditError
from sae_audit.options import option

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("float32", "bfloat16", "float16")
#: The largest input side accepted (pixels); the SAE config and the image decoder use the same bound.
MAX_IMAGE_SIZE = 4096
#: The longest model name a report shows.
MAX_DISPLAY_NAME = 200
#: The most of a local model card read to find its recorded name.
MAX_CARD_BYTES = 1 << 20


@dataclass(frozen=True)
class ModelSpec:
    """A Hugging Face vision model to load (:func:`sae_audit.models.load_model` loads it).

    Raises:
        SaeAuditError: a field out of range (the message names the field).
    """

    name: str = option(help="hub id (e.g. facebook/dinov2-small) or a local model folder", metavar="MODEL")
    revision: str | None = option(None, help="hub revision (branch, tag or commit hash) to pin")
    device: str = option("auto", choices=DEVICES,
                         help="where to run the model and SAEs (auto: a GPU when there is one; 'cuda:N' from Python)")
    dtype: str = option("float32", choices=DTYPES, help="model weights' dtype (SAEs always run in float32)")
    image_size: int | None = option(
        None, metavar="PX",
        help="resize and centre-crop images to PX x PX (a multiple of the patch size); default: the model's own "
             "preprocessing (an audit uses the SAEs' recorded training resolution when they agree on one)")
    trust_remote_code: bool = option(False, help="allow model code from the hub (off by default)")
    display_name: str | None = option(
        None, metavar="NAME",
        help="how reports name the model; default: the hub id, or for a local folder the `model_name` its model "
             "card (README.md) records, else the folder's own name (never its path)")

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise SaeAuditError("`model` must name a hub id or a local folder", field="name")
        if self.dtype not in DTYPES:
            raise SaeAuditError(f"`dtype` must be one of {', '.join(DTYPES)}, got {self.dtype!r}", field="dtype")
        device = str(self.device)
        if device not in DEVICES and not device.startswith("cuda:"):
            raise SaeAuditError(f"`device` must be one of {', '.join(DEVICES)} or 'cuda:N', got {device!r}",
                                field="device")
        shown = self.display_name
        if shown is not None and (not isinstance(shown, str) or not shown.strip() or len(shown) > MAX_DISPLAY_NAME
                                  or any(ord(ch) < 32 for ch in shown)):
            raise SaeAuditError(f"`display_name` must be one line of 1 to {MAX_DISPLAY_NAME} characters, "
                                f"got {shown!r:.80}", field="display_name")
        size = self.image_size
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= MAX_IMAGE_SIZE):
            raise SaeAuditError(f"`image_size` must be a positive int of at most {MAX_IMAGE_SIZE} pixels, "
                                f"got {size!r}", field="image_size")


def display_name(name: str, is_hub: bool, folder: str | None = None, given: str | None = None) -> str:
    """How reports name a model: ``given`` (``ModelSpec.display_name``), else the hub id ``name``, else the
    ``model_name`` recorded in the local folder's model card (``README.md`` YAML metadata, the field
    ``huggingface_hub.ModelCardData`` documents; ``sae-audit models import-imgfocus`` writes it), else the
    folder's own name. A path is never the name.

    A card that cannot be read or parsed is passed over (the folder's name is used); nothing raises.
    """
    if given:
        return given
    if is_hub:
        return name
    folder_path = Path(folder or name)
    recorded = _card_model_name(folder_path / "README.md")
    return recorded or folder_path.resolve().name or name


def _card_model_name(card: Path) -> str | None:
    from sae_audit.safe_files import read_text

    try:
        text = read_text(card, MAX_CARD_BYTES, "model card")
        from huggingface_hub import ModelCard

        value = ModelCard(text, ignore_metadata_errors=True).data.to_dict().get("model_name")
    except Exception:  # no card, unreadable or malformed: fall back to the folder's name
        return None
    if isinstance(value, str) and value.strip() and len(value) <= MAX_DISPLAY_NAME \
            and not any(ord(ch) < 32 for ch in value):
        return value.strip()
    return None
