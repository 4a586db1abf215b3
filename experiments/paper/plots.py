"""Plots of the paper experiment from its results.json (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLOURS = {"fixed-k": "black", "off-L1": "tab:blue", "L1/L2": "tab:red"}


def _err(m: dict) -> tuple[float, float]:
    lo, hi = m.get("interval_recentred") or m["interval"] or (m["mean"], m["mean"])
    return max(0.0, m["mean"] - lo), max(0.0, hi - m["mean"])


def frontier_plot(results: dict, out: Path, metric: str, label: str, fname: str) -> None:
    fams = results["families"]
    fig, axes = plt.subplots(1, len(fams), figsize=(5.5 * len(fams), 4.2), squeeze=False)
    for ax, (k, fam) in zip(axes[0], fams.items()):
        for variant in ("fixed-k", "off-L1", "L1/L2"):
            names = fam["frontier"] if variant == "fixed-k" else [n for n in fam["variants"]
                                                                 if results["saes"][n]["variant"] == variant]
            if variant != "fixed-k":
                names = [fam["fixed"]] + names
            pts = [results["saes"][n] for n in names]
            xs = [p["fvu"]["mean"] for p in pts]
            ys = [p[metric]["mean"] for p in pts]
            xe = list(zip(*[_err(p["fvu"]) for p in pts]))
            ye = list(zip(*[_err(p[metric]) for p in pts]))
            ax.errorbar(xs, ys, xerr=xe, yerr=ye, marker="o", ms=4, capsize=2, color=COLOURS[variant],
                        label=variant + (" (trained at k/2, 3k/4, k)" if variant == "fixed-k" else " (lambda grid)"))
            for n, x, y in zip(names, xs, ys):
                p = results["saes"][n]
                lam = p["lambda_off"] or p["lambda_ratio"]
                txt = f"k={p['k']}" if variant == "fixed-k" else (f"{lam:g}" if lam else "")
                if txt:
                    ax.annotate(txt, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
        chance = results["saes"][fam["fixed"]]["ms_chance_mean"]["mean"]
        if metric.startswith("ms") and chance is not None:
            ax.set_title(f"k = {k} (shuffled-activation chance MS {chance:.3f})", fontsize=9)
        else:
            ax.set_title(f"k = {k}", fontsize=9)
        ax.set_xlabel("FVU on held-out images (lower is better)")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    fig.suptitle(f"{label} vs FVU: mean over seeds,\n95% intervals over seeds and images "
                 "(recentred where the replicates are biased)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / fname, dpi=110)
    plt.close(fig)


def k_curve_plot(results: dict, out: Path) -> None:
    fams = results["families"]
    fig, axes = plt.subplots(1, len(fams), figsize=(5.5 * len(fams), 4.2), squeeze=False)
    for ax, (k, fam) in zip(axes[0], fams.items()):
        for n in [fam["fixed"]] + fam["variants"]:
            p = results["saes"][n]
            kc = p["k_curve"]
            xs = kc["budgets"]
            ys = [m["mean"] for m in kc["fvu"]]
            lo = [(m["interval"] or [m["mean"]] * 2)[0] for m in kc["fvu"]]
            hi = [(m["interval"] or [m["mean"]] * 2)[1] for m in kc["fvu"]]
            lam = p["lambda_off"] or p["lambda_ratio"]
            c = COLOURS[p["variant"]]
            alpha = 1.0 if not lam else 0.35 + 0.65 * (fam["variants"].index(n) % 4) / 3
            ax.plot(xs, ys, marker="o", ms=3, color=c, alpha=alpha, label=f"{p['variant']} {lam:g}" if lam else "fixed-k")
            ax.fill_between(xs, lo, hi, color=c, alpha=0.08)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.axvline(int(k), color="grey", lw=0.5)
        ax.set_xlabel("inference budget k'")
        ax.set_ylabel("FVU (held-out images)")
        ax.set_title(f"trained at k = {k}; bands: 95% t interval over seeds", fontsize=9)
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "k_curves.png", dpi=110)
    plt.close(fig)


def training_curve_plot(results: dict, out: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for seed, t in results["training"].items():
        curve = t["curve"]
        for n, ys in curve["fvu"].items():
            if n in {f"k{k}-off0-ratio0" for k in results["families"]}:  # each family's fixed-k SAE
                ax.plot(curve["step"][1:], ys[1:], label=f"{seed} {n.split('-')[0]} fixed-k", lw=1)
    decay = {t["steps"] - t.get("decay_steps", 0) for t in results["training"].values() if t.get("decay_steps")}
    for step in decay:
        ax.axvline(step, color="grey", ls=":", lw=1)
        ax.text(step, ax.get_ylim()[1], " learning-rate decay", fontsize=7, va="top", color="grey")
    ax.set_xlabel("optimiser step (batch 512)")
    ax.set_ylabel("FVU on 64 held-out images")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax.set_title("Training curves of the fixed-k SAEs", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "training_curves.png", dpi=110)
    plt.close(fig)


def plots(results: dict, out: Path) -> None:
    out = Path(out)
    frontier_plot(results, out, "ms_mean", "mean MS (all scored latents)", "frontier_ms.png")
    frontier_plot(results, out, "ms_freq_matched", "MS, frequency-matched", "frontier_ms_freq_matched.png")
    ood_names = [m.split(":", 1)[1] for m in next(iter(results["saes"].values())) if m.startswith("auroc_rarity:")]
    for o in ood_names:
        frontier_plot(results, out, f"auroc_rarity:{o}", f"OOD AUROC (rarity), {o}", f"frontier_auroc_rarity_{o.split(':')[0]}.png")
    if "fidelity" in next(iter(results["saes"].values())):
        frontier_plot(results, out, "fidelity", "downstream fidelity, ID (1 = output untouched)", "frontier_fidelity.png")
    k_curve_plot(results, out)
    training_curve_plot(results, out)
