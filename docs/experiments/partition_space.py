"""Which feature space lets a 2-component GMM find the noisy samples? (the evidence behind the
`--partition-features` decision; see src/partition.rs).

    cargo run --release --example gmmprobe 5      # trains on Fashion-MNIST 40 % symmetric noise,
                                                  # dumps attributions, losses, labels, truth to /tmp
    python3 docs/experiments/partition_space.py          # needs numpy and scikit-learn

Measured here (MLP, 5 epochs, label-gradient): z-scored 256-d attribution F1 0.47 / AUROC 0.48;
per-class z-score 0.53; log / PCA variants <= 0.54; [ln||a||, ln CE] F1 0.94 / AUROC 0.98.
"""
import time

import numpy as np
from sklearn.decomposition import PCA
from sklearn.metrics import f1_score, roc_auc_score
from sklearn.mixture import GaussianMixture

A = np.fromfile("/tmp/attr-label-gradient.f32", dtype=np.float32).reshape(-1, 256).astype(np.float64)
L = np.fromfile("/tmp/loss-label-gradient.f32", dtype=np.float32).astype(np.float64)
T = np.fromfile("/tmp/truth.u8", dtype=np.uint8).astype(bool)
Y = np.fromfile("/tmp/labels.u32", dtype=np.uint32)


def run(X, name, cov="full"):
    t = time.time()
    g = GaussianMixture(2, covariance_type=cov, tol=1e-3, reg_covar=1e-6, max_iter=100, random_state=1).fit(X)
    r = g.predict_proba(X)
    hard = r.argmax(1)
    # the project's label-free rule: the clean component has the lower mean given-label CE
    m = [L[hard == k].mean() if (hard == k).any() else np.inf for k in range(2)]
    pn = r[:, 1 - int(np.argmin(m))]
    pred = pn >= 0.5
    print(f"{name:32s} F1 {f1_score(T, pred):.4f}  AUROC {roc_auc_score(T, pn):.4f}  est {pred.mean():.3f}  {time.time() - t:.1f}s", flush=True)


def z(X):
    sd = X.std(0)
    return np.where(sd > 1e-12, (X - X.mean(0)) / np.where(sd > 1e-12, sd, 1), 0)


def zc(X):
    out = np.zeros_like(X)
    for c in np.unique(Y):
        out[Y == c] = z(X[Y == c])
    return out


run(z(A), "attribution z-score (paper)")
run(z(A), "attribution z-score, diagonal", "diag")
run(zc(A), "attribution per-class z-score")
run(z(np.log(A + 1e-3)), "log attribution z-score")
for k in (2, 8, 32):
    run(PCA(k, random_state=1).fit_transform(z(A)), f"attribution z-score PCA {k}")
norm = np.log(np.sqrt((A ** 2).sum(1)) + 1e-12)
run(norm[:, None], "ln ||a|| (1-d)")
run(z(np.c_[norm, np.log(L + 1e-8)]), "summary [ln ||a||, ln CE]")
