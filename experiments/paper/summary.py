"""Print the tables of reports/paper/README.md from a results.json written by aggregate.py (Markdown).

    python experiments/paper/summary.py reports/paper/results.json

Every number in the report's tables comes from here. Differences are "variant
minus fixed-k" of one seed's paired SAEs, averaged over the seeds; ``[a, b]`` is
the t interval over the seeds' values (3 seeds: t(0.975, 2) = 4.30) unless the
column says "2-level" (the seed x image bootstrap of aggregate.py).
"""

from __future__ import annotations

import json
import sys


def f(v, digits: int = 4) -> str:
    """A signed difference."""
    return "n/a" if v is None else f"{v:+.{digits}f}"


def ci(m: dict | None, digits: int = 4, signed: bool = False, key: str = "interval") -> str:
    """``mean [lo, hi]`` of a result with an interval (``signed``: differences, with their sign)."""
    if not m or m.get("mean") is None:
        return "n/a"
    iv = m.get(key)
    fmt = f"{'+' if signed else ''}.{digits}f"
    return f"{m['mean']:{fmt}}" + (f" [{iv[0]:{fmt}}, {iv[1]:{fmt}}]" if iv else "")


def t(m: dict | None, digits: int = 4, signed: bool = True) -> str:
    """A value with its t interval over seeds (a two-level result keeps it in ``seed_t_interval``)."""
    if m is None:
        return "n/a"
    return ci(m, digits, signed, "seed_t_interval" if "seed_t_interval" in m else "interval")


def d(m: dict | None, digits: int = 4) -> str:
    """A difference with its two-level interval."""
    return ci(m, digits, True)


def label(row: dict) -> str:
    if row["variant"] == "fixed-k":
        return f"fixed-k k={row['k']}"
    lam = row["lambda_off"] or row["lambda_ratio"]
    return f"{'off-L1' if row['lambda_off'] else 'L1/L2'} {lam:g}"


def main(path: str) -> None:
    r = json.loads(open(path).read())
    saes, fams = r["saes"], r["families"]
    ood_sets = sorted({m.split(":", 1)[1] for row in saes.values() for m in row if m.startswith("auroc_rarity:")})
    print(f"seeds: {r['seeds']}; steps: {[t_['steps'] for t_ in r['training'].values()]}\n")
    print("## Baselines and training\n")
    print("| SAE | held-out FVU (2-level) | dead on held-out ID images, mean of seeds | dead by the training count | "
          "held-out FVU fall, last 500 constant-lr steps / decay / last 100 steps (max over seeds) |"
          "\n|---|---|---|---|---|")
    for fam in fams.values():
        for n in fam["frontier"] + fam["variants"]:
            row = saes[n]
            cells = []
            for key in ("constant_phase_fall_last_500", "decay_phase_fall", "fall_last_100"):
                v = [tr["plateau"][key][n] for tr in r["training"].values() if n in tr.get("plateau", {}).get(key, {})]
                cells.append(f"{max(v):.2%}" if v else "n/a")
            fall = " / ".join(cells)
            dead = [f"{row[key]['mean']:.1%} (max {max(row[key]['seed_values']):.1%})"
                    for key in ("dead_fraction", "dead_fraction_training")]
            print(f"| {label(row)} | {ci(row['fvu'])} | {dead[0]} | {dead[1]} | {fall} |")
    for k, fam in fams.items():
        fixed = saes[fam["fixed"]]
        comps = fam["comparisons"]
        print(f"\n## k = {k}\n")
        front = ", ".join(f"k={saes[n]['k']}: FVU {saes[n]['fvu']['mean']:.4f}, MS {saes[n]['ms_mean']['mean']:.4f}, "
                          f"dead {saes[n]['dead_fraction']['mean']:.1%}" for n in fam["frontier"])
        print(f"fixed-k frontier: {front}\n")
        print(f"fixed-k: FVU {ci(fixed['fvu'])}, mean MS {t(fixed['ms_mean'], signed=False)} (t over seeds) over "
              f"{fixed['ms_n_scored']['mean']:.0f} latents, shuffled-activation chance {ci(fixed['ms_chance_mean'])}, "
              f"L0 {fixed['l0_mean']['mean']:.1f}, effective units {fixed['effective_units_mean']['mean']:.1f}"
              + (f", fidelity {ci(fixed['fidelity'])}" if "fidelity" in fixed else "") + "\n")
        print("### Claim 1: MS at matched FVU\n")
        print("| SAE | dFVU | dMS raw (t) | dMS matched FVU (t) | dMS matched (2-level) | "
              "dMS freq-matched, matched FVU (t) | seeds > 0 | outside frontier |\n|---|---|---|---|---|---|---|---|")
        for n, c in comps.items():
            ms = c["ms_mean"]["matched_fvu"]
            pos = sum(v > 0 for v in ms["seed_values"])
            print(f"| {label(saes[n])} | {f(c['fvu']['mean'])} | {t(c['ms_mean']['raw'])} | {t(ms)} | {d(ms)} | "
                  f"{t(c['ms_freq_matched']['matched_fvu'])} | {pos}/{len(ms['seed_values'])} | "
                  f"{ms['outside_frontier_share']:.0%} |")
        print("\n### Claim 2: k-robustness (FVU at k' / FVU at k, variant minus fixed-k; absolute FVU difference)\n")
        budgets = list(next(iter(comps.values()))["k_robustness"])
        print("| SAE | " + " | ".join(f"k'={b} relative" for b in budgets) + " | "
              + " | ".join(f"k'={b} absolute" for b in budgets) + " |\n|---|" + "---|" * (2 * len(budgets)))
        for n, c in comps.items():
            kr = c["k_robustness"]
            print(f"| {label(saes[n])} | " + " | ".join(t(kr[b]["relative_difference"], 3) for b in budgets) + " | "
                  + " | ".join(t(kr[b]["absolute_fvu_difference"], 4) for b in budgets) + " |")
        fk = fixed["k_curve"]
        print("\nfixed-k relative FVU: " + ", ".join(f"k'={b}: {m['mean']:.3f}" for b, m in
                                                     zip(fk["budgets"], fk["fvu_relative"])))
        print("\n### Claim 3: few-latent probing (accuracy difference, t; McNemar pooled over seeds)\n")
        print(f"fixed-k accuracy: " + ", ".join(f"m={m}: {fixed['probe'][f'accuracy_m{m}']['mean']:.3f}"
                                                for m in fixed["probe"]["budgets"])
              + f"; majority-class chance {fixed['probe']['chance']:.3f}; test images per seed "
                f"{fixed['probe']['n_test_images']}\n")
        ms_ = fixed["probe"]["budgets"]
        print("| SAE | " + " | ".join(f"m={m}" for m in ms_) + " |\n|---|" + "---|" * len(ms_))
        for n, c in comps.items():
            cells = []
            for m in ms_:
                mc = c["probe_mcnemar"].get(f"m{m}")
                cells.append("n/a" if mc is None else
                             f"{t(mc['accuracy_difference'], 3)} ({mc['variant_right_fixed_wrong']} vs "
                             f"{mc['fixed_right_variant_wrong']}, p={mc['p_value']:.2g})")
            print(f"| {label(saes[n])} | " + " | ".join(cells) + " |")
        print("\n### Wider claim: effective units vs input complexity (Spearman with the fixed-k SAE's per-image FVU, "
              "2-level)\n")
        print(f"fixed-k: {ci({'mean': fam['fixed_effective_units_vs_complexity']['spearman'], 'interval': fam['fixed_effective_units_vs_complexity']['interval']}, 3)}\n")
        print("| SAE | Spearman | effective units (mean per token) |\n|---|---|---|")
        for n, c in comps.items():
            e = c["effective_units_vs_complexity"]
            print(f"| {label(saes[n])} | {ci({'mean': e['spearman'], 'interval': e['interval']}, 3, True)} | "
                  f"{saes[n]['effective_units_mean']['mean']:.1f} |")
        print("\n### Wider claim: OOD detection and fidelity at matched FVU (2-level intervals)\n")
        print("fixed-k: " + "; ".join(
            f"{o}: AUROC rarity {ci(fixed[f'auroc_rarity:{o}'], 3)}, FVU {ci(fixed[f'auroc_fvu:{o}'], 3)}, "
            f"OOD-only latents {fixed[f'n_ood_only:{o}']['mean']:.0f}"
            + (f", fidelity gap {ci(fixed[f'fidelity_gap:{o}'], 3)}" if f"fidelity_gap:{o}" in fixed else "")
            for o in ood_sets) + "\n")
        cols = [("auroc_rarity", "AUROC rarity"), ("auroc_fvu", "AUROC FVU"), ("fidelity_gap", "fidelity gap")]
        head = [f"{name}, {o}" for o in ood_sets for key, name in cols if f"{key}:{o}" in fixed]
        print("| SAE | dFidelity ID | " + " | ".join(head) + " | dOOD-only latents (raw) |\n|---|---|"
              + "---|" * len(head) + "---|")
        for n, c in comps.items():
            cells = [d(c[f"{key}:{o}"]["matched_fvu"], 3) for o in ood_sets for key, _ in cols if f"{key}:{o}" in c]
            fid = d(c["fidelity"]["matched_fvu"], 4) if "fidelity" in c else "n/a"
            oo = ", ".join(f"{o} {c[f'n_ood_only:{o}']['raw']['mean']:+.0f}" for o in ood_sets)
            print(f"| {label(saes[n])} | {fid} | " + " | ".join(cells) + f" | {oo} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "reports/paper/results.json")
