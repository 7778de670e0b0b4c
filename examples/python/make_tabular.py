"""Write a small noisy tabular data set to try rlap with: K Gaussian classes in D dimensions,
a fraction of the labels flipped to another class (seeded), as one .npz file with

  features     float32 [n, D]   the rows to stream
  labels       int64   [n]      the given labels (some wrong)
  true_labels  int64   [n]      the labels before the flips (for scoring the verdicts only)

Usage: python make_tabular.py --out data.npz [--rows 4000] [--dim 16] [--classes 3]
       [--noise 0.2] [--seed 1]
"""

import argparse

import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--rows", type=int, default=4000)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--classes", type=int, default=3)
    ap.add_argument("--noise", type=float, default=0.2, help="fraction of labels flipped")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    centres = rng.normal(0.0, 3.0, size=(a.classes, a.dim))
    true = rng.integers(0, a.classes, size=a.rows)
    x = (centres[true] + rng.normal(0.0, 1.0, size=(a.rows, a.dim))).astype(np.float32)
    given = true.copy()
    flip = rng.random(a.rows) < a.noise
    # Another class, uniformly: never the true one.
    given[flip] = (true[flip] + rng.integers(1, a.classes, size=flip.sum())) % a.classes
    np.savez(a.out, features=x, labels=given, true_labels=true)
    print(f"{a.out}: {a.rows} rows, D={a.dim}, K={a.classes}, {flip.sum()} labels flipped")


if __name__ == "__main__":
    main()
