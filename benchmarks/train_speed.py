"""Training throughput of sae-audit's Top-k step against SAELens and EleutherAI sparsify (a benchmark).

Every implementation takes the same batches of the same data (float32,
``--batch`` vectors; a sparse synthetic mixture, seeded) and does a full
optimiser step as its own trainer does it:

- **sae-audit**: :meth:`sae_audit.train.trainer.TrainingRun.step`, the method
  ``fit_saes`` calls (NMSE + AuxK, Adam, parallel-gradient removal, decoder
  renormalised); also the regularised step (off-support L1 and L1/L2 ratio
  both on) and the bf16 step (``precision bf16``: bf16 selects, float32 values);
- **sparsify** (``eai-sparsify``, ``SPARSIFY_DISABLE_TRITON=1``: its eager
  sparse decoder; there is no Triton on a CPU anyway): ``SparseCoder.forward``
  with the dead mask, FVU + AuxK, Adam, ``remove_gradient_parallel_to_decoder_directions``,
  ``set_decoder_norm_to_unit_norm``, as ``sparsify.Trainer`` does;
- **SAELens** (``sae-lens``): ``TopKTrainingSAE.training_forward_pass`` and the
  rest of ``SAETrainer._train_step`` (firing statistics, gradient clipping, Adam);
  both its dense and its ``use_sparse_activations`` decoder are timed and the
  faster one counts.

No latent is dead within a benchmark's few steps, so AuxK costs nothing in any
of them. The **floor** is what any Top-k step must do, the dense encoder
matmul and the top-k alone: ``floor / best peer`` bounds the speed-up any
implementation of the same float32 step could reach. Steps are timed
alternately (see ``_common.interleaved``) and the medians compared: ``train_speedup_vs_best_peer`` is sae-audit's plain step
against the faster peer, per configuration. Needs the benchmark environment
(``benchmarks/setup_peers.sh``); without the peers only sae-audit is timed.

    benchmarks/.venv/bin/python benchmarks/train_speed.py            # all four configurations
    benchmarks/.venv/bin/python benchmarks/train_speed.py --quick    # d_in 384, expansion 8 only
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import sys
from pathlib import Path

os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from _common import interleaved, load, machine, median, table, write_json  # noqa: E402

LR = 1e-4


def synthetic(n: int, d_in: int, seed: int = 0) -> torch.Tensor:
    """``[n, d_in]`` float32: sparse non-negative codes over 4 * d_in random directions, plus a mean and noise."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(4 * d_in, d_in, generator=g) / math.sqrt(d_in)
    codes = torch.relu(torch.randn(n, 4 * d_in, generator=g) - 2.0)
    return codes @ basis * 3.0 + torch.randn(d_in, generator=g) + 0.1 * torch.randn(n, d_in, generator=g)


class Batches:
    def __init__(self, x: torch.Tensor, batch: int):
        self.x, self.batch, self.i = x, batch, 0

    def next(self) -> torch.Tensor:
        n = self.x.shape[0] // self.batch
        xb = self.x[(self.i % n) * self.batch:][: self.batch]
        self.i += 1
        return xb


def ours(d_in: int, d_sae: int, k: int, x: torch.Tensor, regularised: bool = False, bf16: bool = False):
    from sae_audit.sae import SAEConfig
    from sae_audit.train.trainer import TrainingRun

    extra = dict(lambda_off=1e-3, lambda_ratio=3e-2) if regularised else {}
    cfg = SAEConfig(d_in=d_in, d_sae=d_sae, k=k, **extra)
    run = TrainingRun(cfg, seed=0, lr=LR, device=torch.device("cpu"), x_held=x[:16384], b_dec_init="mean",
                      sample_seed=0)
    data = Batches(x, x.shape[0] // 4)
    return lambda: run.step(data.next(), LR, bf16)


def floor_step(d_in: int, d_sae: int, k: int, x: torch.Tensor):
    """What every Top-k step must do at least: the dense encoder matmul (float32, bias included) and the top-k."""
    g = torch.Generator().manual_seed(0)
    W, b = torch.randn(d_in, d_sae, generator=g), torch.zeros(d_sae)
    out = torch.empty(x.shape[0] // 4, d_sae)
    data = Batches(x, x.shape[0] // 4)
    return lambda: torch.addmm(b, data.next(), W, out=out).topk(k, dim=1, sorted=False)


def sparsify_step(d_in: int, d_sae: int, k: int, x: torch.Tensor):
    from sparsify import SparseCoder, SparseCoderConfig

    sae = SparseCoder(d_in, SparseCoderConfig(k=k, num_latents=d_sae), device="cpu")
    opt = torch.optim.Adam(sae.parameters(), lr=LR)
    since = torch.zeros(d_sae, dtype=torch.long)
    data = Batches(x, x.shape[0] // 4)

    def step():
        xb = data.next()
        out = sae(xb, dead_mask=since > 10_000_000)
        loss = out.fvu + out.auxk_loss / 32
        loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        sae.set_decoder_norm_to_unit_norm()
        with torch.no_grad():
            since.add_(xb.shape[0])
            since[out.latent_indices.flatten()] = 0

    return step


def saelens_step(d_in: int, d_sae: int, k: int, x: torch.Tensor, sparse: bool):
    from sae_lens.saes.sae import TrainStepInput
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k, dtype="float32", device="cpu",
                                                use_sparse_activations=sparse))
    opt = torch.optim.Adam(sae.parameters(), lr=LR, betas=(0.9, 0.999))
    since = torch.zeros(d_sae)
    data = Batches(x, x.shape[0] // 4)
    state = {"step": 0}

    def step():
        sae.train()
        out = sae.training_forward_pass(TrainStepInput(sae_in=data.next(), coefficients={},
                                                       dead_neuron_mask=since > 1000,
                                                       n_training_steps=state["step"], is_logging_step=False))
        with torch.no_grad():
            firing = out.feature_acts.bool().float()
            did_fire = firing.sum(-2).bool()
            if did_fire.is_sparse:
                did_fire = did_fire.to_dense()
            since.add_(1)
            since[did_fire] = 0
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        state["step"] += 1

    return step


def peers_available() -> dict[str, bool]:
    have = {}
    for mod in ("sparsify", "sae_lens"):
        try:
            __import__(mod)
            have[mod] = True
        except Exception as exc:  # noqa: BLE001 - a missing or broken peer is reported, not fatal
            print(f"({mod} not available: {type(exc).__name__}: {exc}; run benchmarks/setup_peers.sh)",
                  file=sys.stderr)
            have[mod] = False
    return have


def bf16_accuracy(d_in: int, d_sae: int, k: int, steps: int) -> dict:
    """Train the same SAE in float32 and in bf16 from the same batches; compare on held-out data."""
    from sae_audit.train import TrainConfig, fit_saes
    from sae_audit.sae import SAEConfig

    batch = 1024
    x = synthetic(batch * steps + 8192 + 16384, d_in, seed=1)
    x, held = x[:-16384], x[-16384:]  # held out: never trained on, same distribution
    res = {}
    for precision in ("float32", "bf16"):
        cfg = SAEConfig(d_in=d_in, d_sae=d_sae, k=k)
        train = TrainConfig(batch_size=batch, max_vectors=batch * steps, eval_vectors=8192, precision=precision)
        (sae, summary), = fit_saes([cfg], [x], train, progress=False)
        with torch.no_grad():
            codes = sae.encode(held)
            x_hat = sae.decode(codes)
            freq = torch.zeros(d_sae).index_add_(0, codes.indices.reshape(-1),
                                                 codes.active().float().reshape(-1)) / held.shape[0]
            fvu = float((held - x_hat).pow(2).sum() / (held - held.mean(0)).pow(2).sum())
        res[precision] = (freq, fvu)
    (fa, va), (fb, vb) = res["float32"], res["bf16"]
    return {"steps": steps, "batch": batch, "fvu_float32": round(va, 5), "fvu_bf16": round(vb, 5), "fvu_diff": round(vb - va, 5),
            "max_abs_freq_diff": round(float((fa - fb).abs().max()), 5),
            "alive_float32": int((fa > 0).sum()), "alive_bf16": int((fb > 0).sum())}


def sweep_encoder(d_in: int, d_sae: int, n: int, batch: int, rounds: int) -> dict:
    """Does one encoder matmul for a sweep of ``n`` SAEs beat ``n`` of them? (pre-activations only)

    ``loop``: ``n`` addmm of ``[B, d_in] @ [d_in, d_sae]`` (each with its own ``b_dec``
    subtracted, as the trainer does); ``concatenated``: one addmm against the ``n``
    encoders side by side (``b_dec @ W_enc`` folded into the bias, as a fused sweep
    would have to); ``batched``: one baddbmm over the stacked inputs.
    """
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, d_in, generator=g)
    W = [torch.randn(d_in, d_sae, generator=g) for _ in range(n)]
    b = [torch.randn(d_sae, generator=g) for _ in range(n)]
    bd = [torch.randn(d_in, generator=g) for _ in range(n)]
    W_cat, W_stack = torch.cat(W, 1), torch.stack(W)
    bias_cat = torch.cat([bi - bdi @ Wi for Wi, bi, bdi in zip(W, b, bd)])
    b_stack = torch.stack(b)[:, None, :]
    fns = {"loop": lambda: [torch.addmm(bi, x - bdi, Wi) for Wi, bi, bdi in zip(W, b, bd)],
           "concatenated": lambda: torch.addmm(bias_cat, x, W_cat),
           "batched": lambda: torch.baddbmm(b_stack, torch.stack([x - bdi for bdi in bd]), W_stack)}
    for f in fns.values():
        f()
    times = interleaved(fns, rounds=rounds, repeat=2)
    med = {k: median(v) for k, v in times.items()}
    return {"n_saes": n, "d_in": d_in, "d_sae": d_sae, "batch": batch,
            "ms": {k: round(v * 1000, 1) for k, v in med.items()},
            "speedup_vs_loop": {k: round(med["loop"] / v, 2) for k, v in med.items()}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="d_in 384, expansion 8 only, 3 rounds")
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default="train_speed")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    configs = [(384, 8)] if args.quick else [(384, 8), (384, 32), (768, 8), (768, 32)]
    rounds = 3 if args.quick else args.rounds
    have = peers_available()
    doc = {"benchmark": "train_speed", "machine": machine(), "batch": args.batch, "k": args.k, "dtype": "float32",
           "optimiser": "Adam", "load_before": load(), "configs": []}
    rows = []
    for d_in, exp in configs:
        d_sae = d_in * exp
        x = synthetic(4 * args.batch, d_in)
        fns = {"sae-audit": ours(d_in, d_sae, args.k, x),
               "sae-audit (regularised)": ours(d_in, d_sae, args.k, x, regularised=True),
               "sae-audit (bf16)": ours(d_in, d_sae, args.k, x, bf16=True)}
        fns["floor: encoder matmul + topk"] = floor_step(d_in, d_sae, args.k, x)
        if have["sparsify"]:
            fns["sparsify"] = sparsify_step(d_in, d_sae, args.k, x)
        if have["sae_lens"]:
            fns["SAELens (dense)"] = saelens_step(d_in, d_sae, args.k, x, sparse=False)
            fns["SAELens (sparse)"] = saelens_step(d_in, d_sae, args.k, x, sparse=True)
        failed = {}
        for name, f in list(fns.items()):  # warm-up: allocations, first-call costs
            try:
                f()
            except Exception as exc:  # noqa: BLE001 - a peer's mode that does not run here is reported
                if name.startswith("sae-audit"):
                    raise
                failed[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                print(f"({name} failed and is left out: {failed[name]})", file=sys.stderr)
                del fns[name]
        big = d_sae * args.batch > 4096 * 8192
        before = load()
        times = interleaved(fns, rounds=rounds if not big else max(3, rounds - 2), repeat=1 if big else 2)
        med = {n: median(t) for n, t in times.items()}
        vps = {n: args.batch / t for n, t in med.items()}
        peer = {n: v for n, v in vps.items() if not n.startswith(("sae-audit", "floor"))}
        floor = vps["floor: encoder matmul + topk"]
        saelens = max((v for n, v in peer.items() if n.startswith("SAELens")), default=None)
        best_name = max(peer, key=peer.get) if peer else None
        entry = {"d_in": d_in, "expansion": exp, "d_sae": d_sae, "load_before": before, "load_after": load(),
                 "seconds_per_step": {n: [round(v, 4) for v in t] for n, t in times.items()},
                 "vectors_per_second": {n: round(v, 1) for n, v in vps.items()},
                 "best_peer": best_name, "failed": failed,
                 "train_speedup_vs_best_peer": round(vps["sae-audit"] / peer[best_name], 2) if peer else None,
                 "regularised_speedup_vs_best_peer": round(vps["sae-audit (regularised)"] / peer[best_name], 2)
                 if peer else None,
                 "floor_vectors_per_second": round(floor, 1),
                 "share_of_our_step_at_floor": round(vps["sae-audit"] / floor, 2),
                 "speedup_bound_vs_best_peer": round(floor / peer[best_name], 2) if peer else None,
                 "regularised_vs_plain": round(vps["sae-audit (regularised)"] / vps["sae-audit"], 2),
                 "bf16_vs_float32": round(vps["sae-audit (bf16)"] / vps["sae-audit"], 2)}
        doc["configs"].append(entry)
        rows.append([d_in, d_sae, round(vps["sae-audit"]), round(vps["sae-audit (regularised)"]),
                     round(vps["sae-audit (bf16)"]), round(vps["sparsify"]) if "sparsify" in vps else "-",
                     round(saelens) if saelens else "-",
                     entry["train_speedup_vs_best_peer"] if peer else "-", round(floor),
                     entry["speedup_bound_vs_best_peer"] if peer else "-", f"{before[0]:.1f}"])
        del fns
        gc.collect()
    doc["load_after"] = load()
    doc["train_speedup_vs_best_peer_by_config"] = {f"{c['d_in']}x{c['expansion']}": c["train_speedup_vs_best_peer"]
                                                   for c in doc["configs"]}
    # The headline is the smallest ratio over the configurations (the target holds for all of them).
    doc["train_speedup_vs_best_peer"] = min((c["train_speedup_vs_best_peer"] for c in doc["configs"]
                                             if c["train_speedup_vs_best_peer"] is not None), default=None)
    doc["tables"] = [table(["d_in", "d_sae", "sae-audit vec/s", "regularised", "bf16", "sparsify", "SAELens",
                            "speed-up vs best peer", "floor vec/s", "bound vs best peer", "load"], rows,
                           title=f"Training step, batch {args.batch}, k {args.k}, float32 Adam "
                                 f"(medians of {rounds} interleaved rounds)")]
    sweep = sweep_encoder(384, 384 * 8, 4, args.batch, rounds)
    doc["sweep_encoder"] = sweep
    doc["tables"].append(table(["n SAEs", *[f"{k} ms" for k in sweep["ms"]], "best vs loop"],
                               [[sweep["n_saes"], *sweep["ms"].values(), max(sweep["speedup_vs_loop"].values())]],
                               title="Encoder matmul of a sweep: one per SAE or fused (d_in 384, d_sae 3072)"))
    acc = bf16_accuracy(384, 384 * 8, args.k, steps=150 if args.quick else 400)
    doc["bf16_accuracy"] = acc
    doc["tables"].append(table(list(acc), [list(acc.values())],
                               title="bf16 training against float32 (same data and batches, held-out set)"))
    write_json(args.out, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
