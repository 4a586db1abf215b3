"""One test per hook, named ``test_hook_<hook name>``: each registers a small real plugin and
drives the hook through the code path that calls it (tests/plugins/test_meta.py checks that
every hookspec has one)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from dataclasses import replace

from sae_audit.audit import AuditedSAE, AuditSettings, audit_loaded, sae_hook_point
from sae_audit.data import ImageOptions, ImageSet, open_image_set
from sae_audit.errors import SaeAuditError
from sae_audit.hookspecs import hookimpl
from sae_audit.models import HookPoint, capture, load_vision_model, select_tokens
from sae_audit.models.adapters import FamilyAdapter, TokenLayout
from sae_audit.plugin_manager import PluginError, PluginManager, use_plugin_manager
from sae_audit.report.plugin_sections import ReportSection
from sae_audit.report import write_reports
from sae_audit.sae import SAEConfig, TopKSAE, load_sae
from sae_audit.suites.base import SuiteBatch
from sae_audit.testing import make_image_folder


# --------------------------------------------------------------------------- shared audit inputs
@pytest.fixture(scope="module")
def tiny_vm(tiny_model_dir):
    with use_plugin_manager(PluginManager(load_entry_points=False)):
        return load_vision_model(tiny_model_dir, device="cpu")


@pytest.fixture()
def audit_inputs(tiny_vm, tiny_sae_dir, tmp_path):
    sae = load_sae(tiny_sae_dir)
    saes = [AuditedSAE(str(tiny_sae_dir), sae, sae_hook_point(sae), "tiny")]
    id_set = open_image_set(make_image_folder(tmp_path / "id", n_per_class=2))
    ood = open_image_set(make_image_folder(tmp_path / "ood", n_per_class=2, classes=("x", "y"), seed=3))
    return tiny_vm, saes, id_set, [ood]


def audit(inputs) -> dict:
    vm, saes, id_set, ood = inputs
    return audit_loaded(vm, saes, id_set, ood, AuditSettings(ImageOptions(batch_size=4)), progress=False)


@pytest.fixture(scope="module")
def results_doc(tiny_vm, tiny_sae_dir, tmp_path_factory):
    """A real results document from the tiny model, with the built-ins only."""
    root = tmp_path_factory.mktemp("results")
    with use_plugin_manager(PluginManager(load_entry_points=False)):
        sae = load_sae(tiny_sae_dir)
        saes = [AuditedSAE(str(tiny_sae_dir), sae, sae_hook_point(sae), "tiny")]
        id_set = open_image_set(make_image_folder(root / "id", n_per_class=2))
        ood = open_image_set(make_image_folder(root / "ood", n_per_class=2, classes=("x", "y"), seed=3))
        return audit_loaded(tiny_vm, saes, id_set, [ood], AuditSettings(ImageOptions(batch_size=4)), progress=False)


# --------------------------------------------------------------------------- register hooks
class DeiTAdapter(FamilyAdapter):
    """DeiT (Touvron et al. 2021): CLS, a distillation token, then patches."""

    family = "deit"
    model_types = ("deit",)
    block_paths = ("layers", "encoder.layer")  # transformers 5, then 4

    def model_class(self):
        from transformers import DeiTModel

        return DeiTModel

    def layout(self, config):
        return TokenLayout(has_cls=True, n_registers=1)  # the distillation token sits where registers do

    def pooled(self, model, pixel_values):
        with torch.inference_mode():
            return model(pixel_values=pixel_values).last_hidden_state[:, 0]


class DeiTPlugin:
    @hookimpl
    def sae_audit_register_model_adapters(self, register):
        register(DeiTAdapter())


def test_hook_sae_audit_register_model_adapters(sae_audit_plugins, tmp_path):
    from transformers import DeiTConfig, DeiTModel, ViTImageProcessor

    torch.manual_seed(0)
    DeiTModel(DeiTConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
                         image_size=32, patch_size=8)).save_pretrained(tmp_path / "deit")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "deit")
    with pytest.raises(SaeAuditError, match="unsupported model family 'deit'"):
        load_vision_model(tmp_path / "deit", device="cpu")

    sae_audit_plugins.register(DeiTPlugin(), "deit")
    vm = load_vision_model(tmp_path / "deit", device="cpu")
    assert vm.family == "deit" and vm.num_blocks == 3 and vm.layout.n_prefix == 2
    images = [Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 40, 3), dtype=np.uint8))
              for i in range(3)]
    pv = vm.preprocess(images)
    acts = capture(vm, pv, [HookPoint(1)])["block.1"]
    with torch.no_grad():
        ref = vm.model(pixel_values=pv, output_hidden_states=True).hidden_states[2]  # independent reference
    torch.testing.assert_close(acts, ref)
    assert select_tokens(acts, "patch", vm.layout).shape == (3, 16, 32)  # CLS and distillation dropped
    from sae_audit.models import model_adapters

    assert "deit" in model_adapters()


class NpzFormatPlugin:
    """SAEs saved as one ``sae.npz`` (W_enc, b_enc, W_dec, b_dec) plus ``k.txt``."""

    @staticmethod
    def detect(folder: Path) -> bool:
        return (folder / "sae.npz").is_file()

    @staticmethod
    def read(folder: Path) -> TopKSAE:
        arrays = np.load(folder / "sae.npz")
        d_in, d_sae = arrays["W_enc"].shape
        sae = TopKSAE(SAEConfig(d_in=d_in, d_sae=d_sae, k=int((folder / "k.txt").read_text()),
                                hook_point="block.2", tokens="patch"), seed=None)
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(sae, name).data.copy_(torch.from_numpy(arrays[name]))
        return sae

    @hookimpl
    def sae_audit_register_sae_formats(self, register):
        register("npz", self.detect, self.read)


def test_hook_sae_audit_register_sae_formats(sae_audit_plugins, tiny_sae_dir, tmp_path):
    native = load_sae(tiny_sae_dir)
    folder = tmp_path / "npz-sae"
    folder.mkdir()
    np.savez(folder / "sae.npz", **{n: getattr(native, n).detach().numpy() for n in ("W_enc", "b_enc", "W_dec", "b_dec")})
    (folder / "k.txt").write_text(str(native.k))
    with pytest.raises(SaeAuditError, match="known formats: native, saelens, saev, sparsify$"):
        load_sae(folder)

    sae_audit_plugins.register(NpzFormatPlugin(), "npz")
    sae = load_sae(folder)
    x = torch.randn(20, native.d_in, generator=torch.Generator().manual_seed(0))
    a, b = native.encode(x), sae.encode(x)
    assert torch.equal(a.indices, b.indices)
    torch.testing.assert_close(sae.decode(b), native.decode(a))
    from sae_audit.sae.registry import sae_formats

    assert [r.name for r in sae_formats()] == ["native", "saelens", "saev", "sparsify", "npz"]


class SolidSet(ImageSet):
    def __init__(self, colour: str, n: int = 5):
        self.rgb = {"red": (255, 0, 0), "green": (0, 255, 0)}[colour]
        self.n, self.name, self.source = n, f"solid:{colour}", "generated"

    def __len__(self):
        return self.n

    def _open(self, i):
        return Image.new("RGB", (16, 16), self.rgb)


class SetsPlugin:
    @staticmethod
    def solid(argument: str) -> ImageSet:
        if argument not in ("red", "green"):
            raise SaeAuditError(f"solid:{argument}: the colour must be red or green")
        return SolidSet(argument)

    @hookimpl
    def sae_audit_register_image_sets(self, register):
        register("three-reds", lambda: SolidSet("red", n=3), "three red squares")
        register("solid", self.solid, "solid squares: solid:red or solid:green", family=True)


def test_hook_sae_audit_register_image_sets(sae_audit_plugins):
    from sae_audit.data import list_named_sets

    with pytest.raises(SaeAuditError, match="neither a known name"):
        open_image_set("three-reds")
    sae_audit_plugins.register(SetsPlugin(), "sets")
    assert len(open_image_set("three-reds")) == 3
    green = open_image_set("solid:green", max_images=2)
    assert len(green) == 2 and green.load(1).getpixel((3, 3)) == (0, 255, 0)
    with pytest.raises(SaeAuditError, match="must be red or green"):
        open_image_set("solid:blue")
    names = list_named_sets()
    assert names[:2] == ["fashion-mnist:train", "fashion-mnist:test"]  # built-ins first
    assert names[-2:] == ["three-reds", "solid:..."]


class MeanL0:
    """A suite accumulator: mean L0 per input."""

    def __init__(self):
        self.n, self.total = 0, 0

    def accumulate(self, batch: SuiteBatch):
        self.n += batch.codes.values.shape[0]
        self.total += int((batch.codes.values > 0).sum())

    def merge(self, other):
        self.n, self.total = self.n + other.n, self.total + other.total

    def finish(self):
        return {"mean_l0": self.total / self.n}


class SuitePlugin:
    @hookimpl
    def sae_audit_register_suites(self, register):
        register("mean-l0", lambda context: MeanL0(), "mean L0 per input")


def test_hook_sae_audit_register_suites(sae_audit_plugins, tiny_sae_dir):
    sae_audit_plugins.register(SuitePlugin(), "suite")
    from sae_audit.suites import available_suites, suite_registrations

    suites = {r.name: r for r in suite_registrations()}
    assert list(suites)[0] == "coverage" and list(suites)[-1] == "mean-l0"
    assert {"monosemanticity", "k-robustness", "ood-detection"} <= set(suites)
    sae = load_sae(tiny_sae_dir)
    x = torch.randn(50, sae.d_in, generator=torch.Generator().manual_seed(1))
    codes = sae.encode(x)
    batch = SuiteBatch(x, codes, sae.decode(codes), torch.arange(50), torch.full((50,), -1))
    from sae_audit.suites import SuiteContext

    info = available_suites()["mean-l0"]
    assert info.description == "mean L0 per input" and not info.needs_labels
    a, b = info.factory(SuiteContext(sae)), info.factory(SuiteContext(sae))
    a.accumulate(batch)
    b.accumulate(batch)
    a.merge(b)
    with torch.no_grad():  # independent reference: SPEC section 1, dense
        h = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
        top = torch.topk(h, sae.k, dim=1).values
    expected = float((top > 0).sum(dim=1).double().mean())
    assert a.finish()["mean_l0"] == pytest.approx(expected)


class SectionsPlugin:
    @hookimpl
    def sae_audit_register_report_sections(self, register):
        def good(results):
            n = len(results["saes"])
            return ReportSection("Tiny facts", f"This audit has **{n}** SAE(s).", f"<p>This audit has <b>{n}</b> SAE(s) &amp; more.</p>")

        def broken(results):
            raise KeyError("no_such_key")

        register("facts", good)
        register("broken", broken)
        register("wrong-type", lambda results: "just a string")
        register("silent", lambda results: None)


def test_hook_sae_audit_register_report_sections(sae_audit_plugins, results_doc, tmp_path):
    sae_audit_plugins.register(SectionsPlugin(), "sections")
    write_reports(results_doc, tmp_path / "r")
    md = (tmp_path / "r" / "report.md").read_text()
    html = (tmp_path / "r" / "report.html").read_text()
    assert "## Tiny facts\n\nThis audit has **1** SAE(s)." in md
    assert "<p>This audit has <b>1</b> SAE(s) &amp; more.</p>" in html
    for name, why in (("broken", "KeyError: 'no_such_key'"), ("wrong-type", "TypeError: render returned str")):
        note = f"failed to render report section '{name}': {why}"
        assert note in md.replace("\\", "") and note in html.replace("&#39;", "'")
    assert md.count("Section not rendered") == 2 and html.count('class="plugin-error"') == 2
    assert "silent" not in md
    assert md.index("## Tiny facts") < md.index("## Method")  # the rest of the report is intact


class CommandPlugin:
    @hookimpl
    def sae_audit_register_commands(self, register):
        def configure(parser):
            parser.add_argument("--name", required=True)

        def run(args):
            print(f"hello {args.name}")
            return 0 if args.name != "bad" else "bad"

        register("hello", configure, run, "say hello")


def test_hook_sae_audit_register_commands(sae_audit_plugins, capsys):
    from sae_audit.cli import _run, build_parser

    sae_audit_plugins.register(CommandPlugin(), "greeter")
    parser = build_parser(sae_audit_plugins.manager)
    assert _run(parser.parse_args(["hello", "--name", "world"])) == 0
    assert capsys.readouterr().out == "hello world\n"
    assert _run(parser.parse_args(["hello", "--name", "bad"])) == 2
    err = capsys.readouterr().err
    assert "plugin 'greeter'" in err and "command 'hello' returned str" in err
    assert "say hello [plugin greeter]" in parser.format_help()


class CardPlugin:
    @hookimpl
    def sae_audit_card_metadata(self, config, dataset):
        return {"license": "mit", "tags": ["my-audit", "sparse-autoencoder"], "datasets": [dataset["name"]]}


def test_hook_sae_audit_card_metadata(sae_audit_plugins):
    from sae_audit.train import sae_card
    from sae_audit.train.trainer import TrainConfig, TrainSummary

    config = SAEConfig(d_in=32, d_sae=64, k=4, hook_point="block.2", tokens="patch", model="tiny")
    summary = TrainSummary(10, 1000, 100, 0.5, 4.0, 3.0, 0.1, 0.5)
    sae_audit_plugins.register(CardPlugin(), "card")
    card = sae_card(config, summary, TrainConfig(), {"name": "fashion-mnist:train", "size": 10})
    front = card.split("---")[1]
    meta = yaml.safe_load(front)
    assert meta["library_name"] == "sae-audit" and meta["base_model"] == "tiny"  # the built-in plugin's
    assert meta["sae_config"] == config.to_dict() and meta["metrics"]["heldout_fvu"] == 0.5
    assert meta["license"] == "mit" and meta["datasets"] == ["fashion-mnist:train"]
    assert meta["tags"] == ["sparse-autoencoder", "interpretability", "top-k-sae", "my-audit"]


class Recorder:
    def __init__(self, fail: bool = False):
        self.calls, self.fail = [], fail

    @hookimpl
    def sae_audit_run_configured(self, model, saes, id_set, ood_sets, config):
        self.calls.append((model.name, [s.label for s in saes], id_set.name, [s.name for s in ood_sets],
                           config.batch_size))
        if self.fail:
            raise RuntimeError("the licence server is down")


def test_hook_sae_audit_run_configured(sae_audit_plugins, audit_inputs):
    rec = Recorder()
    sae_audit_plugins.register(rec, "recorder")
    results = audit(audit_inputs)
    vm, _, id_set, ood = audit_inputs
    assert rec.calls == [(vm.name, ["tiny"], id_set.name, [ood[0].name], 4)]
    assert {"name": "recorder", "distribution": None, "version": None} in results["plugins"]

    sae_audit_plugins.register(Recorder(fail=True), "gatekeeper")
    with pytest.raises(PluginError, match=r"plugin 'gatekeeper'.* failed in hook sae_audit_run_configured: "
                                          r"RuntimeError: the licence server is down"):
        audit(audit_inputs)


class TimingWrapper:
    def __init__(self):
        self.seen = []

    @hookimpl(wrapper=True)
    def sae_audit_audit_image_set(self, image_set, role):
        self.seen.append(("before", image_set.name, role))
        t0 = time.perf_counter()
        result = yield
        self.seen.append(("after", image_set.name, len(result.coverage)))
        return replace(result, description={**result.description, "timed_seconds": time.perf_counter() - t0})


def test_hook_sae_audit_audit_image_set(sae_audit_plugins, audit_inputs):
    plain = audit(audit_inputs)
    wrapper = TimingWrapper()
    sae_audit_plugins.register(wrapper, "timer")
    wrapped = audit(audit_inputs)
    _, _, id_set, ood = audit_inputs
    assert wrapper.seen == [("before", id_set.name, "id"), ("after", id_set.name, 1),
                            ("before", ood[0].name, "ood"), ("after", ood[0].name, 1)]
    assert all(d["timed_seconds"] > 0 for d in wrapped["datasets"])
    # the wrapper saw the built-in pass; the numbers are the same
    assert wrapped["saes"][0]["datasets"] == plain["saes"][0]["datasets"]


class Finisher:
    def __init__(self, value):
        self.value = value

    @hookimpl
    def sae_audit_run_finished(self, results):
        return self.value(results) if callable(self.value) else self.value


def test_hook_sae_audit_run_finished(sae_audit_plugins, audit_inputs):
    sae_audit_plugins.register(Finisher(lambda r: {"n_datasets": len(r["datasets"])}), "counter")
    results = audit(audit_inputs)
    assert results["extensions"] == {"counter": {"n_datasets": 2}}
    json.dumps(results, allow_nan=False)

    sae_audit_plugins.register(Finisher(["not", "a", "dict"]), "listy")
    with pytest.raises(PluginError, match="plugin 'listy'.*sae_audit_run_finished returned list"):
        audit(audit_inputs)


class FailingWrapper:
    @hookimpl(wrapper=True)
    def sae_audit_audit_image_set(self, role):
        result = yield
        if role == "ood":
            raise OSError("disk full while saving the timing log")
        return result


def test_a_wrapper_that_raises_is_named(sae_audit_plugins, audit_inputs):
    sae_audit_plugins.register(FailingWrapper(), "timing-log")
    with pytest.raises(PluginError, match=r"^plugin 'timing-log' failed in hook sae_audit_audit_image_set: "
                                          r"OSError: disk full while saving the timing log$"):
        audit(audit_inputs)
