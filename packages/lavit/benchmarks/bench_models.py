"""LaViT vs timm baselines at 224x224 on this machine: params, MACs, throughput, memory.

One run, models measured in adjacent pairs (lavit_tiny / pvt_v2_b1, ...) to limit drift on
a shared machine. Throughput is images/s from the median of timed forward passes after
warm-up (``lab_common.measure``), batch 1 and 32, fp32, ``torch.no_grad``. MACs = FLOPs of
``torch.utils.flop_counter.FlopCounterMode`` / 2 with attention counted
(``lavit.count_macs``). A per-stage breakdown (embedding, VA, LA,
MLP, attention residual: params, MACs and measured time at batch 8) explains the ratios.
Results are rewritten after every model, so an interrupted run keeps what it measured.

Usage: nice -n 10 python benchmarks/bench_models.py [--repeats 2] [--out benchmarks/results]
"""

import argparse
import re
import time
from collections import defaultdict
from pathlib import Path

import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

import lavit  # registers lavit_* with timm
from lab_common import measure, write_benchmark
from lavit.lavit import LessAttention

PAIRS = [
    ("lavit_tiny", "pvt_v2_b1"),
    ("lavit_small", "pvt_v2_b2"),
    ("lavit_base", "pvt_v2_b3"),
    ("deit_small_patch16_224", "swin_tiny_patch4_window7_224"),
]
TARGETS = {("lavit_tiny", "pvt_v2_b1"): 1.2, ("lavit_small", "pvt_v2_b2"): 1.15}
_PART = re.compile(
    r"stages\.(\d+)\.(?:blocks\.(\d+)\.(attn|mlp)|(patch_embed|downsample|attn_downsample))$"
)


def _category(model: torch.nn.Module, name: str) -> tuple[int, str] | None:
    """(stage, component) of a module we account for, else None."""
    if name == "patch_embed":  # pvt_v2 stem
        return 0, "embed"
    m = _PART.search(name)
    if m is None:
        return None
    stage = int(m.group(1))
    if m.group(4):
        return stage, "attn_residual" if m.group(4) == "attn_downsample" else "embed"
    if m.group(3) == "mlp":
        return stage, "mlp"
    attn = model.get_submodule(name)
    return stage, "LA" if isinstance(attn, LessAttention) else "VA"


def breakdown(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> dict[tuple[int, str], dict]:
    """Params, MACs and median wall time of each (stage, component)."""
    parts = {n: c for n, _ in model.named_modules() if (c := _category(model, n)) is not None}
    out: dict[tuple[int, str], dict] = defaultdict(lambda: dict(params=0, macs=0, time_s=0.0))
    for name, cat in parts.items():
        out[cat]["params"] += sum(p.numel() for p in model.get_submodule(name).parameters())
    for n, p in model.named_parameters():  # position embeddings belong to the embedding
        if n.endswith("pos_embed"):
            out[(int(n.split(".")[1]), "embed")]["params"] += p.numel()
    fused = [m for m in model.modules() if getattr(m, "fused_attn", False) is True]
    for m in fused:  # FlopCounterMode does not count the fused CPU attention kernel
        m.fused_attn = False
    with torch.no_grad(), FlopCounterMode(display=False, depth=None) as fc:
        model(x[:1])
    for m in fused:
        m.fused_attn = True
    prefix = type(model).__name__ + "."
    for fqn, ops in fc.get_flop_counts().items():
        if fqn.startswith(prefix) and (cat := parts.get(fqn[len(prefix) :])) is not None:
            out[cat]["macs"] += sum(ops.values()) / 2
    # timing: forward hooks around each accounted module, median over repeats
    runs: list[dict] = [defaultdict(float)]  # the first entry is the warm-up
    starts: dict[str, float] = {}
    handles = []
    for name, cat in parts.items():
        mod = model.get_submodule(name)

        def pre(_m, _a, name=name):
            starts[name] = time.perf_counter()

        def post(_m, _a, _o, name=name, cat=cat):
            runs[-1][cat] += time.perf_counter() - starts[name]

        handles += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]
    try:
        with torch.no_grad():
            model(x)  # warm-up
            for _ in range(repeats):
                runs.append(defaultdict(float))
                model(x)
    finally:
        for h in handles:
            h.remove()
    runs = runs[1:]
    for cat in parts.values():
        out[cat]["time_s"] = sorted(r[cat] for r in runs)[len(runs) // 2]
    return dict(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=2, help="timed batch-32 passes per model")
    p.add_argument("--repeats-b1", type=int, default=5, help="timed batch-1 passes per model")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = p.parse_args()
    torch.manual_seed(0)
    rows, stage_rows, by_name = [], [], {}
    for pair in PAIRS:
        for name in pair:
            model = timm.create_model(name).eval()
            x1, x32 = torch.randn(1, 3, 224, 224), torch.randn(32, 3, 224, 224)
            macs = lavit.count_macs(model, x1)
            with torch.no_grad():
                m1 = measure(lambda m=model, x=x1: m(x), warmup=2, repeats=args.repeats_b1)
                m32 = measure(lambda m=model, x=x32: m(x), warmup=1, repeats=args.repeats)
            row = dict(
                model=name,
                params_M=sum(q.numel() for q in model.parameters()) / 1e6,
                GMACs=macs / 1e9,
                img_s_b1=1 / m1.median_s,
                img_s_b32=32 / m32.median_s,
                peak_mem_MB_b32=m32.peak_memory_mb,
            )
            rows.append(row)
            by_name[name] = row
            print(row, flush=True)
            if name.startswith(("lavit", "pvt_v2")):
                parts = breakdown(model, x32[:8], args.repeats)
                for (stage, comp), v in sorted(parts.items()):
                    stage_rows.append(
                        dict(
                            model=name,
                            stage=stage,
                            component=comp,
                            params_M=v["params"] / 1e6,
                            GMACs=v["macs"] / 1e9,
                            ms_b8=1e3 * v["time_s"],
                        )
                    )
            _write(rows, stage_rows, by_name, args.out)


def _write(rows: list, stage_rows: list, by_name: dict, out: str) -> None:
    ratios = []
    for (a, b), target in TARGETS.items():
        if a not in by_name or b not in by_name:
            continue
        for key in ("img_s_b1", "img_s_b32"):
            r = by_name[a][key] / by_name[b][key]
            ratios.append(
                dict(
                    pair=f"{a} / {b}",
                    metric=key,
                    speedup=r,
                    target=target,
                    met="yes" if r >= target else "NO",
                    mac_ratio=by_name[b]["GMACs"] / by_name[a]["GMACs"],
                )
            )
    print(write_benchmark(rows, out, "models_224", title="Models at 224x224 (fp32, no_grad)"))
    if ratios:
        print(write_benchmark(ratios, out, "speedup_targets", title="Throughput ratios vs targets"))
    if stage_rows:
        print(write_benchmark(stage_rows, out, "stage_breakdown", title="Per-stage breakdown"))


if __name__ == "__main__":
    main()
