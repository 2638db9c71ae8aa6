"""VaeDiff-DocRE's settings at config load (docre.config): the `vaediff` section is range-checked for
model.name=vaediff and refused, unless left at its defaults, for every other model (nothing else reads it);
the vaediff loss's alpha is ATGL's and is refused beside PMTEM; a loss keyword value that the loss's own
constructor refuses fails in load_config, named as the override that set it, not when training builds the loss."""

import pytest

from docre.config import VaeDiffConfig, load_config, save_config
from docre.errors import DocreError
from docre.losses import build_loss
from docre.losses.vaediff import VaeDiffLoss
from tests.cli import ROOT

SMOKE = ROOT / "configs/smoke.yaml"
VAEDIFF = ["model.name=vaediff", "loss={name: vaediff}"]  # VaeDiff-DocRE with its own loss on the smoke config


def message(path, overrides=()) -> str:
    with pytest.raises(DocreError) as error:
        load_config(path, list(overrides))
    assert "\n" not in str(error.value)
    return str(error.value)


# ---------------------------------------------------------------------------------------------- loss.alpha
@pytest.mark.parametrize("loss", ["{name: vaediff, alpha: auto}", "{name: vaediff, alpha: 8.25}",
                                  "{name: vaediff, classification: pmtem, alpha: auto}"])
def test_an_alpha_beside_pmtem_is_refused_not_swept(loss):
    # PMTEM has no alpha: loss.alpha=auto used to train every value of the grid (all three stages) to bitwise
    # identical weights
    override = f"loss={loss}"
    assert message(SMOKE, [override]) == (
        f"override {override!r}: loss 'vaediff': alpha is ATGL's and applies only with classification: atgl; this "
        "loss classifies with 'pmtem', which has none (drop alpha, or set classification: atgl)")


def test_an_alpha_from_the_file_is_blamed_on_the_file(tmp_path):
    (tmp_path / "bad.yaml").write_text("loss:\n  name: vaediff\n  alpha: auto\n")
    assert message(tmp_path / "bad.yaml").startswith(f"{tmp_path / 'bad.yaml'}: loss 'vaediff': alpha is ATGL's")


def test_alpha_with_the_atgl_classification_is_accepted_fixed_or_tuned():
    for alpha in ("auto", 4.125):
        cfg = load_config(SMOKE, [f"loss={{name: vaediff, classification: atgl, alpha: {alpha}}}"])
        assert cfg.loss["alpha"] == alpha
    assert load_config(ROOT / "configs/redocred_mini/minilm_vaediff_atgl.yaml").loss["alpha"] == "auto"


def test_the_loss_itself_refuses_alpha_beside_pmtem_and_keeps_atgls_default():
    with pytest.raises(DocreError, match=r"^loss 'vaediff': alpha is ATGL's"):
        build_loss("vaediff", alpha=4.0)
    assert VaeDiffLoss(classification="atgl").atgl.alpha == 16.5
    assert VaeDiffLoss(classification="atgl", alpha=4.0).atgl.alpha == 4.0
    assert VaeDiffLoss().atgl is None  # PMTEM


def test_auto_on_another_keyword_says_which_alphas_are_tuned():
    assert message(SMOKE, ["loss={name: afl, gamma: auto}"]) == (
        "override 'loss={name: afl, gamma: auto}': loss.gamma=auto: only ATGL's alpha is tuned on dev "
        "(loss.alpha=auto with loss.name=atgl, or loss.name=vaediff with classification: atgl)")


# ---------------------------------------------------------------------------------------------- loss values
@pytest.mark.parametrize("override, expected", [
    ("loss={name: vaediff, classification: ATGL}", "loss 'vaediff': classification must be one of pmtem, atgl; got 'ATGL'"),
    ("loss={name: vaediff, pmtem_form: broadcast}", "loss 'vaediff': pmtem_form must be one of"),
    ("loss={name: afl, gamma: -1}", "loss 'afl': gamma must be >= 0, got -1"),
    ("loss={name: bce, threshold: 2}", "loss 'bce': threshold must be in [0, 1], got 2"),
    ("loss={name: atgl, alpha: 0}", "loss 'atgl': alpha must be positive, got 0"),
    ("loss={name: ssr_pu, e: 2.0, priors: [0.6]}", "loss 'ssr_pu': e * (prior + epsilon) = 1.2 >= 1"),
])
def test_a_value_the_loss_refuses_fails_at_load_as_the_override(override, expected):
    # these used to pass load_config and fail only when training built the loss, after the data had loaded
    assert message(SMOKE, ["seed=1", override]).startswith(f"override {override!r}: {expected}")


def test_keywords_taken_from_the_training_split_are_left_to_training():
    # AMTL's spaces by name and SSR-PU without priors are resolved from the training split, not at load
    assert load_config(ROOT / "configs/redocred/bert_amtl.yaml").loss["spaces"] == "redocred"
    assert load_config(SMOKE, ["loss={name: ssr_pu, e: 1.0}"]).loss == {"name": "ssr_pu", "e": 1.0}


# ---------------------------------------------------------------------------------------------- vaediff.*
@pytest.mark.parametrize("overrides, expected", [
    # tracebacks after stage 1 had trained
    (["vaediff.diffusion_steps=0"], "vaediff.diffusion_steps must be at least 1"),
    (["vaediff.augmenter_batch_size=0"], "vaediff.augmenter_batch_size must be at least 1"),
    (["vaediff.denoiser_width=2"], "vaediff.denoiser_width must be an even number of at least 4"),
    (["vaediff.denoiser_width=63"], "vaediff.denoiser_width must be an even number of at least 4"),
    # silently accepted
    (["vaediff.augmenter_epochs=2", "vaediff.augmenter_warmup_epochs=500"],
     "vaediff.augmenter_warmup_epochs=500 must be below vaediff.augmenter_epochs=2, else the diffusion prior never trains"),
    (["vaediff.augmenter_epochs=0"], "vaediff.augmenter_epochs must be at least 1"),
    (["train.epochs=2", "vaediff.augment_from_epoch=99"],
     "vaediff.augment_from_epoch=99 must be below train.epochs=2, else stage 3 never trains with synthetic pairs"),
    (["vaediff.augment_from_epoch=-1"], "vaediff.augment_from_epoch must be 0 or more"),
    (["vaediff.copies=0"], "vaediff.copies must be at least 1"),
    (["vaediff.latent_size=0"], "vaediff.latent_size must be at least 1"),
    (["vaediff.uncond_prob=2"], "vaediff.uncond_prob must lie in [0, 1)"),
    (["vaediff.uncond_prob=1"], "vaediff.uncond_prob must lie in [0, 1) (at 1 the label-conditioned prior never trains)"),
    (["vaediff.guidance=-1"], "vaediff.guidance must be 0 or more"),
    (["vaediff.uncond_prob=0"], "vaediff.guidance > 0 needs vaediff.uncond_prob > 0"),
    (["vaediff.denoiser_depth=0"], "vaediff.denoiser_depth must be at least 1"),
    (["vaediff.augmenter_warmup_epochs=-1"], "vaediff.augmenter_warmup_epochs must be 0 or more"),
    (["vaediff.kl_weight=-1"], "vaediff.kl_weight must be 0 or more"),
    (["vaediff.vae_lr=0"], "vaediff.vae_lr must be positive"),
    (["vaediff.diffusion_lr=0"], "vaediff.diffusion_lr must be positive"),
    (["vaediff.vae_min_lr=1"], "vaediff.vae_min_lr must lie in [0, vaediff.vae_lr]"),
])
def test_vaediff_settings_out_of_range_fail_at_load_as_the_override(overrides, expected):
    assert message(SMOKE, [*VAEDIFF, *overrides]).startswith(f"override {overrides[-1]!r}: {expected}")


def test_a_cross_check_names_whichever_of_its_keys_the_command_line_set(tmp_path):
    # minilm_vaediff_pemscl.yaml augments from epoch 1: one epoch would never augment, and the override is to blame
    path = ROOT / "configs/redocred_mini/minilm_vaediff_pemscl.yaml"
    assert message(path, ["train.epochs=1"]).startswith("override 'train.epochs=1': vaediff.augment_from_epoch=1 must be below")
    (tmp_path / "bad.yaml").write_text("model:\n  name: vaediff\nloss:\n  name: vaediff\nvaediff:\n  copies: 0\n")
    assert message(tmp_path / "bad.yaml") == f"{tmp_path / 'bad.yaml'}: vaediff.copies must be at least 1"


def test_limits_that_still_run_are_accepted():
    cfg = load_config(SMOKE, [*VAEDIFF, "train.epochs=2", "vaediff.augment_from_epoch=1", "vaediff.augmenter_epochs=2",
                              "vaediff.augmenter_warmup_epochs=1", "vaediff.denoiser_width=4", "vaediff.diffusion_steps=1",
                              "vaediff.guidance=0", "vaediff.uncond_prob=0", "vaediff.vae_min_lr=0"])
    assert cfg.vaediff.guidance == 0 and cfg.vaediff.augment_from_epoch == 1
    # with train.max_steps the epochs are known only once the data is: augment_from_epoch is not compared then
    assert load_config(SMOKE, [*VAEDIFF, "train.max_steps=5", "vaediff.augment_from_epoch=50"]).train.max_steps == 5


@pytest.mark.parametrize("model", ["atlop", "kd_docre", "ttm_re"])
@pytest.mark.parametrize("override, shown", [("vaediff.copies=5", "vaediff.copies=5"),
                                             ("vaediff.guidance=0.5", "vaediff.guidance=0.5"),
                                             ("vaediff.stage3_from_stage1=true", "vaediff.stage3_from_stage1=True"),
                                             ("vaediff.augmenter=runs/x/stage2", "vaediff.augmenter='runs/x/stage2'")])
def test_vaediff_settings_on_another_model_are_refused(model, override, shown):
    # only model.name=vaediff runs stages 2 and 3, the only code that reads the section
    assert message(SMOKE, [f"model.name={model}", override]) == (
        f"override {override!r}: {shown} is read only with model.name=vaediff (its stages 2 and 3); "
        f"model.name={model} never reads it")


def test_the_vaediff_loss_on_atlop_reads_no_vaediff_setting(tmp_path):
    # the "vaediff loss on ATLOP" row of atgl_table3_redocred_mini: its loss keywords apply, the vaediff section does not
    path = ROOT / "configs/redocred_mini/minilm_atl.yaml"
    assert load_config(path, ["loss.name=vaediff", "loss.lambda3=0.5"]).loss == {"name": "vaediff", "lambda3": 0.5}
    assert "model.name=atlop never reads it" in message(path, ["loss.name=vaediff", "vaediff.guidance=0.5"])
    (tmp_path / "bad.yaml").write_text("vaediff:\n  copies: 4\n")  # from a file: blamed on the file
    assert message(tmp_path / "bad.yaml").startswith(f"{tmp_path / 'bad.yaml'}: vaediff.copies=4 is read only with")


@pytest.mark.parametrize("model", ["atlop", "dreeam", "docunet", "kd_docre", "ttm_re"])
def test_a_saved_config_of_another_model_loads_again(model, tmp_path):
    # a run's config.yaml holds the whole vaediff section, at its defaults
    save_config(load_config(SMOKE, [f"model.name={model}"]), tmp_path / "config.yaml")
    assert "vaediff:" in (tmp_path / "config.yaml").read_text()
    assert load_config(tmp_path / "config.yaml").vaediff == VaeDiffConfig()


@pytest.mark.parametrize("model, override, shown, owner", [
    ("atlop", "model.ttm_layout=per_pair", "model.ttm_layout='per_pair'", "ttm_re"),
    ("dreeam", "model.ttm_layout=per_pair", "model.ttm_layout='per_pair'", "ttm_re"),
    ("atlop", "model.evidence_weight=0.05", "model.evidence_weight=0.05", "dreeam"),
    ("ttm_re", "model.evidence_threshold=0.3", "model.evidence_threshold=0.3", "dreeam"),
])
def test_a_model_setting_on_another_model_is_refused(model, override, shown, owner):
    # TTM-RE's layout and DREEAM's evidence settings were silently ignored on the other models
    assert message(SMOKE, [f"model.name={model}", override]) == (
        f"override {override!r}: {shown} is read only with model.name={owner}; model.name={model} never reads it")
    assert load_config(SMOKE, [f"model.name={owner}", override]).model.name == owner
    # a DREEAM config tried with another model still loads: its evidence settings are the defaults
    path = ROOT / "configs/redocred_mini/minilm_dreeam_atl.yaml"
    assert load_config(path, [f"model.name={model}"]).model.name == model
