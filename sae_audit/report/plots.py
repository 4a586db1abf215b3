"""Figures for the reports, drawn with matplotlib from the results document alone."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# Byte-identical figures for identical results: fixed SVG element ids, no dates.
matplotlib.rcParams["svg.hashsalt"] = "sae-audit"
import numpy as np  # noqa: E402

# Colour-blind-safe (Okabe-Ito); each dataset also gets its own line style, so
# colour is never the only carrier of meaning.
COLOURS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9"]
STYLES = ["-", "--", ":", "-."]


def _t(text) -> str:
    """Text for matplotlib, shown literally: ``$`` would otherwise start mathtext."""
    return str(text).replace("$", r"\$")


def frequency_histogram(sae_entry: dict, dataset_names: list[str]):
    """Step histograms of ``log10 f_j`` (alive latents) for each dataset of one SAE."""
    fig, ax = plt.subplots(figsize=(6.4, 3.4), dpi=100)
    for i, name in enumerate(dataset_names):
        h = sae_entry["datasets"][name]["log10_frequency_hist"]
        edges = np.asarray(h["edges"])
        counts = np.asarray(h["counts"])
        ax.stairs(counts, edges, color=COLOURS[i % len(COLOURS)], linestyle=STYLES[i % len(STYLES)],
                  linewidth=1.8, label=_t(f"{name} ({h.get('dead', 0)} dead)"))
    ax.set_xlabel("log10 firing frequency")
    ax.set_ylabel("latents")
    ax.set_title(_t(f"Firing frequencies: {sae_entry['label']}"), fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return fig


def frequency_scatter(sae_entry: dict, id_name: str, ood_names: list[str]):
    """ID frequency vs OOD frequency per latent (log-log; dead latents pinned at the floor)."""
    fig, ax = plt.subplots(figsize=(4.6, 4.2), dpi=100)
    f_id = np.asarray(sae_entry["datasets"][id_name]["frequencies"])
    floor = 1e-7
    markers = ["o", "s", "^", "D"]
    for i, name in enumerate(ood_names):
        f_ood = np.asarray(sae_entry["datasets"][name]["frequencies"])
        ax.scatter(np.maximum(f_id, floor), np.maximum(f_ood, floor), s=5, alpha=0.45,
                   color=COLOURS[(i + 1) % len(COLOURS)], marker=markers[i % len(markers)], label=_t(name),
                   linewidths=0)
    ax.plot([floor, 1], [floor, 1], color="#444", linewidth=0.8, linestyle="--", label="equal frequency")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(_t(f"frequency on {id_name} (ID)"))
    ax.set_ylabel("frequency on OOD set")
    ax.set_title(_t(f"Per-latent frequency: {sae_entry['label']}"), fontsize=10)
    ax.legend(fontsize=8, frameon=False, markerscale=3)
    fig.tight_layout()
    return fig


HATCHES = ["", "//", "..", "xx", "\\\\", "++"]


def reconstruction_bars(results: dict):
    """Grouped bars: FVU of each SAE (one hatch pattern each) on each image set, value printed on top."""
    names = [d["name"] for d in results["datasets"]]
    saes = results["saes"]
    fig, ax = plt.subplots(figsize=(6.4, 3.2), dpi=100)
    width = 0.8 / max(1, len(saes))
    x = np.arange(len(names))
    for i, s in enumerate(saes):
        vals = [s["datasets"][n].get("fvu") for n in names]
        heights = [v if v is not None else 0.0 for v in vals]
        bars = ax.bar(x + (i - (len(saes) - 1) / 2) * width, heights, width * 0.95,
                      color=COLOURS[i % len(COLOURS)], hatch=HATCHES[i % len(HATCHES)], edgecolor="white",
                      label=_t(s["label"]))
        for b, v in zip(bars, vals):
            ax.annotate("n/a" if v is None else f"{v:.3f}", (b.get_x() + b.get_width() / 2, b.get_height()),
                        ha="center", va="bottom", fontsize=7, xytext=(0, 1), textcoords="offset points")
    ax.set_xticks(x, [_t(f"{n}\n({d['role'].upper()})") for n, d in zip(names, results["datasets"])], fontsize=8)
    ax.set_ylabel("FVU (lower is better)")
    ax.set_title("Reconstruction per image set", fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return fig


def to_png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()
