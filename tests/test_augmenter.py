"""VaeDiff-DocRE's augmenter (docre/augmenter.py) against the official formulas (khaitran22/VaeDiff-DocRE
`Stage_2/improved_diffusion/gaussian_diffusion.py`, `Stage_2/dist.py`, `Stage_2/utils.py`, ema_pytorch 0.5.2):
the cosine schedule, one ancestral step (posterior mean of the x0 prediction + fixed-large noise), the
Gaussian densities, the cross-entropy constant, the EMA's warm-up, the stage-2 VAE loss written out, the
guided sampler's shapes and determinism, batches of documents."""

import math

import pytest
import torch

from docre.augmenter import (
    Augmenter,
    AugmenterSettings,
    Denoiser,
    document_batches,
    gaussian_log_density,
    stage2_losses,
    timestep_embedding,
)

SETTINGS = AugmenterSettings(hidden_size=32, num_classes=7, latent_size=8, width=64, depth=2, heads=1, diffusion_steps=50)


def official_cosine_betas(steps: int) -> torch.Tensor:
    """improved-diffusion's get_named_beta_schedule("cosine"): betas_for_alpha_bar with max_beta 0.999."""
    def alpha_bar(t):
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return torch.tensor([min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), 0.999) for i in range(steps)],
                        dtype=torch.float64)


@pytest.fixture(scope="module")
def augmenter():
    torch.manual_seed(0)
    return Augmenter(SETTINGS)


def test_schedule_is_the_official_cosine_schedule(augmenter):
    betas = official_cosine_betas(50)
    torch.testing.assert_close(augmenter.scheduler.betas.double(), betas, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(augmenter.alphas_cumprod.double(), torch.cumprod(1 - betas, 0), rtol=1e-5, atol=1e-7)
    assert betas[-1] == 0.999  # the cap is reached at the last step


@pytest.mark.parametrize("t", [49, 25, 1, 0])
def test_one_step_is_the_official_posterior_sample(augmenter, t):
    """p_sample with x0 prediction and FIXED_LARGE variance: mean = coef1 x0 + coef2 x_t, noise sqrt(beta_t) for t > 0."""
    betas = official_cosine_betas(50)
    alphabar = torch.cumprod(1 - betas, 0)
    previous = alphabar[t - 1] if t > 0 else torch.tensor(1.0, dtype=torch.float64)
    coef1 = betas[t] * previous.sqrt() / (1 - alphabar[t])
    coef2 = (1 - previous) * (1 - betas[t]).sqrt() / (1 - alphabar[t])
    x0, x_t = torch.randn(5, 8, dtype=torch.float64), torch.randn(5, 8, dtype=torch.float64)
    augmenter.scheduler.set_timesteps(50)
    torch.manual_seed(3)
    stepped = augmenter.scheduler.step(x0.float(), t, x_t.float()).prev_sample
    torch.manual_seed(3)
    noise = torch.randn(5, 8)
    expected = coef1 * x0 + coef2 * x_t + (betas[t].sqrt() * noise.double() if t > 0 else 0)
    torch.testing.assert_close(stepped.double(), expected, rtol=1e-4, atol=1e-5)


def test_densities_and_the_cross_entropy_constant(augmenter):
    x, mean, log_variance = torch.randn(4, 6), torch.randn(4, 6), torch.randn(4, 6)
    expected = torch.distributions.Normal(mean, torch.exp(0.5 * log_variance)).log_prob(x)
    torch.testing.assert_close(gaussian_log_density(x, mean, log_variance), expected)
    var0 = 1 - float(torch.cumprod(1 - official_cosine_betas(50), 0)[0])
    assert augmenter.cross_entropy_constant() == pytest.approx(0.5 * (1 + math.log(2 * math.pi * var0)), rel=1e-6)


def test_vae_clamps_like_the_official_normal(augmenter):
    mean, log_variance = augmenter.vae.encode(torch.randn(3, 32) * 1e4)
    assert mean.abs().max() <= 5 and log_variance.abs().max() <= 5
    mean, log_variance = augmenter.vae.decode(torch.randn(3, 8) * 1e4)
    assert mean.shape == (3, 32) and mean.abs().max() <= 5 and log_variance.abs().max() <= 5


def test_ema_copies_then_warms_up_to_beta():
    torch.manual_seed(1)
    augmenter = Augmenter(SETTINGS)
    weight = lambda module: next(module.parameters())  # noqa: E731
    for updates in (1, 10):
        with torch.no_grad():
            weight(augmenter.denoiser).add_(1.0)
        augmenter.update_ema(updates)
        assert torch.equal(weight(augmenter.ema), weight(augmenter.denoiser))  # a copy for the first 10
    for updates, decay in ((11, 0.0), (12, 1 - 2 ** (-2 / 3)), (5000, 0.995)):  # ema_pytorch: min(beta, 1 - (1 + k)^-2/3)
        before = weight(augmenter.ema).detach().clone()
        with torch.no_grad():
            weight(augmenter.denoiser).add_(1.0)
        augmenter.update_ema(updates)
        expected = decay * before + (1 - decay) * weight(augmenter.denoiser).detach()
        torch.testing.assert_close(weight(augmenter.ema), expected)


def test_stage2_vae_loss_written_out(augmenter):
    """L_vae = [-Σ log p(x|z) + κ Σ_i Σ_d (log q(z_i|x_i)_d + mse_i + c)] / B with the same random draws."""
    x, labels = torch.randn(6, 32), torch.zeros(6, 7)
    labels[:, 2] = 1
    torch.manual_seed(5)
    loss, z = stage2_losses(augmenter, x, labels, kl_weight=1e-3)
    torch.manual_seed(5)
    mean, log_variance = augmenter.vae.encode(x)
    z_again = mean + torch.exp(0.5 * log_variance) * torch.randn_like(mean)
    torch.testing.assert_close(z, z_again)
    decoded_mean, decoded_log_variance = augmenter.vae.decode(z_again)
    decoded = torch.distributions.Normal(decoded_mean, torch.exp(0.5 * decoded_log_variance))
    reconstruction = sum(-decoded.log_prob(x)[i].sum() for i in range(6))
    t = torch.randint(0, 50, (6,))
    x_t = augmenter.noisy(z_again, t)
    self_condition = None
    if torch.rand(()) < 0.5:
        self_condition = augmenter.denoiser(x_t, t, None, labels)
    mse = (augmenter.denoiser(x_t, t, self_condition, labels) - z_again).pow(2).mean(1)
    log_q = torch.distributions.Normal(mean, torch.exp(0.5 * log_variance)).log_prob(z_again)
    kl = sum((log_q[i] + mse[i] + augmenter.cross_entropy_constant()).sum() for i in range(6))
    torch.testing.assert_close(loss, (reconstruction + 1e-3 * kl) / 6, rtol=1e-5, atol=1e-5)


def test_guided_sampling_is_seeded_and_conditioned(augmenter):
    labels = torch.zeros(5, 7)
    labels[:, 3] = 1
    torch.manual_seed(7)
    first = augmenter.sample(labels, guidance=0.1)
    torch.manual_seed(7)
    again = augmenter.sample(labels, guidance=0.1)
    assert first.shape == (5, 32) and torch.isfinite(first).all() and torch.equal(first, again)
    torch.manual_seed(7)
    other = labels.clone()
    other[:, 3], other[:, 4] = 0, 1
    assert not torch.equal(augmenter.sample(other, guidance=0.1), first)  # the labels reach the prior


def test_denoiser_label_condition_is_the_mean_of_label_embeddings():
    torch.manual_seed(2)
    denoiser = Denoiser(SETTINGS).eval()
    x, t = torch.randn(2, 8), torch.tensor([3, 3])
    two = torch.zeros(2, 7)
    two[:, [1, 2]] = 1
    with torch.no_grad():
        mean_embedding = denoiser.label_embedding[[1, 2]].mean(0)
        one_hot_output = denoiser(x, t, None, two)
        # the same condition fed through a label whose embedding is that mean
        denoiser.label_embedding[5] = mean_embedding
        single = torch.zeros(2, 7)
        single[:, 5] = 1
        torch.testing.assert_close(denoiser(x, t, None, single), one_hot_output)


def test_batches_hold_whole_documents_in_a_seeded_order():
    docs = torch.tensor([0, 0, 1, 2, 2, 2, 5, 7, 7])
    batches = document_batches(docs, 2, seed=66, epoch=0)
    assert sorted(torch.cat(batches).tolist()) == list(range(9))
    assert all(len(set(docs[b].tolist())) <= 2 for b in batches)
    assert [b.tolist() for b in batches] == [b.tolist() for b in document_batches(docs, 2, seed=66, epoch=0)]
    assert [b.tolist() for b in batches] != [b.tolist() for b in document_batches(docs, 2, seed=66, epoch=1)]


def per_row_denoiser(denoiser: Denoiser, x, t, labels):
    """The denoiser's equations row by row, every time condition computed for every row (what the module
    computes once per distinct step and label set)."""
    time = denoiser.time_mlp(timestep_embedding(t, denoiser.width))
    if labels is not None:
        time = time + denoiser.label_to_time(labels @ denoiser.label_embedding / labels.sum(1, keepdim=True).clamp_min(1))
    hidden = denoiser.input(torch.cat([x, denoiser.initial_self_condition.expand(len(x), -1)], 1)) + denoiser.time_to_input(time)
    for layer in denoiser.layers:
        hidden = hidden + layer.attention_out(layer.value(layer.attention_norm(hidden)))
        scale, shift = layer.scale_shift(time).chunk(2, 1)
        value, gate = layer.ff_in(layer.ff_norm(hidden) * (1 + scale) + shift).chunk(2, 1)
        hidden = hidden + layer.ff_out(value * torch.nn.functional.gelu(gate))
    return denoiser.output(denoiser.norm(hidden))


def test_shared_time_conditions_give_the_per_row_values_and_gradients():
    torch.manual_seed(4)
    denoiser = Denoiser(SETTINGS).eval()
    x, t = torch.randn(20, 8), torch.randint(0, 5, (20,))
    labels = (torch.rand(20, 7) < 0.3).float()
    labels[3:6] = labels[6]  # shared label sets
    for condition in (labels, None):
        fast, slow = denoiser(x, t, None, condition), per_row_denoiser(denoiser, x, t, condition)
        torch.testing.assert_close(fast, slow)
        weights = list(denoiser.parameters())
        for a, b in zip(torch.autograd.grad(fast.square().sum(), weights, allow_unused=True),
                        torch.autograd.grad(slow.square().sum(), weights, allow_unused=True)):
            assert (a is None) == (b is None)
            if a is not None:  # the same sums in another order
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * b.abs().max().item())


def test_without_diffusers_vaediff_says_what_to_install(monkeypatch):
    import sys

    from docre.augmenter import make_scheduler
    from docre.errors import DocreError

    monkeypatch.setitem(sys.modules, "diffusers", None)  # what an import of a missing package does
    with pytest.raises(DocreError, match=r"model.name=vaediff needs diffusers .*pip install 'docre\[vaediff\]'"):
        make_scheduler(10)
