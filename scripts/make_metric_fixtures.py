#!/usr/bin/env python3
"""Write the aesthetic-predictor fixture: a small random-weight predictor with the released
file's layout (improved-aesthetic-predictor's `MLP`: an nn.Sequential of Linear, Dropout,
Linear, Dropout, Linear, Dropout, Linear, Linear, saved with torch.save as `layers.N.*`), at
reduced widths 8 → 6 → 5 → 4 → 3 → 1, and its scores of a few embeddings computed as the
predictor's inference code computes them (L2-normalised embedding, eval mode).

Developer-run only (never by CI), offline:

    HF_HUB_OFFLINE=1 /tmp/sdvenv/bin/python scripts/make_metric_fixtures.py

Output: tests/fixtures/metrics/aesthetic.pth, tests/fixtures/metrics/aesthetic_golden.json.
"""
import json
import os

import numpy as np
import torch
from torch import nn

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "metrics")


class Predictor(nn.Module):
    def __init__(self, widths):
        super().__init__()
        a, b, c, d, e = widths
        self.layers = nn.Sequential(nn.Linear(a, b), nn.Dropout(0.2), nn.Linear(b, c), nn.Dropout(0.2),
                                    nn.Linear(c, d), nn.Dropout(0.1), nn.Linear(d, e), nn.Linear(e, 1))

    def forward(self, x):
        return self.layers(x)


def main():
    torch.manual_seed(0)
    os.makedirs(OUT, exist_ok=True)
    model = Predictor((16, 6, 5, 4, 3)).eval()
    torch.save(model.state_dict(), os.path.join(OUT, "aesthetic.pth"))
    embeddings = np.random.default_rng(0).normal(size=(3, 16)).astype(np.float32)
    normalized = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    with torch.no_grad():
        scores = model(torch.from_numpy(normalized)).squeeze(1).tolist()
    with open(os.path.join(OUT, "aesthetic_golden.json"), "w") as f:
        json.dump({"what": "scores of the (unnormalised) embeddings by aesthetic.pth on their L2-normalised rows",
                   "embeddings": embeddings.tolist(), "scores": scores}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
