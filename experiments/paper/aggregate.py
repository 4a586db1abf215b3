"""Aggregate the per-seed evaluations of the paper experiment into reports/paper/ (results.json, plots, report.md).

Intervals (SPEC sections 5 and 6): every SAE of every seed was evaluated on the
same images with the same Poisson bootstrap weights (keyed by image id), so
replicate ``r`` of two SAEs is the same resample of images. A 95% interval
"across seeds and images" is the percentile interval of a two-level bootstrap:
draw the seeds with replacement, draw one image replicate, average the
statistic over the drawn seeds (``B`` draws). With 3 seeds the seed level has
only 10 distinct draws, so these intervals are coarse; ``seed_values`` lists
the per-seed numbers beside them.

Matched FVU (SPEC section 6): per seed and image replicate, the fixed-k
frontier is the piecewise-linear curve through the (FVU, metric) points of the
fixed-k SAEs of one k family (trained at k, 3k/4, k/2); a regularised SAE's
matched difference is its metric minus the frontier's at its own FVU. An SAE
whose FVU lies outside the frontier's FVU range is compared with the nearest
end and flagged (``outside_frontier``).
"""

from __future__ import annotations

import argparse
import json
import math
import time
import zlib
from pathlib import Path

import numpy as np
import torch

B_DRAWS = 2000
FREQ_EDGES = (-np.inf, -3.0, -2.5, -2.0, -1.5, -1.0, np.inf)  # log10 ID firing frequency bins (frequency matching)
OOD_SCORES = ("fvu", "rarity", "effective_units", "l0")


def interval(draws: np.ndarray) -> list[float] | None:
    d = draws[np.isfinite(draws)]
    if d.size < 0.9 * draws.size or d.size == 0:
        return None
    return [round(float(np.percentile(d, 2.5)), 6), round(float(np.percentile(d, 97.5)), 6)]


def data_rng(*arrays) -> np.random.Generator:
    """A generator seeded by the data it resamples: a statistic's interval does not depend on which other
    statistics were computed before it (adding a metric to results.json leaves the others' intervals alone)."""
    return np.random.default_rng(zlib.crc32(b"".join(np.ascontiguousarray(a, dtype=float).tobytes() for a in arrays)))


def two_level(values: np.ndarray) -> dict:
    """``values [S, R]`` (seed x image replicate) -> point (mean over seeds of column 0 = the estimate), interval.

    Column 0 holds the full-data estimate of each seed; columns 1.. the replicates.
    """
    rng = data_rng(values)
    point = values[:, 0]
    reps = values[:, 1:]
    s, r = reps.shape
    seeds = rng.integers(0, s, size=(B_DRAWS, s))
    cols = rng.integers(0, r, size=B_DRAWS)
    draws = reps[seeds, cols[:, None]].mean(axis=1)
    out = {"mean": round(float(np.mean(point)), 6), "interval": interval(draws),
           "seed_values": [round(float(v), 6) for v in point]}
    # Where the replicates are biased (the mean MS of a resample scores another set of latents), the
    # percentile interval can miss the estimate: then also give it recentred on the estimate (basic shift)
    # and the t interval over the seeds' estimates alone.
    if out["interval"] is not None and not out["interval"][0] <= out["mean"] <= out["interval"][1]:
        shift = out["mean"] - float(np.nanmedian(draws))
        out["replicates_biased"] = True
        out["interval_recentred"] = [round(v + shift, 6) for v in out["interval"]]
    out["seed_t_interval"] = seeds_only(point)["interval"]
    return out


def seeds_only(values: np.ndarray) -> dict:
    """Across-seed mean with a t interval (no image replicates available)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size < 2:
        return {"mean": float(v.mean()) if v.size else None, "interval": None, "seed_values": v.tolist()}
    from scipy import stats

    half = stats.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size)
    return {"mean": round(float(v.mean()), 6), "interval": [round(float(v.mean() - half), 6),
                                                            round(float(v.mean() + half), 6)],
            "seed_values": [round(float(x), 6) for x in v], "interval_kind": "t over seeds"}


def frontier_at(fvu: np.ndarray, metric: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Piecewise-linear interpolation per column: ``fvu, metric [P, C]`` points, ``target [C]``; returns (value, outside)."""
    order = np.argsort(fvu, axis=0)
    f = np.take_along_axis(fvu, order, 0)
    m = np.take_along_axis(metric, order, 0)
    out = np.empty(target.shape)
    for c in range(target.size):
        out[c] = np.interp(target[c], f[:, c], m[:, c])
    outside = (target < f[0]) | (target > f[-1])
    return out, outside


def load(eval_dir: Path, saes_dir: Path):
    seeds = sorted(int(p.name[4:]) for p in eval_dir.iterdir() if p.name.startswith("seed"))
    runs = {}
    for s in seeds:
        for f in sorted((eval_dir / f"seed{s}").glob("*.json")):
            if f.name.endswith(".fidelity.json"):
                continue
            r = json.loads(f.read_text())
            r["ms_reps"] = torch.load(f.with_suffix(".ms.pt"), weights_only=True)["ms_replicates"].double().numpy()
            fid = f.with_name(f"{r['name']}.fidelity.json")  # experiments/paper/fidelity.py, when it ran
            r["fidelity"] = json.loads(fid.read_text()) if fid.is_file() else None
            runs.setdefault(r["name"], {})[s] = r
    training = {s: json.loads((saes_dir / f"seed{s}" / "training.json").read_text())
                for s in seeds if (saes_dir / f"seed{s}" / "training.json").is_file()}
    # Keep the configurations every seed has.
    names = [n for n, by in runs.items() if set(by) == set(seeds)]
    return seeds, {n: runs[n] for n in names}, training


def families(runs: dict) -> dict[int, dict]:
    """k -> {"fixed": name, "frontier": [names of fixed-k SAEs of the family], "variants": [names]}."""
    any_seed = {n: next(iter(by.values())) for n, by in runs.items()}
    ks = sorted({r["k"] for r in any_seed.values() if r["variant"] != "fixed-k"})
    out = {k: {"fixed": None, "frontier": [], "variants": []} for k in ks}
    for n, r in any_seed.items():
        fam = min((k for k in ks if k >= r["k"]), default=None)
        if fam is None:
            continue
        if r["variant"] == "fixed-k":
            out[fam]["frontier"].append(n)
            if r["k"] == fam:
                out[fam]["fixed"] = n
        else:
            out[fam]["variants"].append(n)
    for k in out:
        out[k]["frontier"].sort(key=lambda n: any_seed[n]["k"])
        out[k]["variants"].sort(key=lambda n: (any_seed[n]["variant"], any_seed[n]["lambda_off"] + any_seed[n]["lambda_ratio"]))
    return out


def freq_matched_ms(ms_point: np.ndarray, ms_reps: np.ndarray, freqs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``[1 + R]``: mean MS with each frequency bin weighted by ``weights`` (the reference SAE's share of latents)."""
    logf = np.log10(np.maximum(freqs, 1e-12))
    bins = np.digitize(logf, FREQ_EDGES[1:-1])
    allv = np.vstack([ms_point[None, :], ms_reps])  # [1 + R, d_sae]
    out = np.zeros(allv.shape[0])
    wsum = np.zeros(allv.shape[0])
    for b, w in enumerate(weights):
        if w == 0:
            continue
        sel = bins == b
        vals = allv[:, sel]
        fin = np.isfinite(vals)
        cnt = fin.sum(axis=1)
        mean = np.where(cnt > 0, np.where(fin, vals, 0).sum(axis=1) / np.maximum(cnt, 1), np.nan)
        ok = np.isfinite(mean)
        out[ok] += w * mean[ok]
        wsum[ok] += w
    return np.where(wsum > 0, out / np.maximum(wsum, 1e-300), np.nan)


def bin_weights(ms_point: np.ndarray, freqs: np.ndarray) -> np.ndarray:
    logf = np.log10(np.maximum(freqs, 1e-12))
    bins = np.digitize(logf, FREQ_EDGES[1:-1])
    w = np.array([(np.isfinite(ms_point) & (bins == b)).sum() for b in range(len(FREQ_EDGES) - 1)], dtype=float)
    return w / max(w.sum(), 1)


def per_sae_series(runs, seeds, names, freq_weights) -> dict:
    """name -> metric -> ``[S, 1 + R]`` arrays (point + replicates) for the metrics with image replicates."""
    out = {}
    for n in names:
        m = {}
        by = runs[n]
        m["fvu"] = np.array([[by[s]["id"]["fvu"]] + by[s]["id"]["fvu_replicates"] for s in seeds], dtype=float)
        # Replicate r's mean MS over the latents the full data scores (a resample that leaves a rare latent with
        # fewer than two images does not score it; averaging over whatever each resample scores instead moves
        # the mean with the set of latents, which biased the intervals of the first run).
        ms_rows = []
        for s in seeds:
            pt = np.array([np.nan if v is None else v for v in by[s]["id"]["ms_per_latent"]], dtype=float)
            with np.errstate(all="ignore"):
                reps = np.nanmean(np.where(np.isfinite(by[s]["ms_reps"][:, np.isfinite(pt)]),
                                           by[s]["ms_reps"][:, np.isfinite(pt)], np.nan), axis=1)
            ms_rows.append([by[s]["id"]["ms_mean"]] + reps.tolist())
        m["ms_mean"] = np.array(ms_rows, dtype=float)
        fm = []
        for s in seeds:
            pt = np.array([np.nan if v is None else v for v in by[s]["id"]["ms_per_latent"]], dtype=float)
            fm.append(freq_matched_ms(pt, by[s]["ms_reps"], np.array(by[s]["id"]["frequencies"]), freq_weights[s]))
        m["ms_freq_matched"] = np.array(fm)
        if all(by[s]["fidelity"] is not None for s in seeds):
            m["fidelity"] = np.array([[by[s]["fidelity"]["id"]["fidelity"]] + by[s]["fidelity"]["id"]["replicates"]["fidelity"]
                                      for s in seeds], dtype=float)
            for ood_name in by[seeds[0]]["fidelity"]["ood"]:
                for fm_key, point_key in (("fidelity_ood", "fidelity_ood"), ("fidelity_gap", "fidelity_gap")):
                    m[f"{fm_key}:{ood_name}"] = np.array(
                        [[by[s]["fidelity"]["ood"][ood_name][point_key]]
                         + by[s]["fidelity"]["ood"][ood_name]["replicates"][fm_key] for s in seeds], dtype=float)
        for ood_name in by[seeds[0]]["ood"]:
            for sc in OOD_SCORES:
                m[f"auroc_{sc}:{ood_name}"] = np.array(
                    [[by[s]["ood"][ood_name][f"auroc_{sc}"] if by[s]["ood"][ood_name][f"auroc_{sc}"] is not None
                      else np.nan] + by[s]["ood"][ood_name]["auroc_replicates"][sc] for s in seeds], dtype=float)
            for cm in ("n_ood_only", "js_divergence", "fvu_gap"):
                m[f"{cm}:{ood_name}"] = np.array(
                    [[by[s]["ood"][ood_name][cm] if by[s]["ood"][ood_name][cm] is not None else np.nan]
                     + by[s]["ood"][ood_name]["coverage_replicates"][cm] for s in seeds], dtype=float)
        out[n] = m
    return out


def mcnemar(hits_a: list, hits_b: list) -> dict:
    """Exact McNemar test of paired right/wrong outcomes pooled over seeds (binomial test on discordant pairs)."""
    from scipy.stats import binomtest

    a = np.concatenate([np.asarray(h, dtype=bool) for h in hits_a])
    b = np.concatenate([np.asarray(h, dtype=bool) for h in hits_b])
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    p = binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return {"variant_right_fixed_wrong": only_a, "fixed_right_variant_wrong": only_b, "p_value": round(float(p), 5),
            "n_pairs": int(a.size)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--eval", required=True, help="folder of the per-seed evaluations (EVAL/seed<S>/*.json)")
    p.add_argument("--saes", required=True, help="folder of the per-seed SAEs (training.json, curves)")
    p.add_argument("--out", required=True)
    p.add_argument("--compute", help="JSON file with the measured compute (written by run.sh)")
    args = p.parse_args()
    seeds, runs, training = load(Path(args.eval), Path(args.saes))
    fams = families(runs)
    results = {"schema_version": 2, "seeds": seeds, "families": {}, "saes": {}, "training": {}, "generated": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    for s, t in training.items():
        results["training"][f"seed{s}"] = {key: t[key] for key in ("steps", "vectors", "seconds", "lr", "warmup_steps",
                                                                  "decay_steps", "curve_images") if key in t}
        results["training"][f"seed{s}"]["curve"] = t["curve"]
        results["training"][f"seed{s}"]["plateau"] = plateau(t["curve"], t.get("decay_steps", 0))
        results["training"][f"seed{s}"]["dead_fraction_training"] = {n: v["dead_fraction_training"]
                                                                     for n, v in t["saes"].items()}
    if args.compute and Path(args.compute).is_file():
        results["compute"] = json.loads(Path(args.compute).read_text())
    for k, fam in fams.items():
        fixed = fam["fixed"]
        weights = {}
        for s in seeds:
            r = runs[fixed][s]["id"]
            pt = np.array([np.nan if v is None else v for v in r["ms_per_latent"]], dtype=float)
            weights[s] = bin_weights(pt, np.array(r["frequencies"]))
        names = fam["frontier"] + fam["variants"]
        series = per_sae_series(runs, seeds, names, weights)
        fam_out = {"fixed": fixed, "frontier": fam["frontier"], "variants": fam["variants"],
                   "frequency_bins_log10": [e for e in FREQ_EDGES[1:-1]],
                   "frequency_weights": {f"seed{s}": w.round(4).tolist() for s, w in weights.items()},
                   "comparisons": {}}
        # Per SAE: metrics with intervals over seeds and images.
        for n in names:
            by = runs[n]
            row = {"k": by[seeds[0]]["k"], "variant": by[seeds[0]]["variant"], "lambda_off": by[seeds[0]]["lambda_off"],
                   "lambda_ratio": by[seeds[0]]["lambda_ratio"], "family": k}
            for metric, arr in series[n].items():
                row[metric] = two_level(arr)
            for key in ("l0_mean", "effective_units_mean", "dead_fraction", "dense_fraction", "ms_chance_mean",
                        "ms_n_scored"):
                row[key] = seeds_only([by[s]["id"][key] for s in seeds])
            row["dead_fraction_training"] = seeds_only([training[s]["saes"][n]["dead_fraction_training"]
                                                        for s in seeds if s in training])
            budgets = by[seeds[0]]["id"]["probe"].get("budgets", [])
            row["probe"] = {"budgets": budgets, "n_test_images": by[seeds[0]]["id"]["probe"].get("n_test"),
                            "chance": by[seeds[0]]["id"]["probe"].get("chance")}
            for i, m in enumerate(budgets):
                row["probe"][f"accuracy_m{m}"] = seeds_only([by[s]["id"]["probe"]["accuracy"][i] for s in seeds])
            kc = by[seeds[0]]["k_curve"]
            row["k_curve"] = {"budgets": kc["budgets"],
                              "fvu": [seeds_only([by[s]["k_curve"]["fvu"][i] for s in seeds]) for i in range(len(kc["budgets"]))],
                              "fvu_relative": [seeds_only([by[s]["k_curve"]["fvu"][i] / by[s]["k_curve"]["fvu"][kc["budgets"].index(by[s]["k"])]
                                                           for s in seeds]) for i in range(len(kc["budgets"]))],
                              "ms_mean": [seeds_only([by[s]["k_curve"].get("ms_mean", [None] * 9)[i] or np.nan for s in seeds])
                                          for i in range(len(kc["budgets"]))]}
            for ood_name, o in by[seeds[0]]["ood"].items():
                row.setdefault("n_shifted_10x", {})[ood_name] = seeds_only([by[s]["ood"][ood_name]["n_shifted_10x"] for s in seeds])
                row.setdefault("effective_units_ood", {})[ood_name] = {
                    "id_mean": seeds_only([by[s]["ood"][ood_name]["effective_units_id_mean"] for s in seeds]),
                    "ood_mean": seeds_only([by[s]["ood"][ood_name]["effective_units_ood_mean"] for s in seeds])}
            results["saes"][n] = row
        # Paired comparisons with the fixed-k SAE of the family: raw and at matched FVU.
        f_fvu = np.stack([series[n]["fvu"] for n in fam["frontier"]])  # [P, S, 1 + R]
        for n in fam["variants"]:
            comp = {}
            v = series[n]
            for metric in v:
                if metric == "fvu":
                    comp["fvu"] = two_level(v["fvu"] - series[fixed]["fvu"])
                    continue
                comp[metric] = {"raw": two_level(v[metric] - series[fixed][metric])}
                fm = np.stack([series[f][metric] for f in fam["frontier"]])
                val, outside = frontier_at(f_fvu.reshape(len(fam["frontier"]), -1), fm.reshape(len(fam["frontier"]), -1),
                                           v["fvu"].reshape(-1))
                diff = v[metric] - val.reshape(v[metric].shape)
                comp[metric]["matched_fvu"] = two_level(diff)
                comp[metric]["matched_fvu"]["outside_frontier_share"] = round(float(outside.reshape(v["fvu"].shape)[:, 0].mean()), 3)
            # Probing: paired McNemar per budget, pooled over seeds.
            budgets = runs[n][seeds[0]]["id"]["probe"].get("budgets", [])
            comp["probe_mcnemar"] = {}
            for i, m in enumerate(budgets):
                fb = runs[fixed][seeds[0]]["id"]["probe"].get("budgets", [])
                if m not in fb or runs[n][seeds[0]]["id"].get("probe_hits") is None:
                    continue
                j = fb.index(m)
                ha = [np.array(runs[n][s]["id"]["probe_hits"]["hits"])[:, i] for s in seeds]
                hb = [np.array(runs[fixed][s]["id"]["probe_hits"]["hits"])[:, j] for s in seeds]
                acc_d = seeds_only([a.mean() - b.mean() for a, b in zip(ha, hb)])
                comp["probe_mcnemar"][f"m{m}"] = {"accuracy_difference": acc_d, **mcnemar(ha, hb)}
            # k-robustness: relative FVU at the extreme budgets, paired over seeds.
            kr = {}
            kc_v, kc_f = runs[n][seeds[0]]["k_curve"]["budgets"], runs[fixed][seeds[0]]["k_curve"]["budgets"]
            for i, kp in enumerate(kc_v):
                if kp not in kc_f:
                    continue
                j = kc_f.index(kp)
                rel_v = [runs[n][s]["k_curve"]["fvu"][i] / runs[n][s]["id"]["fvu"] for s in seeds]
                rel_f = [runs[fixed][s]["k_curve"]["fvu"][j] / runs[fixed][s]["id"]["fvu"] for s in seeds]
                abs_d = [runs[n][s]["k_curve"]["fvu"][i] - runs[fixed][s]["k_curve"]["fvu"][j] for s in seeds]
                kr[str(kp)] = {"relative_difference": seeds_only(np.array(rel_v) - np.array(rel_f)),
                               "absolute_fvu_difference": seeds_only(abs_d)}
            comp["k_robustness"] = kr
            # Effective units vs input complexity: Spearman of the SAE's per-image effective units with the
            # fixed-k SAE's per-image FVU (the images the fixed budget finds hard), image bootstrap x seeds.
            comp["effective_units_vs_complexity"] = eu_complexity(runs, n, fixed, seeds)
            fam_out["comparisons"][n] = comp
        fam_out["fixed_effective_units_vs_complexity"] = eu_complexity(runs, fixed, fixed, seeds)
        results["families"][str(k)] = fam_out
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=1, default=float) + "\n")
    tmp.replace(out / "results.json")
    from experiments_paper_plots import plots  # noqa: E402  (sibling module, see sys.path below)

    plots(results, out)
    print(f"wrote {out / 'results.json'} and the plots")


def plateau(curve: dict, decay_steps: int = 0, window: int = 500, last: int = 100) -> dict:
    """How flat each SAE's held-out FVU curve ended: its relative fall over the last ``window`` steps of the
    constant learning rate, over the decay, and over the last ``last`` steps of training."""
    steps = curve["step"]

    def at(step):
        return min(range(len(steps)), key=lambda j: abs(steps[j] - step))

    def fall(a, b):
        return {n: round((v[a] - v[b]) / v[a], 5) for n, v in curve["fvu"].items()}

    if not steps:
        return {}
    end = len(steps) - 1
    const_end = at(steps[-1] - decay_steps)
    out = {"decay_steps": decay_steps,
           f"constant_phase_fall_last_{window}": fall(at(steps[const_end] - window), const_end),
           f"fall_last_{last}": fall(at(steps[-1] - last), end)}
    if decay_steps:
        out["decay_phase_fall"] = fall(const_end, end)
    return out


def eu_complexity(runs, n, fixed, seeds, draws: int = 300) -> dict:
    from scipy.stats import spearmanr

    rng = data_rng(*[runs[m][s]["id"][key] for m, key in ((n, "image_effective_units"), (fixed, "image_fvu"))
                     for s in seeds])
    per_seed, boots = [], []
    for s in seeds:
        eu = np.array(runs[n][s]["id"]["image_effective_units"], dtype=float)
        hard = np.array(runs[fixed][s]["id"]["image_fvu"], dtype=float)
        ok = np.isfinite(eu) & np.isfinite(hard)
        eu, hard = eu[ok], hard[ok]
        per_seed.append(spearmanr(eu, hard).statistic)
        idx = rng.integers(0, eu.size, size=(draws, eu.size))
        boots.append([spearmanr(eu[i], hard[i]).statistic for i in idx])
    boots = np.array(boots)  # [S, draws]
    seeds_i = rng.integers(0, len(seeds), size=(B_DRAWS, len(seeds)))
    cols = rng.integers(0, draws, size=B_DRAWS)
    d = boots[seeds_i, cols[:, None]].mean(axis=1)
    return {"spearman": round(float(np.mean(per_seed)), 4), "interval": interval(d),
            "seed_values": [round(float(v), 4) for v in per_seed]}


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import plots as _plots  # noqa: E402

    sys.modules["experiments_paper_plots"] = _plots
    main()
