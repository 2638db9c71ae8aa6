"""AMTL against slow references written from the official code's equations (github.com/xhm-code/AMTL,
`losses.py` get_at_loss_by_MT / get_label_by_MT): loss values and gradients, decode, the relation
scores, the slice layout of the published Re-DocRED partition, and the partition rule."""

import gzip
import json
import math
from itertools import pairwise

import pytest
import torch

from docre.config import PROJECT_ROOT
from docre.errors import DocreError
from docre.losses import build_loss
from docre.losses.amtl import AMTLLoss, training_statistics

REL2ID = json.loads((PROJECT_ROOT / "data/docred/rel2id.json").read_text())
REL_IDS = sorted(REL2ID, key=REL2ID.get)  # relation ids in column order, "Na" first


def reference_layout(spaces):
    """docre column -> output column, and each space's output columns (NA slot first), by loops."""
    column, slices, start = {}, [], 0
    for space in spaces:
        slices.append(list(range(start, start + 1 + len(space))))
        for offset, c in enumerate(space, 1):
            column[c] = start + offset
        start += 1 + len(space)
    return column, slices, start


def reference_amtl(logits, labels, spaces, lam=3.5):
    """get_at_loss_by_MT, pair by pair, space by space, relation by relation."""
    column, slices, width = reference_layout(spaces)
    na_slots = [s[0] for s in slices]
    total = 0.0
    for p in range(len(logits)):
        y = [0.0] * width  # the 100-column labels: NA pairs set slot 0 only
        y[0] = float(labels[p, 0] > 0)
        for c in range(1, labels.size(1)):
            if labels[p, c] > 0:
                y[column[c]] = 1.0
        for slot in slices:
            own = slot[0]
            t = (logits[p, own] + sum(logits[p, b] for b in na_slots if b != own)) / lam
            positives = [j for j in slot[1:] if y[j] > 0]  # the slot's own label is zeroed
            negatives = [j for j in slot[1:] if y[j] == 0]
            for j in positives:
                total = total - (logits[p, j] - torch.logsumexp(torch.cat([t.view(1), logits[p, positives]]), 0))
            total = total - (t - torch.logsumexp(torch.cat([t.view(1), logits[p, negatives]]), 0))
    return total / (len(slices) * len(logits))


def reference_decode(logits, spaces, top_k):
    """get_label_by_MT, then back to docre columns."""
    column, slices, _ = reference_layout(spaces)
    output = torch.zeros(len(logits), len(column) + 1)
    for p in range(len(logits)):
        predicted = set()
        for slot in slices:
            values = [float(logits[p, j]) for j in slot]
            kth = sorted(values, reverse=True)[min(top_k, len(values)) - 1]
            predicted |= {j for j in slot[1:] if values[0] < float(logits[p, j]) and float(logits[p, j]) >= kth}
        for c, j in column.items():
            output[p, c] = float(j in predicted)
        output[p, 0] = float(not predicted)
    return output


def random_labels(pairs, classes, rate, generator):
    labels = torch.zeros(pairs, classes)
    labels[:, 1:] = (torch.rand(pairs, classes - 1, generator=generator) < rate).float()
    labels[:, 0] = (labels[:, 1:].sum(1) == 0).float()
    return labels


def random_partition(classes, sizes, generator):
    order = (torch.randperm(classes - 1, generator=generator) + 1).tolist()
    bounds = [sum(sizes[:k]) for k in range(len(sizes) + 1)]
    return [order[a:b] for a, b in pairwise(bounds)]


def shaped_spaces(seed: int = 0) -> list[list[int]]:
    """Re-DocRED's shape (97 columns; spaces of 10, 20, 46, 20; NA slots 0, 11, 32, 79) with the
    relations shuffled, so that the slice layout reorders the columns."""
    return random_partition(97, [10, 20, 46, 20], torch.Generator().manual_seed(1000 + seed))


def assert_matches_reference(spaces, logits, labels, lam=3.5):
    loss_fn = AMTLLoss(spaces, lam=lam)
    fast_logits = logits.clone().requires_grad_(True)
    slow_logits = logits.double().requires_grad_(True)
    fast = loss_fn(fast_logits, labels)
    slow = reference_amtl(slow_logits, labels, spaces, lam)
    fast.backward()
    slow.backward()
    assert fast.dtype == torch.float32
    assert abs(fast.item() - slow.item()) <= 1e-5 * abs(slow.item())
    torch.testing.assert_close(fast_logits.grad.double(), slow_logits.grad, rtol=1e-4, atol=1e-6)


# --- the partition rule ---


def counts_to_labels(counts):
    """[P, C] labels in which relation c + 1 holds for counts[c] pairs (one relation per pair)."""
    rows = [c + 1 for c, n in enumerate(counts) for _ in range(n)]
    labels = torch.zeros(len(rows) + 3, len(counts) + 1)  # 3 NA pairs
    labels[torch.arange(len(rows)), rows] = 1.0
    labels[:, 0] = (labels[:, 1:].sum(1) == 0).float()
    return labels


def test_partition_rule_on_hand_made_counts():
    # columns 1..11; sorted by count: 3 (50), 1 (12), 2 (10), 7 (8, before 8 by column), 8 (8), 4 (6), 5 (3), 6 (1),
    # 9 (1), 10 (1), 11 (0); cumulative 50, 62 | 72, 80 | 88, 94, 97, 98 | 99, 100, 100 (of 100):
    # the first relation reaching 60 %, 80 % and 98 % ends spaces 1, 2 and 3; the absent relation 11 is last
    counts = [12, 10, 50, 6, 3, 1, 8, 8, 1, 1, 0]
    spaces = training_statistics(counts_to_labels(counts))["spaces"]
    assert spaces == [[3, 1], [2, 7], [8, 4, 5, 6], [9, 10, 11]]
    assert json.loads(json.dumps({"spaces": spaces})) == {"spaces": spaces}


def test_partition_keeps_every_space_non_empty():
    spaces = training_statistics(counts_to_labels([0, 1000, 1, 0, 0]))["spaces"]
    assert spaces == [[2], [3], [1], [4, 5]]


def test_partition_refuses_too_few_relations_or_facts():
    with pytest.raises(DocreError, match="cannot split"):
        training_statistics(counts_to_labels([5, 4, 3]))
    with pytest.raises(DocreError, match="cannot split"):
        training_statistics(counts_to_labels([0] * 10))


def redocred_mini_training_labels() -> torch.Tensor:
    """[P, 97] labels of the pairs with a relation in Re-DocRED-mini's training split (dev_revised[:400])."""
    docs = json.loads(gzip.decompress((PROJECT_ROOT / "data/redocred/dev_revised.json.gz").read_bytes()))[:400]
    pairs = {}
    for i, doc in enumerate(docs):
        for label in doc["labels"]:
            pairs.setdefault((i, label["h"], label["t"]), set()).add(REL2ID[label["r"]])
    labels = torch.zeros(len(pairs), 97)
    for row, relations in enumerate(pairs.values()):
        labels[row, sorted(relations)] = 1.0
    return labels


def test_partition_of_redocred_mini_has_the_published_sizes():
    derived = training_statistics(redocred_mini_training_labels())["spaces"]
    assert [len(s) for s in derived] == [10, 20, 46, 20]


# --- the loss against the reference ---


def test_values_and_gradients_match_reference():
    spaces = shaped_spaces()
    for seed in range(4):
        generator = torch.Generator().manual_seed(seed)
        pairs = int(torch.randint(20, 61, (1,), generator=generator))
        logits = torch.randn(pairs, 100, generator=generator) * 3
        assert_matches_reference(spaces, logits, random_labels(pairs, 97, 0.05, generator))  # ~5 relations a pair
        assert_matches_reference(spaces, logits, random_labels(pairs, 97, 0.005, generator))  # mostly NA pairs


def test_other_partitions_and_lambda_match_reference():
    generator = torch.Generator().manual_seed(7)
    spaces = random_partition(13, [2, 5, 1, 4], generator)
    logits = torch.randn(30, 16, generator=generator) * 3
    assert_matches_reference(spaces, logits, random_labels(30, 13, 0.2, generator), lam=1.0)
    three = random_partition(13, [6, 3, 3], generator)
    assert_matches_reference(three, torch.randn(25, 15, generator=generator) * 3,
                             random_labels(25, 13, 0.15, generator))


def test_degenerate_batches_match_reference():
    spaces = shaped_spaces(1)
    generator = torch.Generator().manual_seed(11)
    logits = torch.randn(24, 100, generator=generator) * 3
    na_only = torch.zeros(24, 97)
    na_only[:, 0] = 1.0
    assert_matches_reference(spaces, logits, na_only)
    assert_matches_reference(spaces, logits[:1], random_labels(1, 97, 0.1, generator))  # a single pair
    first_space_only = torch.zeros(24, 97)  # three spaces without any positive
    first_space_only[torch.arange(24), torch.tensor(spaces[0]).repeat(3)[:24]] = 1.0
    assert_matches_reference(spaces, logits, first_space_only)


def test_hand_worked_value():
    # two spaces of one relation: layout [NA_1, r1, NA_2, r2]; NA pair with s = (7, 0, 0, 0), lam = 3.5:
    # t = (7 + 0) / 3.5 = 2 in both spaces, each space -log(e^2 / (e^2 + 1)) = log(1 + e^-2)
    loss = AMTLLoss([[1], [2]])(torch.tensor([[7.0, 0.0, 0.0, 0.0]]), torch.tensor([[1.0, 0.0, 0.0]]))
    torch.testing.assert_close(loss, torch.tensor(math.log(1 + math.exp(-2))))


# --- decode and relation scores ---


def test_decode_matches_reference():
    spaces = shaped_spaces(2)
    loss_fn = AMTLLoss(spaces)
    for seed in range(3):
        logits = torch.randn(50, 100, generator=torch.Generator().manual_seed(seed)) * 3
        logits[:10, loss_fn.na_slots] -= 20.0  # NA slots far down: four per space, 16 in all
        for top_k in (1, 2, 4, 100):
            decoded = loss_fn.decode(logits, top_k)
            assert torch.equal(decoded, reference_decode(logits, spaces, top_k))
        assert (loss_fn.decode(logits, 4)[:, 1:].sum(1) > 4).any()
        assert (loss_fn.decode(logits, 4)[:10, 1:].sum(1) == 16).all()


def test_relation_scores_positive_exactly_where_decode_predicts_uncapped():
    loss_fn = AMTLLoss(shaped_spaces(3))
    logits = torch.randn(80, 100, generator=torch.Generator().manual_seed(5)) * 3
    scores = loss_fn.relation_scores(logits)
    assert scores.shape == (80, 97) and (scores[:, 0] == 0).all()
    assert torch.equal(scores[:, 1:] > 0, loss_fn.decode(logits, top_k=1000)[:, 1:] > 0)


# --- contract ---


def test_inputs_unchanged_and_float32_from_half_precision():
    loss_fn = AMTLLoss(shaped_spaces())
    generator = torch.Generator().manual_seed(3)
    logits, labels = torch.randn(20, 100, generator=generator) * 3, random_labels(20, 97, 0.05, generator)
    logits_before, labels_before = logits.clone(), labels.clone()
    loss_fn(logits, labels)
    loss_fn.decode(logits, 4)
    loss_fn.relation_scores(logits)
    assert torch.equal(logits, logits_before) and torch.equal(labels, labels_before)
    for dtype in (torch.float16, torch.bfloat16):
        loss = loss_fn(logits.to(dtype), labels)
        assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_needs_its_spaces_and_the_matching_width():
    loss_fn = AMTLLoss()
    assert loss_fn.num_outputs is None
    logits, labels = torch.zeros(2, 100), torch.zeros(2, 97)
    for call in (lambda: loss_fn(logits, labels), lambda: loss_fn.decode(logits, 4),
                 lambda: loss_fn.relation_scores(logits)):
        with pytest.raises(DocreError, match="label spaces"):
            call()
    with pytest.raises(DocreError, match=r"\[pairs, 100\]"):
        AMTLLoss(shaped_spaces())(torch.zeros(2, 97), labels)
    for bad in ([[1, 2], [2, 3]], [[1], [3]], [[1], []], []):
        with pytest.raises(ValueError, match="exactly once"):
            AMTLLoss(bad)
    with pytest.raises(DocreError, match=r"labels of shape \[2, 96\], expected \[2, 97\]"):
        AMTLLoss(shaped_spaces())(logits, torch.zeros(2, 96))
    with pytest.raises(DocreError, match="loss 'amtl': lam must be positive, got 0"):
        build_loss("amtl", lam=0)


# --- the published Re-DocRED partition (data/amtl/redocred_spaces.json) ---


def redocred_spaces() -> list[list[int]]:
    return training_statistics(torch.zeros(1, len(REL_IDS)), REL_IDS, dataset_spaces="redocred")["spaces"]


def test_redocred_partition_maps_to_docre_relations():
    spaces = redocred_spaces()
    assert [len(s) for s in spaces] == [10, 20, 46, 20]
    assert sorted(c for s in spaces for c in s) == list(range(1, 97))
    loss_fn = AMTLLoss(spaces)
    assert loss_fn.num_outputs == 100 and loss_fn.na_slots == [0, 11, 32, 79]
    # AMTL's order: P131 opens the first space, P1001 the second, P22 the third, P279 the fourth
    assert [REL_IDS[s[0]] for s in spaces] == ["P131", "P1001", "P22", "P279"]
    assert REL_IDS[spaces[3][-1]] == "P1198"


def test_decode_maps_slice_columns_back_to_relation_ids():
    loss_fn = AMTLLoss(redocred_spaces())
    logits = torch.full((1, 100), -5.0)
    logits[0, [2, 12, 99]] = 5.0  # P17 (2nd of space 1), P1001 (1st of space 2), P1198 (last of space 4)
    decoded = loss_fn.decode(logits, top_k=4)
    assert {REL_IDS[c] for c in decoded[0].nonzero().flatten().tolist()} == {"P17", "P1001", "P1198"}


def test_published_partition_needs_the_runs_relation_ids():
    with pytest.raises(DocreError, match="relation ids"):
        training_statistics(torch.zeros(1, 97), None, dataset_spaces="redocred")
    renamed = [*REL_IDS[:-1], "P9999"]
    with pytest.raises(DocreError, match="P9999"):
        training_statistics(torch.zeros(1, 97), renamed, dataset_spaces="redocred")
    with pytest.raises(DocreError, match="available: redocred"):
        training_statistics(torch.zeros(1, 97), REL_IDS, dataset_spaces="docred")


def test_redocred_mini_partition_mostly_agrees_with_the_published_one():
    """80 of the 96 relations land in their published space when written (the published one was
    derived from the full training split, 3053 documents, not these 400)."""
    derived = training_statistics(redocred_mini_training_labels())["spaces"]
    published = {c: k for k, space in enumerate(redocred_spaces()) for c in space}
    assert sum(published[c] == k for k, space in enumerate(derived) for c in space) >= 75
