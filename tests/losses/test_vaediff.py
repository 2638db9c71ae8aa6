"""VaeDiff-DocRE's loss against a slow float64 reference written from the official code's equations
(khaitran22/VaeDiff-DocRE `Stage_1/losses.py` SCLoss, `Stage_1/model.py` and `Stage_3/model.py` for how the
terms are combined): Python loops over anchors and partners, cosines from explicit dot products. PMTEM itself
is PEMSCL's and tested in test_pemscl.py; here it is reused as the reference's classification term. Also:
the synthetic rows' own classification term, the stage-3 warm-up (no contrastive term without synthetic
pairs), the ATGL swap, one related pair, no related pair, inputs untouched, argument checks."""

import pytest
import torch

from docre.errors import DocreError
from docre.losses.atgl import ATGLoss
from docre.losses.vaediff import VaeDiffLoss, selected_contrastive
from docre.models.output import PairFeatures
from tests.losses.test_pemscl import reference_pmtem

CLASSES, WIDTH = 97, 24


def reference_scl(vectors, labels, tau=1.0, tau_base=0.5):
    """The official SCLoss over the given (already selected) pairs, anchor by anchor."""
    pairs = len(vectors)
    if pairs < 2:
        return torch.zeros((), dtype=vectors.dtype)
    f = [v / v.norm() for v in vectors]
    gold = [{c for c in range(labels.size(1)) if labels[i, c] > 0} for i in range(pairs)]
    total = torch.zeros((), dtype=vectors.dtype)
    for i in range(pairs):
        row = [torch.dot(f[i], f[k]) / tau for k in range(pairs)]
        top = torch.stack(row).max().detach()  # the official shift: it cancels in lp1
        lse = torch.log(sum(torch.exp(row[k] - top) for k in range(pairs) if k != i))
        partners = [j for j in range(pairs) if j != i and gold[i] & gold[j]]
        total = total + sum((row[j] - top - lse for j in partners), torch.zeros((), dtype=vectors.dtype)) / max(len(partners), 1)
    return -(tau / tau_base) * total / pairs


def reference_loss(logits, labels, vectors, synthetic=0, tau=1.0, tau_base=0.5, classify=reference_pmtem):
    """Official stage 1 (synthetic = 0) and stage 3 (synthetic > 0): classification of the real pairs, of the
    synthetic ones, and SCL_v over the related real pairs and the synthetic ones."""
    real = len(logits) - synthetic
    loss = classify(logits[:real], labels[:real])
    if synthetic:
        loss = loss + classify(logits[real:], labels[real:])
    related = [i for i in range(len(logits)) if labels[i, 0] != 1]
    return loss + reference_scl(vectors[related], labels[related], tau, tau_base)


def random_case(pairs: int, synthetic: int = 0, seed: int = 0):
    """Logits [P, C], labels (a third of the real pairs related, from a few relations so that they share labels;
    synthetic pairs all related), cell vectors [P, WIDTH] around a shared direction."""
    generator = torch.Generator().manual_seed(seed)
    total = pairs + synthetic
    logits = torch.randn(total, CLASSES, generator=generator, dtype=torch.float64) * 3
    labels = torch.zeros(total, CLASSES)
    for p in range(total):
        if p >= pairs or p % 3 == 0:
            count = 1 + int(torch.randint(2, (), generator=generator))
            labels[p, 1 + torch.randperm(5, generator=generator)[:count]] = 1.0
    labels[:, 0] = (labels[:, 1:].sum(1) == 0).float()
    shared = torch.randn(WIDTH, generator=generator, dtype=torch.float64)
    vectors = torch.randn(total, WIDTH, generator=generator, dtype=torch.float64) + shared
    return logits, labels, vectors


@pytest.mark.parametrize("pairs, synthetic, seed", [(12, 0, 0), (30, 0, 1), (12, 8, 2), (20, 14, 3)])
def test_value_and_gradients_match_the_official_equations(pairs, synthetic, seed):
    logits, labels, vectors = random_case(pairs, synthetic, seed)
    fast_inputs = [x.float().requires_grad_(True) for x in (logits, vectors)]
    slow_inputs = [x.clone().requires_grad_(True) for x in (logits, vectors)]
    loss_fn = VaeDiffLoss(contrastive_alone=synthetic == 0)
    fast = loss_fn(fast_inputs[0], labels, PairFeatures(vector=fast_inputs[1]), synthetic=synthetic)
    slow = reference_loss(slow_inputs[0], labels, slow_inputs[1], synthetic)
    assert fast.dtype == torch.float32
    torch.testing.assert_close(fast.double(), slow.detach(), rtol=1e-5, atol=1e-7)
    for fast_grad, slow_grad in zip(torch.autograd.grad(fast, fast_inputs), torch.autograd.grad(slow, slow_inputs)):
        torch.testing.assert_close(fast_grad.double(), slow_grad, rtol=1e-4, atol=1e-6 * slow_grad.abs().max().item())


def test_contrastive_term_alone_matches_and_is_not_vacuous():
    _, labels, vectors = random_case(16, 6, seed=4)
    related = labels[:, 0] != 1
    cosine = torch.nn.functional.normalize(vectors[related].float(), dim=1)
    value = selected_contrastive(cosine @ cosine.t(), labels[related], 1.0, 0.5)
    torch.testing.assert_close(value.double(), reference_scl(vectors[related], labels[related]), rtol=1e-5, atol=1e-7)
    assert value.abs() > 1e-3  # the term is there at all
    # the official Re-DocRED temperatures scale it by tau / tau_base = 2
    half = selected_contrastive(cosine @ cosine.t(), labels[related], 1.0, 1.0)
    torch.testing.assert_close(value, 2 * half)


def test_synthetic_rows_get_their_own_classification_term():
    logits, labels, vectors = random_case(10, 6, seed=5)
    loss_fn = VaeDiffLoss(contrastive=False)
    whole = loss_fn(logits.float(), labels, PairFeatures(vector=vectors.float()), synthetic=6)
    real = loss_fn(logits[:10].float(), labels[:10], PairFeatures(vector=vectors[:10].float()))
    fake = loss_fn(logits[10:].float(), labels[10:], PairFeatures(vector=vectors[10:].float()))
    torch.testing.assert_close(whole, real + fake)  # a sum of two means, not one mean over 16 rows
    assert not torch.allclose(whole, loss_fn(logits.float(), labels, PairFeatures(vector=vectors.float())))


def test_stage3_warm_up_leaves_the_contrastive_term_out():
    logits, labels, vectors = random_case(12, seed=6)
    features = PairFeatures(vector=vectors.float())
    warm_up = VaeDiffLoss(contrastive_alone=False)(logits.float(), labels, features)
    torch.testing.assert_close(warm_up.double(), reference_pmtem(logits, labels), rtol=1e-5, atol=0.0)
    # stage 1 keeps it; and without features it is an error, not a silent drop
    stage1 = VaeDiffLoss()(logits.float(), labels, features)
    assert not torch.allclose(stage1, warm_up)
    with pytest.raises(DocreError, match="needs the pairs' features"):
        VaeDiffLoss()(logits.float(), labels)


def test_atgl_swap_replaces_both_classification_terms_and_keeps_the_contrastive_one():
    logits, labels, vectors = random_case(12, 6, seed=7)
    atgl = ATGLoss(alpha=4.0)
    slow = reference_loss(logits, labels, vectors, 6, classify=lambda x, y: atgl(x, y).double())
    loss_fn = VaeDiffLoss(classification="atgl", alpha=4.0)
    fast = loss_fn(logits.float(), labels, PairFeatures(vector=vectors.float()), synthetic=6)
    torch.testing.assert_close(fast.double(), slow, rtol=1e-5, atol=1e-6)


def test_one_or_no_related_pair_gives_no_contrastive_term():
    logits, labels, vectors = random_case(9, seed=8)
    na_only = torch.zeros_like(labels)
    na_only[:, 0] = 1
    one = na_only.clone()
    one[3, 0], one[3, 5] = 0, 1
    for case in (na_only, one):  # NaN in the official code (the mean of nothing, or a log of an empty sum)
        value = VaeDiffLoss()(logits.float(), case, PairFeatures(vector=vectors.float()))
        torch.testing.assert_close(value.double(), reference_pmtem(logits, case), rtol=1e-5, atol=0.0)


def test_inputs_untouched_and_arguments_checked():
    logits, labels, vectors = random_case(12, 4, seed=9)
    copies = [x.clone() for x in (logits, labels, vectors)]
    VaeDiffLoss()(logits.float(), labels, PairFeatures(vector=vectors.float()), synthetic=4)
    assert all(torch.equal(a, b) for a, b in zip(copies, (logits, labels, vectors)))
    for bad, message in (({"classification": "bce"}, "classification must be one of"),
                         ({"pmtem_form": "mine"}, "pmtem_form"), ({"tau": 0.0}, "tau")):
        with pytest.raises(ValueError, match=message):
            VaeDiffLoss(**bad)
