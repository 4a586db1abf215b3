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


def wrap(text, width: int) -> str:
    """``text`` broken into lines of at most ``width`` characters (long names break anywhere)."""
    import textwrap

    return "\n".join(textwrap.wrap(str(text), width, break_on_hyphens=False)) or " "


def legend_below(fig, ax, n: int, **kw) -> None:
    """The legend of ``ax`` under the axes, outside the data (a figure made with ``layout="constrained"``),
    in as many columns as its longest label lets fit in the figure's width (8 pt text)."""
    handles, labels = ax.get_legend_handles_labels()
    longest = max((len(label) for label in labels), default=1)
    fit = int(fig.get_figwidth() * 72 // ((longest + 6) * 4.8))
    fig.legend(handles, labels, loc="outside lower center", ncols=max(1, min(n, 3, fit)), fontsize=8,
               frameon=False, **kw)


def frequency_histogram(sae_entry: dict, dataset_names: list[str]):
    """Step histograms of ``log10 f_j`` (alive latents) for each dataset of one SAE."""
    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=100, layout="constrained")
    for i, name in enumerate(dataset_names):
        h = sae_entry["datasets"][name]["log10_frequency_hist"]
        edges = np.asarray(h["edges"])
        counts = np.asarray(h["counts"])
        ax.stairs(counts, edges, color=COLOURS[i % len(COLOURS)], linestyle=STYLES[i % len(STYLES)],
                  linewidth=1.8, label=_t(f"{name} ({h.get('dead', 0)} dead)"))
    ax.set_xlabel("log10 firing frequency")
    ax.set_ylabel("latents")
    ax.set_title(_t(f"Firing frequencies: {sae_entry['label']}"), fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    legend_below(fig, ax, len(dataset_names))
    return fig


HATCHES = ["", "//", "..", "xx", "\\\\", "++"]


def reconstruction_bars(results: dict):
    """Grouped bars: FVU of each SAE (one hatch pattern each) on each image set, value printed on top."""
    names = [d["name"] for d in results["datasets"]]
    saes = results["saes"]
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100, layout="constrained")
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
    ax.set_xticks(x, [_t(wrap(n, 16) + f"\n({d['role'].upper()})") for n, d in zip(names, results["datasets"])],
                  fontsize=7)
    ax.set_ylabel("FVU (lower is better)")
    ax.set_title("Reconstruction per image set", fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    legend_below(fig, ax, len(saes))
    return fig


def to_png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None}, bbox_inches="tight", pad_inches=0.05)
    plt.close(fig)
    return buf.getvalue()
