"""Pytest fixtures for sae-audit and its plugins: tiny, real, offline.

Registered under the ``pytest11`` entry point, so any project that installs
sae-audit gets them. Everything is built from configs in milliseconds; nothing
is downloaded:

- ``tiny_model_dir``: a random DINOv2 (4 blocks, d_model 32, patch 8, 32 px)
  saved with its image processor, loadable by ``load_vision_model``;
- ``tiny_sae_dir``: a Top-k SAE (d_in 32, d_sae 64, k 4) reading ``block.2:patch``
  of that model, in the native format;
- ``tiny_image_folder``: 12 small PNG images in three class folders;
- ``sae_audit_plugins``: an isolated plugin manager (built-ins plus the
  plugin objects a test registers) made current for one test;
  ``sae_audit_plugins.run("run", MODEL, ...)`` runs the real ``sae-audit``
  command line in process with exactly those plugins (a :class:`CliResult`);
- ``installed``: the same for the plugins installed in the environment, as
  the ``sae-audit`` command loads them (a plugin's end-to-end test after
  ``pip install``);
- ``plugin_site``: writes throw-away installed distributions (a real
  ``*.dist-info`` with ``entry_points.txt``) onto ``sys.path``, to test
  entry-point discovery exactly as ``pip install`` would set it up.

:func:`run_cli` runs the command line in process with any plugin manager.
"""

from __future__ import annotations

import io
import re
import sys
import textwrap
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

TINY_D_MODEL = 32
TINY_BLOCKS = 4


def make_tiny_model_dir(path: Path, family: str = "dinov2") -> Path:
    """Write a tiny random vision model (and its processor) to ``path``."""
    from transformers import (
        BitImageProcessor,
        Dinov2Config,
        Dinov2Model,
        ViTConfig,
        ViTImageProcessor,
        ViTModel,
    )

    torch.manual_seed(0)
    common = dict(hidden_size=TINY_D_MODEL, num_hidden_layers=TINY_BLOCKS, num_attention_heads=2,
                  intermediate_size=64, image_size=32, patch_size=8)
    if family == "dinov2":
        model = Dinov2Model(Dinov2Config(**common))
        processor = BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                      do_center_crop=True, image_mean=[0.485, 0.456, 0.406],
                                      image_std=[0.229, 0.224, 0.225])
    elif family == "vit":
        model = ViTModel(ViTConfig(**common), add_pooling_layer=False)
        processor = ViTImageProcessor(size={"height": 32, "width": 32})
    else:
        raise ValueError(family)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def make_tiny_sae_dir(path: Path, d_in: int = TINY_D_MODEL, d_sae: int = 64, k: int = 4,
                      hook_point: str = "block.2", tokens: str = "patch", seed: int = 0, **config) -> Path:
    """Write a random Top-k SAE in the native format to ``path``."""
    from sae_audit.sae import SAEConfig, TopKSAE, save_sae

    cfg = SAEConfig(d_in=d_in, d_sae=d_sae, k=k, hook_point=hook_point, tokens=tokens, model="tiny", **config)
    sae = TopKSAE(cfg, seed=seed)
    with torch.no_grad():
        sae.b_enc.uniform_(0.0, 0.1, generator=torch.Generator().manual_seed(seed))
    return save_sae(sae, path, overwrite=True)


def make_image_folder(path: Path, n_per_class: int = 4, classes=("circle", "square", "noise"), size: int = 40,
                      seed: int = 0) -> Path:
    """Write ``n_per_class`` PNG images into one subfolder per class."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (path / name).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            yy, xx = np.mgrid[:size, :size]
            if c == 0:
                img[(yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2] = 220
            elif c == 1:
                img[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = [200, (40 * i) % 256, 90]
            else:
                img = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            Image.fromarray(img).save(path / name / f"{name}_{i}.png")
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random DINOv2 saved to disk with its image processor."""
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_sae_dir(tmp_path_factory) -> Path:
    """A tiny Top-k SAE for ``tiny_model_dir`` at ``block.2:patch``."""
    return make_tiny_sae_dir(tmp_path_factory.mktemp("tiny-sae") / "sae")


@pytest.fixture()
def tiny_image_folder(tmp_path) -> Path:
    """12 PNG images in three class folders (a fresh copy per test)."""
    return make_image_folder(tmp_path / "images")


# --------------------------------------------------------------------------- plugins and the command line
@dataclass(frozen=True)
class CliResult:
    """What one in-process ``sae-audit`` call did.

    Attributes:
        exit_code: 0 success, 1 a ``--fail-on`` condition holds, 2 a usage or
            input error (a plugin's failure included), 3 an internal error.
        stdout, stderr: everything it printed (progress bars and log messages are on stderr).
    """

    exit_code: int
    stdout: str
    stderr: str

    @property
    def errors(self) -> list[str]:
        """The ``sae-audit: error: ...`` lines of stderr."""
        return [ln for ln in self.stderr.splitlines() if ln.startswith("sae-audit: error:")]


def run_cli(*argv, plugins=None) -> CliResult:
    """Run the real ``sae-audit`` command line in this process; what it returned and printed.

    ``argv`` are the arguments after ``sae-audit`` (paths may be
    :class:`~pathlib.Path`); ``plugins`` is the
    :class:`~sae_audit.plugin_manager.PluginManager` it runs with (default:
    the installed plugins, as the ``sae-audit`` command loads them). An
    argparse exit (``--help``, a usage error) is returned as its exit code.
    """
    from sae_audit.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main([str(a) for a in argv], plugins=plugins)
        except SystemExit as exc:  # argparse: --help, --version, a usage error
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    return CliResult(code, out.getvalue(), err.getvalue())


class PluginSandbox:
    """A plugin manager of its own for one test, and the command line run with it.

    See the ``sae_audit_plugins`` and ``installed`` fixtures.

    Args:
        load_entry_points: also load the plugins installed in the environment
            (every ``sae_audit`` entry point; ``SAE_AUDIT_LOAD_PLUGINS`` is ignored).

    Attributes:
        manager: the :class:`~sae_audit.plugin_manager.PluginManager`.
    """

    def __init__(self, load_entry_points: bool = False):
        from sae_audit.plugin_manager import PluginManager

        self.manager = PluginManager(load_entry_points=load_entry_points)

    def register(self, plugin, name: str | None = None, distribution: str | None = None,
                 version: str | None = None, strict: bool = True):
        """Register a plugin object (module, class or instance); with ``strict`` a failure raises.

        Returns the plugin name (``None`` if it failed and ``strict`` is False).
        """
        self.manager.strict = strict
        try:
            return self.manager.register(plugin, name, distribution=distribution, version=version)
        finally:
            self.manager.strict = False

    def run(self, *argv) -> CliResult:
        """Run ``sae-audit *argv`` in process with this sandbox's plugins (:func:`run_cli`)."""
        return run_cli(*argv, plugins=self.manager)

    def plugin(self, name: str):
        """The :class:`~sae_audit.plugin_manager.PluginInfo` of loaded plugin ``name``, or ``None``."""
        return next((p for p in self.manager.plugins() if p.name == name), None)

    @property
    def failures(self) -> list:
        """The plugins that failed to load (:class:`~sae_audit.plugin_manager.PluginFailure`)."""
        return list(self.manager.failures)


@pytest.fixture()
def sae_audit_plugins():
    """An isolated plugin manager with sae-audit's built-ins, current for the test.

    Installed plugins are *not* loaded; register the ones under test with
    ``sae_audit_plugins.register(module_or_object, name)``. Everything that
    looks things up through the plugin manager (``open_image_set``,
    ``load_sae``, ``load_vision_model``, ``run_audit``, reports) sees them, and
    ``sae_audit_plugins.run("run", model, "--sae", sae, ...)`` runs the real
    command line in process with them, returning a :class:`CliResult`.
    ``sae_audit_plugins.manager`` is the :class:`~sae_audit.plugin_manager.PluginManager`.
    """
    from sae_audit.plugin_manager import use_plugin_manager

    sandbox = PluginSandbox()
    with use_plugin_manager(sandbox.manager):
        yield sandbox


@pytest.fixture()
def installed():
    """The plugins installed in this environment, loaded as the ``sae-audit`` command loads them, current
    for the test (a :class:`PluginSandbox`).

    For a plugin's own end-to-end tests after ``pip install``: the entry point,
    the distribution's metadata and the command line are the real ones.
    ``installed.plugin("name")`` is the loaded plugin's
    :class:`~sae_audit.plugin_manager.PluginInfo` (``None`` when it is not
    installed), ``installed.failures`` the plugins that failed to load, and
    ``installed.run("run", ...)`` a :class:`CliResult`.
    ``SAE_AUDIT_LOAD_PLUGINS`` and ``SAE_AUDIT_STRICT_PLUGINS`` are ignored.
    """
    from sae_audit.plugin_manager import use_plugin_manager

    sandbox = PluginSandbox(load_entry_points=True)
    with use_plugin_manager(sandbox.manager):
        yield sandbox


def write_plugin_distribution(site: Path, dist_name: str, version: str, modules: dict[str, str],
                              entry_points: dict[str, str], group: str = "sae_audit") -> Path:
    """Write modules and an installed-distribution record (``*.dist-info``) into ``site``.

    ``modules`` maps module names to source code (dedented); ``entry_points``
    maps entry-point names to ``module[:attr]``. With ``site`` on ``sys.path``,
    :mod:`importlib.metadata` sees the distribution as ``pip install`` would
    leave it. Returns the ``.dist-info`` folder.
    """
    site.mkdir(parents=True, exist_ok=True)
    for mod, source in modules.items():
        (site / f"{mod}.py").write_text(textwrap.dedent(source))
    norm = re.sub(r"[-_.]+", "_", dist_name)
    info = site / f"{norm}-{version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: {version}\n")
    eps = "".join(f"{k} = {v}\n" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[{group}]\n{eps}")
    (info / "RECORD").write_text("")
    return info


@pytest.fixture()
def plugin_site(tmp_path, monkeypatch):
    """A function ``install(dist_name, version, modules, entry_points)`` writing throw-away
    installed distributions into a folder put first on ``sys.path`` for this test.

    The modules written are dropped from ``sys.modules`` afterwards.
    """
    site = tmp_path / "site-packages"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    written: list[str] = []

    def install(dist_name: str, version: str, modules: dict[str, str], entry_points: dict[str, str]) -> Path:
        import importlib

        written.extend(modules)
        info = write_plugin_distribution(site, dist_name, version, modules, entry_points)
        importlib.invalidate_caches()
        return info

    yield install
    for mod in written:
        sys.modules.pop(mod, None)


def widen_results(results: dict, d_sae: int, seed: int = 0) -> dict:
    """``results`` with every SAE widened to ``d_sae`` latents, all alive on every set (the worst case)."""
    rng = np.random.default_rng(seed)
    import copy

    big = copy.deepcopy(results)
    for s in big["saes"]:
        s["config"]["d_sae"] = d_sae
        for stats in s["datasets"].values():
            stats["frequencies"] = (10 ** rng.uniform(-5, -0.5, d_sae)).round(8).tolist()
            stats["mean_activation"] = rng.uniform(0, 3, d_sae).round(4).tolist()
        for suite in (s.get("suites") or {}).values():
            for stats in suite.get("datasets", {}).values():
                if "per_latent" in stats:
                    stats["per_latent"] = rng.uniform(0, 1, d_sae).round(4).tolist()
    return big
