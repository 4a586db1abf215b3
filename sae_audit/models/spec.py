"""Which vision model to load, and how: the model part of every request."""

from __future__ import annotations

from dataclasses import dataclass

from sae_audit.errors import SaeAuditError
from sae_audit.options import option

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("float32", "bfloat16", "float16")
#: The largest input side accepted (pixels); the SAE config and the image decoder use the same bound.
MAX_IMAGE_SIZE = 4096


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

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise SaeAuditError("`model` must name a hub id or a local folder", field="name")
        if self.dtype not in DTYPES:
            raise SaeAuditError(f"`dtype` must be one of {', '.join(DTYPES)}, got {self.dtype!r}", field="dtype")
        device = str(self.device)
        if device not in DEVICES and not device.startswith("cuda:"):
            raise SaeAuditError(f"`device` must be one of {', '.join(DEVICES)} or 'cuda:N', got {device!r}",
                                field="device")
        size = self.image_size
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= MAX_IMAGE_SIZE):
            raise SaeAuditError(f"`image_size` must be a positive int of at most {MAX_IMAGE_SIZE} pixels, "
                                f"got {size!r}", field="image_size")
