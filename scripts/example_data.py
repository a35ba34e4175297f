"""Write the example shop of configs/example.yaml: a bookshop's purchases and catalogue as RFC 4180
CSV files, with what real exports have: no timestamps, no ratings, descriptions over several
lines, products without a name or without a description, and a few with no text at all.

    python scripts/example_data.py [--out configs/example]

The books and their buyers come from the built-in synthetic generator (topics, tastes,
popularity), so the text carries the preference signal; the files are deterministic.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from llmrec_ray.config import DataConfig
from llmrec_ray.datasets.synthetic import load_synthetic


def write(out: Path, n_users: int = 300, n_items: int = 240, seed: int = 7) -> dict[str, int]:
    cfg = DataConfig(source="synthetic", synthetic={"n_users": n_users, "n_items": n_items, "seed": seed})
    ds = load_synthetic(cfg)
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    items = ds.items.to_pylist()
    gaps = rng.random(len(items))
    counts = {"products": len(items), "no_name": 0, "no_about": 0, "no_text": 0, "multiline": 0}
    with open(out / "products.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)  # RFC 4180: quotes where needed, newlines kept inside quoted fields
        w.writerow(["sku", "name", "shelf", "about"])
        for item, gap in zip(items, gaps):
            name = item["title"].replace("The ", "", 1)
            about = item["description"].replace("A film about", "A novel about")
            if "With elements of" in about:  # a second paragraph, as shop exports have
                about = about.replace(" With elements of ", "\nAlso: ", 1)
                counts["multiline"] += 1
            shelf = item["genres"]
            if gap < 0.04:  # nothing at all: kept, with no text vector
                name = about = shelf = ""
                counts["no_text"] += 1
            elif gap < 0.16:
                name = ""
                counts["no_name"] += 1
            elif gap < 0.28:
                about = ""
                counts["no_about"] += 1
            w.writerow([item["item_id"].replace("i", "B", 1), name, shelf, about])
    inter = ds.interactions.sort_by([("user_id", "ascending"), ("event_timestamp", "ascending")])
    with open(out / "purchases.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["customer", "sku"])
        for user, item in zip(inter.column("user_id").to_pylist(), inter.column("item_id").to_pylist()):
            w.writerow([user.replace("u", "C", 1), item.replace("i", "B", 1)])
    counts["purchases"] = inter.num_rows
    return counts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="configs/example")
    args = p.parse_args()
    print(write(Path(args.out)))


if __name__ == "__main__":
    main()
