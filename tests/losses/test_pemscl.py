"""PEMSCL against a slow float64 reference written from the equations of the official code
(guojiapub/PEMSCL `codes/losses.py`, `codes/model.py`): Python loops over pairs and relations, the
group-bilinear vectors built explicitly, the [N, N] broadcasts of PMTEM and of the contrastive term
evaluated cell by cell. Also: the Gram trick equals the explicit cosine, the per-pair / per-anchor
readings, the one-pair batch, large margins (two-way softmax, not 1 - sigmoid), inputs untouched,
half-precision inputs, argument checks."""

import math

import pytest
import torch

from docre.errors import DocreError
from docre.losses.common import threshold_decode
from docre.losses.pemscl import PairFeatures, PEMSCLLoss, bilinear_cosine, pmtem, supervised_contrastive
from docre.models.bilinear import group_bilinear
from tests.losses.helpers import split_classes

EPS = 1e-30  # inside every log of the official code
CLASSES, EMB, BLOCK = 97, 64, 16
RE_DOCRED = {"tau": 0.2, "tau_base": 2.0}  # the official Re-DocRED script


def explicit_bl(head: torch.Tensor, tail: torch.Tensor, block: int) -> torch.Tensor:
    """[P, emb * block] group-bilinear vectors, pair by pair and block by block."""
    rows = []
    for h, t in zip(head, tail):
        rows.append(torch.cat([torch.outer(h[b : b + block], t[b : b + block]).flatten() for b in range(0, len(h), block)]))
    return torch.stack(rows)


def two_way(s0, sr):
    """(q̄, q): the official softmax over (s_0, s_r)."""
    probs = torch.softmax(torch.stack([s0, sr]), 0)
    return probs[0], probs[1]


def reference_pmtem(logits, labels, lambda1=1.0, lambda2=1.0, form="official"):
    sat, s3, s4, n_pos, n_neg = [], [], [], [], []
    for s, y in zip(logits, labels):
        positives, negatives = split_classes(y)
        l1 = l2 = h3 = h4 = torch.zeros((), dtype=s.dtype)
        for r in positives + negatives:
            q_bar, q = two_way(s[0], s[r])
            entropy = -(q * torch.log(q + EPS) + q_bar * torch.log(q_bar + EPS))
            if r in positives:
                l1, h3 = l1 - torch.log(q + EPS), h3 + entropy
            else:
                l2, h4 = l2 - torch.log(q_bar + EPS), h4 + entropy
        sat.append(l1 + l2)
        s3.append(h3)
        s4.append(h4)
        n_pos.append(max(len(positives), 1))
        n_neg.append(max(len(negatives), 1))
    pairs = len(logits)
    if form == "per_pair":
        return sum(sat[i] + lambda1 * s3[i] / n_pos[i] + lambda2 * s4[i] / n_neg[i] for i in range(pairs)) / pairs
    # the official broadcast: cell (i, j) = L1_j + L2_j + λ1 S3_j / n⁺_i + λ2 S4_j / n⁻_i, mean over N² cells
    cells = [sat[j] + lambda1 * s3[j] / n_pos[i] + lambda2 * s4[j] / n_neg[i] for i in range(pairs) for j in range(pairs)]
    return sum(cells) / pairs**2


def reference_scl(bl, labels, tau=2.0, tau_base=1.0, form="official"):
    pairs = len(bl)
    if pairs < 2:
        return torch.zeros((), dtype=bl.dtype)
    f = [v / torch.clamp(v.norm(), min=1e-12) for v in bl]
    gold = [{c for c in range(labels.size(1)) if labels[i, c] > 0} for i in range(pairs)]
    lp1, lp2, related = [], [], []
    for i in range(pairs):
        row = [torch.dot(f[i], f[k]) / tau for k in range(pairs)]
        top = torch.stack(row).max().detach()
        lse = torch.log(sum(torch.exp(row[k] - top) for k in range(pairs) if k != i))
        partners = [j for j in range(pairs) if j != i and gold[i] & gold[j]]
        lp1.append(sum((row[j] - top - lse for j in partners), torch.zeros((), dtype=bl.dtype)) / max(len(partners), 1))
        lp2.append(-lse if not partners else torch.zeros((), dtype=bl.dtype))
        related.append(float(labels[i, 0] != 1))
    if form == "per_anchor":
        return -(tau / tau_base) * sum(related[i] * (lp1[i] + lp2[i]) for i in range(pairs)) / pairs
    # the official broadcast: cell (i, j) = (lp1_j + lp2_i) m_j, mean over N² cells
    cells = [(lp1[j] + lp2[i]) * related[j] for i in range(pairs) for j in range(pairs)]
    return -(tau / tau_base) * sum(cells) / pairs**2


def reference_pemscl(logits, labels, head, tail, tau=2.0, tau_base=1.0, lambda1=1.0, lambda2=1.0, lambda3=1.0,
                     pmtem_form="official", scl_form="official"):
    bl = explicit_bl(head, tail, BLOCK)
    return (reference_pmtem(logits, labels, lambda1, lambda2, pmtem_form)
            + lambda3 * reference_scl(bl, labels, tau, tau_base, scl_form))


def random_case(pairs: int, positive_rate: float = 0.05, seed: int = 0, scale: float = 3.0):
    """Logits, labels with about `positive_rate` related pairs (at least 3), drawn from a few relations
    so that pairs share labels, plus one related pair whose relation no other pair has; tanh features
    around a shared direction, so that cosines spread."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(pairs, CLASSES, generator=generator, dtype=torch.float64) * scale
    labels = torch.zeros(pairs, CLASSES)
    order = torch.randperm(pairs, generator=generator).tolist()
    related = order[: max(3, round(positive_rate * pairs))]
    for p in related[1:]:
        count = 1 + int(torch.randint(3, (), generator=generator))  # 1 to 3 relations
        labels[p, 1 + torch.randperm(6, generator=generator)[:count]] = 1.0
    labels[related[0], 90] = 1.0  # no partner: the lp2 branch for a related anchor
    labels[:, 0] = (labels[:, 1:].sum(1) == 0).float()
    shared = torch.randn(EMB, generator=generator, dtype=torch.float64)
    head = torch.tanh(torch.randn(pairs, EMB, generator=generator, dtype=torch.float64) + shared)
    tail = torch.tanh(torch.randn(pairs, EMB, generator=generator, dtype=torch.float64) - shared)
    return logits, labels, head, tail


def fast_and_reference(logits, labels, head, tail, **kwargs):
    """(loss, grads) of the float32 loss and of the float64 reference, grads w.r.t. logits, head, tail."""
    fast_inputs = [x.float().requires_grad_(True) for x in (logits, head, tail)]
    slow_inputs = [x.double().requires_grad_(True) for x in (logits, head, tail)]
    fast = PEMSCLLoss(**kwargs)(fast_inputs[0], labels, PairFeatures(fast_inputs[1], fast_inputs[2], BLOCK))
    slow = reference_pemscl(slow_inputs[0], labels, slow_inputs[1], slow_inputs[2], **kwargs)
    fast_grads = torch.autograd.grad(fast, fast_inputs, allow_unused=True)
    slow_grads = torch.autograd.grad(slow, slow_inputs, allow_unused=True)
    return fast, slow, fast_grads, slow_grads


def assert_matches(fast, slow, fast_grads, slow_grads):
    assert fast.dtype == torch.float32 and torch.isfinite(fast)
    torch.testing.assert_close(fast.double(), slow.detach(), rtol=1e-5, atol=1e-7)
    for fast_grad, slow_grad in zip(fast_grads, slow_grads):
        if slow_grad is None:  # a one-pair reference never touches the features
            assert fast_grad is None or not fast_grad.any()
            continue
        torch.testing.assert_close(fast_grad.double(), slow_grad, rtol=1e-4, atol=1e-6 * slow_grad.abs().max().item())


def assert_parts_match(logits, labels, head, tail, pmtem_form="official", scl_form="official", **kwargs):
    """PMTEM and the contrastive term separately (the contrastive term is small beside PMTEM)."""
    weights = {k: kwargs[k] for k in ("lambda1", "lambda2") if k in kwargs}
    temperatures = {k: kwargs[k] for k in ("tau", "tau_base") if k in kwargs}
    fast = pmtem(logits.float(), labels, form=pmtem_form, **weights)
    torch.testing.assert_close(fast.double(), reference_pmtem(logits, labels, form=pmtem_form, **weights), rtol=1e-5, atol=0.0)
    cosine = bilinear_cosine(PairFeatures(head.float(), tail.float(), BLOCK))
    fast = supervised_contrastive(cosine, labels, form=scl_form, **temperatures)
    slow = reference_scl(explicit_bl(head, tail, BLOCK), labels, form=scl_form, **temperatures)
    torch.testing.assert_close(fast.double(), slow, rtol=1e-5, atol=1e-9)


def test_bilinear_cosine_equals_explicit_vectors():
    generator = torch.Generator().manual_seed(0)
    head, tail = torch.randn(2, 9, 12, generator=generator, dtype=torch.float64)
    tail[3] = 0.0  # a zero vector: F.normalize's clamp gives it cosine 0 with everything
    bl = explicit_bl(head, tail, 4)
    f = torch.nn.functional.normalize(bl, dim=-1)
    torch.testing.assert_close(bilinear_cosine(PairFeatures(head, tail, 4)), f @ f.t(), rtol=1e-12, atol=1e-12)


def test_explicit_vectors_are_the_group_bilinear_input():
    # the vectors compared by the contrastive term are the ones docre's classifier multiplies
    generator = torch.Generator().manual_seed(1)
    head, tail = torch.randn(2, 5, 12, generator=generator, dtype=torch.float64)
    weight, bias = torch.randn(7, 12 * 4, generator=generator, dtype=torch.float64), torch.randn(7, dtype=torch.float64)
    torch.testing.assert_close(group_bilinear(head, tail, weight, bias, 4), explicit_bl(head, tail, 4) @ weight.t() + bias)


CASES = [  # pairs, positive rate, seed, loss keywords
    (20, 0.05, 0, {}),
    (40, 0.05, 1, RE_DOCRED),
    (60, 0.05, 2, {}),
    (30, 0.3, 3, RE_DOCRED),
    (25, 0.2, 4, {"lambda1": 0.5, "lambda2": 2.0, "lambda3": 0.7, "tau": 0.5, "tau_base": 1.5}),
]


@pytest.mark.parametrize("pairs,positive_rate,seed,kwargs", CASES)
def test_official_forms_match_reference(pairs, positive_rate, seed, kwargs):
    case = random_case(pairs, positive_rate, seed)
    assert_matches(*fast_and_reference(*case, **kwargs))
    assert_parts_match(*case, **kwargs)


@pytest.mark.parametrize("pmtem_form,scl_form",
                         [("per_pair", "per_anchor"), ("per_pair", "official"), ("official", "per_anchor")])
def test_per_pair_and_per_anchor_forms_match_reference(pmtem_form, scl_form):
    case = random_case(24, 0.25, seed=5)
    assert_matches(*fast_and_reference(*case, pmtem_form=pmtem_form, scl_form=scl_form, **RE_DOCRED))
    assert_parts_match(*case, pmtem_form=pmtem_form, scl_form=scl_form, **RE_DOCRED)


def test_na_only_batch_matches_reference_and_forms_agree():
    logits, _, head, tail = random_case(20, seed=6)
    labels = torch.zeros(20, CLASSES)
    labels[:, 0] = 1.0
    assert_matches(*fast_and_reference(logits, labels, head, tail, **RE_DOCRED))
    values = [PEMSCLLoss(pmtem_form=p, scl_form=s, **RE_DOCRED)(logits.float(), labels, PairFeatures(head, tail, BLOCK))
              for p in ("official", "per_pair") for s in ("official", "per_anchor")]
    for value in values[1:]:
        torch.testing.assert_close(value, values[0])
    # no related pair: the contrastive term is 0 in both forms
    assert supervised_contrastive(bilinear_cosine(PairFeatures(head, tail, BLOCK)), labels).item() == 0.0


def test_official_and_per_pair_forms_differ_with_unequal_positive_counts():
    logits, labels, head, tail = random_case(30, 0.3, seed=7)
    assert len(set(labels[:, 1:].sum(1).tolist())) > 1
    official, per_pair = (pmtem(logits, labels, form=form) for form in ("official", "per_pair"))
    assert abs(official.item() - per_pair.item()) > 1e-3
    cosine = bilinear_cosine(PairFeatures(head, tail, BLOCK))
    official, per_anchor = (supervised_contrastive(cosine, labels, form=form) for form in ("official", "per_anchor"))
    assert abs(official.item() - per_anchor.item()) > 1e-3


def test_single_pair_has_no_contrastive_term():
    logits, labels, head, tail = random_case(2, seed=8)
    labels.zero_()
    labels[0, 4] = labels[1, 0] = 1.0  # a related pair and an NA pair
    for row in (0, 1):
        one = [x[row : row + 1] for x in (logits, labels, head, tail)]
        fast, slow, fast_grads, slow_grads = fast_and_reference(*one, **RE_DOCRED)
        assert_matches(fast, slow, fast_grads, slow_grads)
        torch.testing.assert_close(fast, pmtem(one[0], one[1]))


def test_large_margins_use_the_two_way_softmax():
    # every relation 40 below TH, except pair 0's negative r5 40 above it (pair 0 is NA) and pair 1's
    # positive r3 40 below it
    logits = torch.zeros(2, CLASSES, dtype=torch.float64)
    logits[:, 1:] = -40.0
    logits[0, 5] = 40.0
    labels = torch.zeros(2, CLASSES)
    labels[0, 0] = labels[1, 3] = 1.0
    _, _, head, tail = random_case(2, seed=9)
    fast, slow, fast_grads, slow_grads = fast_and_reference(logits, labels, head, tail)
    assert_matches(fast, slow, fast_grads, slow_grads)
    # the wrong negative costs -log(sigmoid(-40) + 1e-30) = 40; 1 - sigmoid(40) rounds to 0 even in float64,
    # which would make it -log(1e-30) = 69.1
    assert 1 - 1 / (1 + math.exp(-40.0)) == 0.0
    assert pmtem(logits[:1], labels[:1]).item() == pytest.approx(40.0, rel=1e-6)
    assert pmtem(logits[1:], labels[1:]).item() == pytest.approx(40.0, rel=1e-6)


def test_the_official_epsilon_caps_each_term():
    # -log(q + 1e-30) <= 69.08: a positive 100 below TH costs that, with (almost) no gradient
    logits = torch.zeros(1, CLASSES)
    logits[0, 1:] = -50.0
    logits[0, 7] = -100.0
    labels = torch.zeros(1, CLASSES)
    labels[0, 7] = 1.0
    logits.requires_grad_(True)
    loss = pmtem(logits, labels)
    loss.backward()
    assert loss.item() == pytest.approx(-math.log(EPS), rel=1e-6)
    assert loss.item() == pytest.approx(reference_pmtem(logits.detach().double(), labels).item(), rel=1e-6)
    assert logits.grad.abs().max() < 1e-12


def test_inputs_unchanged_and_float32_from_half_inputs():
    logits, labels, head, tail = (x.float() for x in random_case(20, 0.2, seed=10))
    before = [x.clone() for x in (logits, labels, head, tail)]
    loss_fn = PEMSCLLoss(**RE_DOCRED)
    reference = loss_fn(logits, labels, PairFeatures(head, tail, BLOCK))
    for x, y in zip((logits, labels, head, tail), before):
        assert torch.equal(x, y)
    for dtype in (torch.float16, torch.bfloat16):
        loss = loss_fn(logits.to(dtype), labels.to(dtype), PairFeatures(head.to(dtype), tail.to(dtype), BLOCK))
        assert loss.dtype == torch.float32
        torch.testing.assert_close(loss, reference, rtol=2e-2, atol=0.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert loss_fn(logits, labels, PairFeatures(head, tail, BLOCK)).dtype == torch.float32


def test_decode_is_the_threshold_rule():
    logits, *_ = random_case(20, seed=11)
    assert torch.equal(PEMSCLLoss().decode(logits, 4), threshold_decode(logits.float(), 4))
    assert torch.equal(PEMSCLLoss(th_offset=0.5).decode(logits, 4), threshold_decode(logits.float(), 4, 0.5))


def test_argument_checks():
    with pytest.raises(ValueError, match="official, per_pair"):
        PEMSCLLoss(pmtem_form="paper")
    with pytest.raises(ValueError, match="official, per_anchor"):
        PEMSCLLoss(scl_form="intended")
    with pytest.raises(ValueError, match="positive"):
        PEMSCLLoss(tau=0.0)
    logits, labels, head, tail = random_case(4, seed=12)
    with pytest.raises(DocreError, match="needs the pairs' features"):
        PEMSCLLoss()(logits, labels)
    with pytest.raises(ValueError, match="pairs"):
        PEMSCLLoss()(logits, labels, PairFeatures(head[:3], tail[:3], BLOCK))
    with pytest.raises(ValueError, match="block_size"):
        bilinear_cosine(PairFeatures(head, tail, 24))
