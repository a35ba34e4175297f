"""Pipeline scale: the whole `llmrec run` (build-features, train, evaluate) on the synthetic
generator at several sizes, each stage's wall seconds and peak RSS, in one run.

    python benchmarks/pipeline_scale.py --interactions 100000,1000000 --out pipeline-scale.json
    python benchmarks/pipeline_scale.py --interactions 100000,1000000 --shape lognormal --out ...
    python benchmarks/pipeline_scale.py --interactions 1000000 --shape lognormal --encoder minilm \
        --user-vectors items_mean --out benchmarks/results/pipeline-scale-minilm.json

Per size: users = interactions / 30 (30 interactions per user on average, `--shape poisson` or
heavy-tailed `lognormal`), items = users * 0.6 (ML-1M's ratio), one training epoch, Feast's
SQLite online store, and `--encoder tiny` (default: a random BERT of 2 layers, 32 wide, with the
MiniLM tokenizer, so that the data path is what is measured) or `minilm` (the real encoder);
`--user-vectors` text (default) or items_mean. Each stage is its own `llmrec <stage>` process;
its peak memory is that of the process and all its descendants (its local Ray's GCS, raylet and
workers; `variants.PeakMemory`), sampled every 0.5 s, as RSS-sum and as PSS (shared pages counted
once, divided among the processes that share them).

JSON: {"sizes": {n: {"stages": {stage: {"wall_s", "peak_rss_mb", "peak_pss_mb", "s_per_1k_interactions"}}}},
"ratios": {stage: cost per interaction at the largest size / at the smallest}}.
Targets: every ratio <= 1.5 (no worse than linear), peak RSS at 1M under 6 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from variants import ROOT, PeakMemory, child_main, ratios, run_child

STAGES = ("build-features", "train", "evaluate")


def tiny_encoder(path: Path) -> str:
    import torch
    from transformers import AutoModel, AutoTokenizer, BertConfig

    from llmrec_ray.text_model import resolve_model

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=512)
    AutoModel.from_config(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(resolve_model("minilm")[0]).save_pretrained(path)
    return str(path)


def run_stage(cmd: list[str], log: Path) -> dict:
    """Run one CLI stage; its wall seconds and the peak memory of its process and all its
    descendants (its Ray: GCS, raylet, workers), sampled every 0.5 s."""
    start = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
        with PeakMemory(proc.pid, interval=0.5) as mem:
            proc.wait()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (rc {proc.returncode}); log: {log}\n"
                         + log.read_text()[-3000:])
    return {"wall_s": wall, "peak_rss_mb": mem.rss_mb, "peak_pss_mb": mem.pss_mb}


def accepted(run_dir: Path) -> int:
    """The interactions the run accepted (the generator caps each user's history, so a size is
    approximate): from the run's summary.json."""
    summary = json.loads((run_dir / "summary.json").read_text())
    return summary["build_features"]["data"]["interactions"]["accepted"]


def plain_encode(items, model: str):
    """The item texts encoded plainly: tokenizer + model forward + mean pooling, batches of 64
    texts in length order. (item vectors, texts, seconds)."""
    import numpy as np
    import torch
    from transformers import AutoModel, AutoTokenizer

    from llmrec_ray.serialize import item_text
    from llmrec_ray.text_model import resolve_model

    start = time.perf_counter()
    path = resolve_model(model)[0]
    tok, enc = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    texts = sorted({item_text(r, "{title}. Genres: {genres}. {description}") for r in items.to_pylist()},
                   key=len, reverse=True)
    vectors = []
    with torch.inference_mode():
        for lo in range(0, len(texts), 64):
            b = tok(texts[lo:lo + 64], padding=True, truncation=True, max_length=128, return_tensors="pt")
            h = enc(**b).last_hidden_state  # (B, T, H)
            m = b["attention_mask"].unsqueeze(-1).float()  # (B, T, 1)
            vectors.append(torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1).numpy())
    return np.concatenate(vectors), len(texts), time.perf_counter() - start


def plain_train(split, item_ids: list, users: list, item_vecs, epochs: int) -> float:
    """`epochs` passes of the run's model and batch size in a plain torch loop over as many rows
    as the fit rows (inputs of the same shapes, random): seconds."""
    import numpy as np
    import torch

    from llmrec_ray.config import TrainConfig
    from llmrec_ray.models.two_tower import TwoTower

    n, d = split.fit.num_rows, item_vecs.shape[1]
    t = TrainConfig(model="hybrid")
    rng = np.random.default_rng(0)
    batch = {"user_emb": torch.from_numpy(rng.standard_normal((n, d), dtype=np.float32)),
             "user_extra": torch.zeros((n, 4)), "user_idx": torch.from_numpy(rng.integers(0, len(users), n)),
             "item_idx": torch.from_numpy(rng.integers(0, len(item_ids), n)),
             "item_emb": torch.from_numpy(item_vecs[rng.integers(0, len(item_vecs), n)])}
    torch.manual_seed(0)
    net = TwoTower(user_dim=d, item_dim=d, hidden_dim=t.hidden_dim, out_dim=t.out_dim, dropout=t.dropout,
                   temperature=t.temperature, user_extra_dim=4, n_users=len(users), n_items=len(item_ids),
                   id_dim=t.id_dim, id_dropout=t.id_dropout, id_mode=t.id_mode, text_aux=t.text_aux)
    opt = torch.optim.AdamW(net.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    start = time.perf_counter()
    net.train()
    for _ in range(epochs):
        order = torch.randperm(n)
        for lo in range(0, n - t.batch_size + 1, t.batch_size):
            idx = order[lo:lo + t.batch_size]
            loss = net({k: v[idx] for k, v in batch.items()})
            opt.zero_grad()
            loss.backward()
            opt.step()
    return time.perf_counter() - start


def plain_baselines(split, item_ids: list, users: list, item_vecs) -> float:
    """The run's baselines fitted at every grid point and scored on the validation queries, the
    best of each ranked on the test queries, with numpy: seconds."""
    import numpy as np

    from llmrec_ray import baselines as base
    from llmrec_ray.evaluate import available_baselines
    from llmrec_ray.recommender import FitData, Queries

    start = time.perf_counter()
    matrix = base.interaction_matrix(split.fit, users, item_ids)
    fit = FitData(matrix, users, item_ids, 0, item_text=np.resize(item_vecs, (len(item_ids), item_vecs.shape[1])))
    row = {u: k for k, u in enumerate(users)}
    seen = matrix.toarray().astype(bool)

    def queries(frame):
        rows = np.array([row.get(u, -1) for u in frame["user_id"]], dtype=np.int64)
        rows = rows[rows >= 0]
        return Queries(matrix[rows], rows), seen[rows]
    valid, valid_mask = queries(split.valid_queries)
    test, test_mask = queries(split.test_queries)
    for name in available_baselines(None):
        if name == "zero_shot_cosine":
            continue
        best, best_value = None, -1.0
        for point in base.grid_points(base.DEFAULT_GRIDS.get(name, {})):
            rec = base.BASELINES[name](**point).fit(fit)
            top = rec.top_k(valid, valid_mask, 20)
            value = float((top >= 0).mean())  # the scoring and ranking are the cost measured
            if best is None or value > best_value:  # (no validation query at a tiny size: nan)
                best, best_value = rec, value
        best.top_k(test, test_mask, 20)
    return time.perf_counter() - start


def plain_parts(run_dir: Path, model: str, user_vectors: str, epochs: int = 1) -> dict:
    """The run's work done plainly in this one process, no Ray, no Feast: the same encoder over the
    distinct item texts (the run's users pooled from them: `--user-vectors items_mean`), the same
    epochs of the same model and batch size in a plain torch loop over as many rows as the fit
    rows (inputs of the same shapes), and the same baselines fitted at every grid point, scored on
    the validation queries and ranked on the test queries with numpy. Seconds of each part."""
    import pyarrow.parquet as pq

    from llmrec_ray.split import user_temporal_eval_split

    items = pq.read_table(run_dir / "dataset" / "items.parquet")
    split = user_temporal_eval_split(pq.read_table(run_dir / "dataset" / "interactions.parquet"))
    item_ids = sorted(items.column("item_id").to_pylist())
    users = sorted(set(split.fit.column("user_id").to_pylist()))
    item_vecs, texts, encode_s = plain_encode(items, model)
    out = {"encode_s": encode_s, "texts": texts,
           "train_s": plain_train(split, item_ids, users, item_vecs, epochs), "fit_rows": split.fit.num_rows,
           "baselines_s": plain_baselines(split, item_ids, users, item_vecs)}
    out["total_s"] = out["encode_s"] + out["train_s"] + out["baselines_s"]
    return out


def run_size(n: int, args, work: Path, model: str) -> dict:
    """Every stage of one `llmrec` run at about `n` interactions, each its own process (the run
    kept under `work/run-<n>`): users, items, accepted interactions and each stage's figures."""
    users = max(10, n // args.per_user)
    items = max(20, int(users * 0.6))
    run = work / f"run-{n}"
    repo = run / "feature_repo"
    repo.mkdir(parents=True, exist_ok=True)
    for name in ("feature_store.yaml", "features.py"):
        (repo / name).write_bytes((ROOT / "feature_repo" / name).read_bytes())
    overrides = [
        f"data.synthetic.n_users={users}", f"data.synthetic.n_items={items}",
        f"data.synthetic.interactions_per_user={args.per_user}",
        f"data.synthetic.history_shape={args.shape}",
        f"encode.model={model}", "encode.dtype=float32", "encode.max_length=128",
        f"serialize.user_vectors={args.user_vectors}",
        f"featurestore.repo_path={repo}", f"output_dir={run / 'runs'}", "train.epochs=1",
        "train.model=hybrid", "train.export=false"]
    cmd_tail = ["--config", str(ROOT / "configs" / "synthetic.yaml")] + [a for o in overrides for a in ("--set", o)]
    llmrec = str(Path(sys.executable).with_name("llmrec"))
    stages = {}
    for stage in STAGES:
        print(f"[{n:,}] {stage} ...", file=sys.stderr, flush=True)
        out = run_stage([llmrec, stage] + cmd_tail, run / f"{stage}.log")
        out["s_per_1k_interactions"] = out["wall_s"] / n * 1000
        stages[stage] = out
        print(f"[{n:,}] {stage}: {out['wall_s']:.1f}s, {out['peak_rss_mb']:.0f} MB", file=sys.stderr, flush=True)
    return {"users": users, "items": items, "stages": stages, "interactions": accepted(run / "runs" / "synthetic")}


def compare_plain(results: dict, n: int, args, work: Path, model: str) -> None:
    """The parts of the run at `n` done plainly in a process of their own (`plain_parts`): into
    `results["plain"]`, with the whole run's ratio to them."""
    print(f"[{n:,}] the same parts done plainly ...", file=sys.stderr, flush=True)
    plain = run_child(__file__, "plain", args, ("out", "user_vectors"),
                      run_dir=work / f"run-{n}" / "runs" / "synthetic", encoder_path=model)
    whole = sum(s["wall_s"] for s in results["sizes"][str(n)]["stages"].values())
    results["plain"] = plain
    results.setdefault("ratios", {})["whole_over_plain_parts"] = whole / plain["total_s"]
    print(f"[{n:,}] plain parts {plain['total_s']:.0f}s; whole run {whole:.0f}s", file=sys.stderr, flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--interactions", default="100000,1000000", help="comma-separated sizes")
    p.add_argument("--shape", default="poisson", choices=["poisson", "lognormal"])
    p.add_argument("--out", required=True)
    p.add_argument("--keep", help="keep run directories here (default: a temp dir)")
    p.add_argument("--encoder", default="tiny", choices=["tiny", "minilm"])
    p.add_argument("--user-vectors", default="text", choices=["text", "items_mean"])
    p.add_argument("--plain", action="store_true", help="also do the largest run's parts plainly "
                   "in one process (`plain_parts`) and report the whole run's ratio to them")
    p.add_argument("--per-user", type=int, default=30, help="mean interactions per user")
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--run-dir", help=argparse.SUPPRESS)
    p.add_argument("--encoder-path", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.plain and args.user_vectors != "items_mean":
        p.error("--plain compares runs whose users are pooled from item vectors: add --user-vectors items_mean")
    if args.variant:  # child process: the plain parts of one kept run
        child_main({"plain": lambda a: plain_parts(Path(a.run_dir), a.encoder_path, a.user_vectors)}, args)
        return
    sizes = [int(s) for s in args.interactions.split(",")]
    results = {"shape": args.shape, "encoder": args.encoder, "user_vectors": args.user_vectors,
               "per_user": args.per_user, "sizes": {}, "machine": {"cpus": os.cpu_count()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep or tmp)
        model = tiny_encoder(work / "tiny-bert") if args.encoder == "tiny" else "minilm"
        for n in sizes:
            results["sizes"][str(n)] = run_size(n, args, work, model)
            Path(args.out).write_text(json.dumps(results, indent=2))
            if args.plain and n == max(sizes):
                compare_plain(results, n, args, work, model)
    lo, hi = str(min(sizes)), str(max(sizes))
    if lo != hi:  # cost per interaction at the largest size over the smallest, per stage
        per_1k = {k: {s: v["s_per_1k_interactions"] for s, v in size["stages"].items()}
                  for k, size in results["sizes"].items()}
        results.setdefault("ratios", {}).update(ratios(per_1k, {s: (hi, lo, s) for s in STAGES}))
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(json.dumps(results.get("ratios", {}), indent=2))


if __name__ == "__main__":
    main()
