"""Synthetic DocRED documents with a planted relation pattern, for learning tests.

Each sentence links two entities through a verb: "X works for Y" is P108 (employer), "X lives in
Y" is P551 (residence), "X met Y" is no relation. A model that reads the words between the
markers can reach F1 near 1; one that cannot stays far below.
"""

import random

NAMES = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta", "zeta", "iota", "rho", "tau"]
PATTERNS = [(["works", "for"], "P108"), (["lives", "in"], "P551"), (["met"], None)]


def planted_docs(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    docs = []
    for index in range(count):
        names = rng.sample(NAMES, 4)
        sents, mentions, labels = [], {name: [] for name in names}, set()
        for _ in range(3):
            head, tail = rng.sample(names, 2)
            words, relation = rng.choice(PATTERNS)
            sent_id = len(sents)
            sents.append([head, *words, tail, "."])
            mentions[head].append({"name": head, "sent_id": sent_id, "pos": [0, 1], "type": "X"})
            mentions[tail].append({"name": tail, "sent_id": sent_id, "pos": [len(words) + 1, len(words) + 2], "type": "X"})
            if relation:
                labels.add((head, tail, relation))
        used = [name for name in names if mentions[name]]
        ids = {name: i for i, name in enumerate(used)}
        docs.append({
            "title": f"synthetic {seed}-{index}",
            "sents": sents,
            "vertexSet": [mentions[name] for name in used],
            "labels": [{"h": ids[h], "t": ids[t], "r": r, "evidence": []} for h, t, r in sorted(labels)],
        })
    return docs
