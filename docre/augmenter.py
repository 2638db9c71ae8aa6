"""VaeDiff-DocRE's feature augmenter (Tran, Hua, Li, COLING 2025; official code github.com/khaitran22/VaeDiff-DocRE
at 5f51f9e, `Stage_2/model.py`, `Stage_2/trainer.py`, `Stage_2/diffusion_transformers.py`, `Stage_2/dist.py`,
`Stage_2/improved_diffusion/gaussian_diffusion.py`): a VAE over the frozen stage-1 model's pair features of related
pairs, and a label-conditioned latent diffusion prior over its latents. Stage 3 samples synthetic related-pair
features from it (`Augmenter.sample`). docs/models.md has the whole recipe and every deviation.

VAE (H = the encoder's width, h = H/4, z = `latent_size`):
    encoder  RMSNorm(H) -> Linear(H, h) -> LeakyReLU(0.2) -> Linear(h, h) -> RMSNorm -> LeakyReLU -> Linear(h, z)
             mu = Linear(z, z), v = Linear(z, z): log-variance, both clamped to [-5, 5], std = exp(v / 2)
    decoder  Linear(z, h) -> LeakyReLU -> RMSNorm -> Linear(h, h) -> LeakyReLU -> RMSNorm -> Linear(h, 2H)
             = (mean, log-variance) of a diagonal Gaussian p(x | z), the same clamps
Prior: a denoiser that predicts x0 from (x_t, t, the previous x0 prediction, the pair's labels); one token per
sample, so each layer's self-attention reduces to its value and output projections; GLU feed-forward layers with
scale-shift time conditioning; the label condition is the mean of learned embeddings of the pair's labels, added to
the time embedding. Diffusion: 50 steps, cosine schedule, x0 prediction, fixed-large variance, uniform t,
classifier-free guidance (1 + w) cond - w uncond at sampling, self-conditioning (probability 0.5 in training).

The diffusion schedule and the ancestral sampler are diffusers' `DDPMScheduler` (beta_schedule
"squaredcos_cap_v2" is improved-DDPM's cosine schedule with betas capped at 0.999, the official
`get_named_beta_schedule("cosine")`; prediction_type "sample" is x0 prediction; variance_type "fixed_large"
adds beta_t noise, the official FIXED_LARGE for every t > 0): a maintained implementation of exactly this
sampler, tested against the official formula in tests/test_augmenter.py, instead of a copy of improved-diffusion.

Stage-2 objective per batch of related pairs x [B, H] (LSGM/VADA style, as the official trainer):
    L_vae  = [ -sum log p(x | z) + kappa * sum_i sum_d ( log q(z_i | x_i)_d + mse_i + c_d ) ] / B
             mse_i = mean_d (x0_pred(z_t) - z)^2 with gradients into z (the prior is a cross-entropy term),
             c = 0.5 (1 + log(2 pi (1 - alphabar_0))), kappa = 1e-6 for the warm-up epochs, then `kl_weight`
    L_diff = mean_i mse_i on detached z, labels dropped for the whole batch with probability `uncond_prob`
             (from the first epoch after the warm-up; EMA of the denoiser after 10 updates)
Deviations from the official trainer (its bugs, MODELS_LOSSES.md §4.4): the VAE's gradients are zeroed every step
(the official code never zeroes them, so they accumulate over the run); the VAE's cosine learning-rate schedule steps
once per epoch after the warm-up, over the remaining epochs (the official code steps it every batch, so the rate
oscillates with a period of 178 steps); the dropout coin and the self-conditioning coin come from torch's generator
(the official code uses NumPy's), so that a resumed run replays them.
"""

import copy
import dataclasses
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from docre import checkpoint
from docre.errors import DocreError
from docre.utils import atomic_write_json, logger

LOG_2PI = math.log(2 * math.pi)


@dataclass
class AugmenterSettings:
    """The sizes of the augmenter (the official Re-DocRED script's values as defaults)."""

    hidden_size: int  # H: the pair features' width (the encoder's hidden size)
    num_classes: int  # C: label columns, NA included
    latent_size: int = 384
    width: int = 256  # the denoiser's width (tx_dim)
    depth: int = 6
    heads: int = 4
    dropout: float = 0.1
    diffusion_steps: int = 50


def _clamped_gaussian(parameters: Tensor) -> tuple[Tensor, Tensor]:
    """(mean, log-variance) [N, D] of a [N, 2D] output, each clamped to [-5, 5] as the official `Normal`."""
    mean, log_variance = parameters.chunk(2, dim=1)
    return mean.clamp(-5, 5), log_variance.clamp(-5, 5)


def gaussian_log_density(x: Tensor, mean: Tensor, log_variance: Tensor) -> Tensor:
    """log N(x; mean, exp(log_variance)) per dimension [N, D]."""
    return -0.5 * (x - mean) ** 2 * torch.exp(-log_variance) - 0.5 * LOG_2PI - 0.5 * log_variance


class FeatureVAE(nn.Module):
    def __init__(self, hidden_size: int, latent_size: int):
        super().__init__()
        inner = hidden_size // 4
        self.encoder = nn.Sequential(
            nn.RMSNorm(hidden_size, eps=1e-8), nn.Linear(hidden_size, inner), nn.LeakyReLU(0.2), nn.Linear(inner, inner),
            nn.RMSNorm(inner, eps=1e-8), nn.LeakyReLU(0.2), nn.Linear(inner, latent_size))
        self.mean = nn.Linear(latent_size, latent_size)
        self.log_variance = nn.Linear(latent_size, latent_size)
        self.decoder = nn.Sequential(
            nn.Linear(latent_size, inner), nn.LeakyReLU(0.2), nn.RMSNorm(inner, eps=1e-8), nn.Linear(inner, inner),
            nn.LeakyReLU(0.2), nn.RMSNorm(inner, eps=1e-8), nn.Linear(inner, 2 * hidden_size))

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x [N, H] -> (mean, log-variance) [N, z] of q(z | x)."""
        hidden = self.encoder(x)
        return _clamped_gaussian(torch.cat([self.mean(hidden), self.log_variance(hidden)], dim=1))

    def decode(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """z [N, z] -> (mean, log-variance) [N, H] of p(x | z)."""
        return _clamped_gaussian(self.decoder(z))


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding [N, dim] of the steps t [N] (the official SinusoidalPosEmb)."""
    half = dim // 2
    frequencies = torch.exp(torch.arange(half, device=t.device) * -(math.log(10000) / (half - 1)))  # [half]
    angles = t.float()[:, None] * frequencies[None, :]  # [N, half]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class DenoiserLayer(nn.Module):
    """Pre-norm attention over one token (its value and output projections: softmax over a single key is 1)
    and a GLU feed-forward layer whose normalised input is scaled and shifted by the time embedding."""

    def __init__(self, width: int, time_width: int, dropout: float):
        super().__init__()
        self.attention_norm = nn.LayerNorm(width)
        self.value = nn.Linear(width, width, bias=False)
        self.attention_out = nn.Linear(width, width)
        self.ff_norm = nn.LayerNorm(width)
        self.scale_shift = nn.Sequential(nn.SiLU(), nn.Linear(time_width, 2 * width))
        self.ff_in = nn.Linear(width, 2 * 4 * width)  # GLU: value and gate
        self.ff_out = nn.Linear(4 * width, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, conditions: Tensor, row_condition: Tensor) -> Tensor:
        """x [N, width], conditions [U, time_width] the distinct time conditions, row_condition [N] each row's
        -> [N, width]."""
        x = x + self.dropout(self.attention_out(self.value(self.attention_norm(x))))
        scale, shift = self.scale_shift(conditions)[row_condition].chunk(2, dim=1)  # [N, width] each
        value, gate = self.ff_in(self.ff_norm(x) * (1 + scale) + shift).chunk(2, dim=1)
        return x + self.ff_out(self.dropout(value * F.gelu(gate)))


class Denoiser(nn.Module):
    """Predicts x0 [N, z] from x_t [N, z], steps t [N], the previous prediction (self-conditioning; a learned
    vector when there is none) and multi-hot labels [N, C] (None: unconditional)."""

    def __init__(self, settings: AugmenterSettings):
        super().__init__()
        width, latent, time_width = settings.width, settings.latent_size, 4 * settings.width
        self.width = width
        self.time_mlp = nn.Sequential(nn.Linear(width, time_width), nn.GELU(), nn.Linear(time_width, time_width))
        self.time_to_input = nn.Sequential(nn.GELU(), nn.Linear(time_width, width))
        self.label_embedding = nn.Parameter(torch.randn(settings.num_classes, width))  # [C, width]
        self.label_to_time = nn.Linear(width, time_width)
        self.initial_self_condition = nn.Parameter(torch.randn(1, latent) * 0.02)
        self.input = nn.Linear(2 * latent, width)
        self.layers = nn.ModuleList(DenoiserLayer(width, time_width, settings.dropout) for _ in range(settings.depth))
        self.norm = nn.LayerNorm(width)
        self.output = nn.Linear(width, latent)
        nn.init.xavier_normal_(self.output.weight)

    def forward(self, x: Tensor, t: Tensor, self_condition: Tensor | None, labels: Tensor | None) -> Tensor:
        # a row's time condition depends only on its step and its label set, which many rows share (a sampling
        # call has one step; a batch's pairs share label sets): it is computed once per distinct (step, labels)
        steps, row_step = torch.unique(t, return_inverse=True)  # [S], [N]
        step_time = self.time_mlp(timestep_embedding(steps, self.width))  # [S, 4 width]
        if labels is None:
            conditions, row_condition = step_time, row_step
        else:  # plus the mean of the active labels' embeddings
            label_sets, row_labels = torch.unique(labels.float(), dim=0, return_inverse=True)  # [L, C], [N]
            mean = label_sets @ self.label_embedding / label_sets.sum(1, keepdim=True).clamp_min(1)  # [L, width]
            label_time = self.label_to_time(mean)  # [L, 4 width]
            combined, row_condition = torch.unique(row_step * len(label_sets) + row_labels, return_inverse=True)  # [U], [N]
            conditions = step_time[combined // len(label_sets)] + label_time[combined % len(label_sets)]  # [U, 4 width]
        if self_condition is None:
            self_condition = self.initial_self_condition.expand(x.size(0), -1)
        hidden = self.input(torch.cat([x, self_condition], dim=1)) + self.time_to_input(conditions)[row_condition]  # [N, width]
        for layer in self.layers:
            hidden = layer(hidden, conditions, row_condition)
        return self.output(self.norm(hidden))  # [N, z]


def require_diffusers():
    """diffusers' DDPMScheduler class, or a one-line error saying what to install (train_vaediff asks before stage 1)."""
    try:
        from diffusers import DDPMScheduler
    except ImportError:
        raise DocreError("model.name=vaediff needs diffusers for its diffusion prior: pip install 'docre[vaediff]' "
                         "(or pip install diffusers)") from None
    return DDPMScheduler


def make_scheduler(steps: int):
    """diffusers' DDPM scheduler with the official settings (module docstring)."""
    return require_diffusers()(num_train_timesteps=steps, beta_schedule="squaredcos_cap_v2", prediction_type="sample",
                               variance_type="fixed_large", clip_sample=False)


class Augmenter(nn.Module):
    """The VAE, the denoiser being trained and its EMA copy (the one stage 3 samples from)."""

    def __init__(self, settings: AugmenterSettings):
        super().__init__()
        self.settings = settings
        self.vae = FeatureVAE(settings.hidden_size, settings.latent_size)
        self.denoiser = Denoiser(settings)
        self.ema = copy.deepcopy(self.denoiser).requires_grad_(False)  # the prior stage 3 samples from
        self.scheduler = make_scheduler(settings.diffusion_steps)
        alphas_cumprod = self.scheduler.alphas_cumprod.float()  # [T]
        self.register_buffer("alphas_cumprod", alphas_cumprod, persistent=False)

    @torch.no_grad()
    def update_ema(self, updates: int, beta: float = 0.995, start_after: int = 10, power: float = 2 / 3) -> None:
        """The official EMA (ema_pytorch 0.5.2 with beta 0.995, update_after_step 10, update_every 1): a copy of the
        denoiser for the first `start_after` updates, then decay min(beta, 1 - (1 + k)^-power) at its k-th
        update after them, so the average warms up instead of holding the first weights for thousands of steps."""
        if updates <= start_after:
            self.ema.load_state_dict(self.denoiser.state_dict())
            return
        decay = min(beta, max(0.0, 1 - (1 + updates - start_after - 1) ** -power))
        for average, current in zip(self.ema.parameters(), self.denoiser.parameters()):
            average.lerp_(current, 1 - decay)

    def noisy(self, z: Tensor, t: Tensor) -> Tensor:
        """q(z_t | z_0): sqrt(alphabar_t) z + sqrt(1 - alphabar_t) noise."""
        alphabar = self.alphas_cumprod[t][:, None]  # [N, 1]
        return alphabar.sqrt() * z + (1 - alphabar).sqrt() * torch.randn_like(z)

    def predict_x0(self, denoiser: nn.Module, z_t: Tensor, t: Tensor, labels: Tensor | None) -> Tensor:
        """The training-time prediction: with probability 0.5 a first no-grad pass gives the self-condition."""
        self_condition = None
        if torch.rand(()) < 0.5:
            with torch.no_grad():
                self_condition = denoiser(z_t, t, None, labels).detach()
        return denoiser(z_t, t, self_condition, labels)

    def cross_entropy_constant(self) -> float:
        """0.5 (1 + log(2 pi var_0)), var_0 = 1 - alphabar_0 = beta_0: the official `cross_entropy_const(t = 0)`
        (taken as beta_0: 1 - alphabar_0 in float32 keeps only 3 digits of a 4e-5)."""
        return 0.5 * (1 + math.log(2 * math.pi * float(self.scheduler.betas[0])))

    @torch.no_grad()
    def sample(self, labels: Tensor, guidance: float = 0.1) -> Tensor:
        """Synthetic pair features [N, H] (the decoder's mean) for multi-hot labels [N, C]: ancestral sampling
        from the EMA prior over all diffusion steps with classifier-free guidance and self-conditioning."""
        denoiser = self.ema
        was_training = denoiser.training
        denoiser.eval()
        self.scheduler.set_timesteps(self.settings.diffusion_steps)
        z = torch.randn(labels.size(0), self.settings.latent_size, device=labels.device)  # [N, z] x_T
        x0 = None
        for t in self.scheduler.timesteps:
            steps = torch.full((labels.size(0),), int(t), device=labels.device)
            conditional = denoiser(z, steps, x0, labels)
            unconditional = denoiser(z, steps, x0, None)
            x0 = (1 + guidance) * conditional - guidance * unconditional  # [N, z]
            z = self.scheduler.step(x0, int(t), z).prev_sample
        denoiser.train(was_training)
        return self.vae.decode(z)[0]  # [N, H]


# ---------------------------------------------------------------------------------------------- stage 2
AUGMENTER_WEIGHTS = "augmenter.safetensors"
AUGMENTER_SETTINGS = "augmenter.json"
AUGMENTER_FIT = "augmenter_fit.json"  # epochs, prior updates, seconds, pairs, documents of the finished fit


def document_batches(docs: Tensor, batch_docs: int, seed: int, epoch: int) -> list[Tensor]:
    """Row indices of each batch: the related pairs of `batch_docs` documents, the documents shuffled by (seed, epoch)
    (the official batches are the 8 documents of a training batch)."""
    generator = torch.Generator().manual_seed(seed * 1000 + epoch)
    unique = torch.unique(docs)  # [D]
    order = unique[torch.randperm(len(unique), generator=generator)]  # [D]
    batches = []
    for start in range(0, len(order), batch_docs):
        batches.append(torch.nonzero(torch.isin(docs, order[start : start + batch_docs])).squeeze(1))
    return batches


def stage2_losses(augmenter: Augmenter, x: Tensor, labels: Tensor, kl_weight: float) -> tuple[Tensor, Tensor]:
    """(L_vae, z detached) of the module docstring for the features x [B, H] and labels [B, C]."""
    mean, log_variance = augmenter.vae.encode(x)  # [B, z]
    z = mean + torch.exp(0.5 * log_variance) * torch.randn_like(mean)  # [B, z]
    log_q = gaussian_log_density(z, mean, log_variance)  # [B, z]
    reconstruction = -gaussian_log_density(x, *augmenter.vae.decode(z)).sum()
    t = torch.randint(0, augmenter.settings.diffusion_steps, (x.size(0),), device=x.device)  # [B] uniform
    mse = (augmenter.predict_x0(augmenter.denoiser, augmenter.noisy(z, t), t, labels) - z).pow(2).mean(1)  # [B]
    cross_entropy = mse[:, None] + augmenter.cross_entropy_constant()  # [B, z]: -log p(z) per dimension
    return (reconstruction + kl_weight * (log_q + cross_entropy).sum()) / x.size(0), z.detach()


def fit_augmenter(augmenter: Augmenter, features: Tensor, labels: Tensor, docs: Tensor, out_dir, cfg, seed: int,
                  stop: Callable[[], bool] = lambda: False) -> None:
    """Stage 2: train the VAE and the prior on the related pairs' features [N, H] (labels [N, C], document of each
    row [N]), `cfg` = the `vaediff` config section. A checkpoint after every epoch (out_dir/last/) resumes it to the
    same weights; the finished augmenter is out_dir/augmenter.safetensors (+ augmenter.json, augmenter_fit.json), and
    last/ is then removed. `stop()` is asked before every batch (a stop request, docre/vaediff.py): when true, the fit
    ends there without saving, its last checkpoint the resume point."""
    out_dir, device = Path(out_dir), features.device
    last = out_dir / "last"
    warmup, epochs = cfg.augmenter_warmup_epochs, cfg.augmenter_epochs
    # one AdamW, two groups (the official two optimizers: AdamW keeps its state per parameter, and a group
    # whose gradients are None is not stepped); the VAE's rate is cosine-annealed per epoch after the warm-up
    optimizer = torch.optim.AdamW([{"params": augmenter.vae.parameters(), "lr": cfg.vae_lr},
                                   {"params": augmenter.denoiser.parameters(), "lr": cfg.diffusion_lr}], eps=1e-8)
    span, floor = max(epochs - warmup - 1, 1), cfg.vae_min_lr / cfg.vae_lr

    def vae_rate(epoch: int) -> float:  # the scheduler counts the epochs after the warm-up
        return floor + (1 - floor) * (1 + math.cos(math.pi * min(epoch, span) / span)) / 2

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, [vae_rate, lambda epoch: 1.0])
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    counters = {"epoch": 0, "updates": 0, "seconds": 0.0}  # seconds: this stage's time over all its processes
    saved = checkpoint.find_training_state(last)
    if saved is not None:
        counters = checkpoint.load_training_state(saved, augmenter, optimizer, scheduler, scaler, device=device)
        logger.info("stage 2: resumed from %s after epoch %d", saved, counters["epoch"])
    vae_parameters, denoiser_parameters = list(augmenter.vae.parameters()), list(augmenter.denoiser.parameters())
    counters.setdefault("seconds", 0.0)  # a checkpoint written before the stage's time was counted
    for epoch in range(counters["epoch"], epochs):
        started = time.perf_counter()
        augmenter.train()
        kl_weight = cfg.kl_weight if epoch >= warmup else 1e-6
        totals = torch.zeros(2)
        batches = document_batches(docs, cfg.augmenter_batch_size, seed, epoch)
        for rows in batches:
            if stop():  # the epoch's updates so far are lost: the resumed run replays it from its start
                return
            x, y = features[rows], labels[rows]
            optimizer.zero_grad(set_to_none=True)  # the official trainer never zeroes the VAE's gradients
            vae_loss, z = stage2_losses(augmenter, x, y, kl_weight)
            vae_loss.backward()
            for parameter in denoiser_parameters:  # the prior's share of this loss is not a prior update
                parameter.grad = None
            torch.nn.utils.clip_grad_norm_(vae_parameters, 1.0)
            optimizer.step()
            totals[0] += float(vae_loss.detach())
            if epoch >= warmup:
                optimizer.zero_grad(set_to_none=True)
                condition = None if torch.rand(()) < cfg.uncond_prob else y  # the whole batch unconditional
                t = torch.randint(0, augmenter.settings.diffusion_steps, (z.size(0),), device=z.device)
                diffusion_loss = (augmenter.predict_x0(augmenter.denoiser, augmenter.noisy(z, t), t, condition) - z).pow(2).mean()
                diffusion_loss.backward()
                torch.nn.utils.clip_grad_norm_(denoiser_parameters, 1.0)
                optimizer.step()
                counters["updates"] += 1
                augmenter.update_ema(counters["updates"])
                totals[1] += float(diffusion_loss.detach())
        if epoch >= warmup:
            scheduler.step()
        counters["epoch"] = epoch + 1
        counters["seconds"] += time.perf_counter() - started
        logger.info("stage 2 epoch %d/%d: VAE loss %.4f, prior loss %.4f", epoch + 1, epochs,
                    totals[0] / len(batches), totals[1] / len(batches))
        # the GPU's generator too (randn_like, randint on the device): else a resumed fit on CUDA draws other noise
        checkpoint.save_training_state(last, augmenter, optimizer, scheduler, scaler, dict(counters),
                                       [checkpoint.rng_state(device)])
    # the weights last: their presence marks stage 2 finished (vaediff.py, run_dir.state_of), so the files beside
    # them are complete by then
    atomic_write_json(out_dir / AUGMENTER_SETTINGS, dataclasses.asdict(augmenter.settings))
    atomic_write_json(out_dir / AUGMENTER_FIT, {**counters, "pairs": len(features), "documents": len(torch.unique(docs))})
    checkpoint.save_weights(augmenter, out_dir / AUGMENTER_WEIGHTS)
    shutil.rmtree(last, ignore_errors=True)  # finished: the resume state (twice the augmenter) has done its job


def load_augmenter(folder, device: torch.device) -> Augmenter:
    """The finished stage-2 augmenter of `folder` (fit_augmenter's files)."""
    folder = Path(folder)
    if not (folder / AUGMENTER_WEIGHTS).is_file():
        raise DocreError(f"vaediff.augmenter: {folder} holds no {AUGMENTER_WEIGHTS} (stage 2 has not finished there)")
    augmenter = Augmenter(AugmenterSettings(**json.loads((folder / AUGMENTER_SETTINGS).read_text(encoding="utf-8"))))
    checkpoint.load_weights(augmenter, folder / AUGMENTER_WEIGHTS)
    return augmenter.to(device).eval()
