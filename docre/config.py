"""Typed run configuration: one dataclass schema, YAML files, dotted `key=value` overrides.

Merge order: dataclass defaults < YAML file < command line. The defaults are the published
ATLOP settings (DocRED, BERT-base), so a YAML file states only what differs. `load_config` fails
within a second on a misspelled key, a value of the wrong type, an unknown choice, an unknown
dataset, model or loss name, a loss keyword that the loss does not take or a value its constructor
refuses, a number out of range, or a setting the chosen model never reads, before any model is loaded.

This is the only module that imports OmegaConf; everything else receives plain dataclasses.
"""

import dataclasses
import difflib
import functools
import inspect
import io
import re
import tokenize
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from docre.errors import DocreError, did_you_mean

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class DataConfig:
    dataset: str = "docred"  # reader in docre.data.READERS: docred | cdr | gda
    dir: str = "data/docred"  # folder of the split files below (absolute file paths ignore it)
    train_file: str = "train_annotated.json"  # file name; "name[a:b]" takes documents a..b-1
    dev_file: str = "dev.json"  # "" = no dev split
    test_file: str = "test.json"  # "" = no test split
    ign_train_file: str = ""  # training facts for Ign F1; "" = train_file
    rel2id: str = "data/docred/rel2id.json"  # relation map {"Na": 0, ...}; "" = from the training file
    rel_info: str = "data/docred/rel_info.json"  # relation id -> name, for reports; "" = none
    cache_dir: str = ""  # feature cache; "" = $DOCRE_CACHE or ~/.cache/docre, "none" = no cache


@dataclass
class ModelConfig:
    name: str = "atlop"  # model in docre.models.MODELS: atlop, dreeam, docunet, kd_docre, ttm_re, vaediff
    backbone: str = "bert-base-cased"  # Hugging Face id, local folder, or the alias "minilm"
    revision: str = ""  # hub revision (branch, tag or commit) to pin; "" = default branch
    trust_remote_code: bool = False  # allow code from the backbone's hub repository
    # entity marker inserted before and after every mention; "typed" = DocuNet's markers by entity type,
    # [unused1..11] before and [unused51..61] after (BERT-style vocabularies, DocRED's six types)
    marker: str = "*"
    max_seq_length: int = 1024  # cap on word-pieces per document incl. special tokens; 0 = none
    window: int = 0  # encoder window in tokens; 0 = the encoder's position limit
    layer_pooling: str = "mean_last_3"  # last (ATLOP) | mean_last_3 (ATGL code)
    emb_size: int = 768  # width of the head/tail extractors
    block_size: int = 64  # block width of the group bilinear
    gradient_checkpointing: bool = False  # recompute encoder activations in backward (saves memory)
    pair_chunk_size: int = 0  # pairs per group-bilinear chunk (bounds its memory); 0 = about 64 MB of features
    # models that predict evidence (DREEAM): weight of the evidence KL added to the relation loss (DREEAM's
    # lambda; its maintainer suggests 0.05 in some settings, YoumiMa/dreeam issues #8 and #11), and the
    # share of a pair's attention above which a sentence is predicted as evidence
    evidence_weight: float = 0.1  # weight of the evidence KL (DREEAM's lambda; evidence-predicting models only)
    evidence_threshold: float = 0.2  # attention share above which a sentence is predicted as evidence
    ttm_layout: str = "official"  # TTM-RE only: official (memory transformer attends across a batch's pairs) | per_pair


@dataclass
class TrainConfig:
    epochs: int = 30  # passes over the training split (see max_steps)
    max_steps: int = 0  # stop after this many optimizer steps; 0 = run all epochs
    batch_size: int = 4  # documents per micro-step and process
    grad_accum: int = 1  # micro-steps per optimizer step
    # split a batch whose documents x padded length exceeds this (same gradient, less memory); 0 = never
    max_batch_tokens: int = 0
    encoder_lr: float = 5e-5  # learning rate of the encoder (backbone)
    head_lr: float = 1e-4  # extractors and bilinear classifier
    # learning rates of named modules, overriding the two above: {parameter-name prefix: lr}, the
    # longest matching prefix wins, e.g. {unet: 4.0e-4} (DocuNet's own rate for its U-Net)
    module_lr: dict[str, float] = field(default_factory=dict)
    warmup_ratio: float = 0.06  # share of optimizer steps with linear warm-up, then linear decay
    max_grad_norm: float = 1.0  # gradient clipping; 0 = off
    adam_eps: float = 1e-6  # AdamW's epsilon
    weight_decay: float = 0.0  # AdamW's decoupled weight decay
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    tf32: bool = True  # on CUDA, float32 matrix products in TF32 (Ampere and newer; about 8x faster, 10-bit mantissa)
    num_threads: int = 0  # torch CPU threads; 0 = torch's default
    length_bucketing: bool = True  # batch documents of similar length (less padding)
    eval_every: int = 0  # optimizer steps between dev evaluations; 0 = after every epoch
    log_every: int = 10  # optimizer steps between rows in metrics.jsonl
    save_every: int = 0  # optimizer steps between resume checkpoints (last/); 0 = after every epoch
    max_nonfinite_steps: int = 10  # consecutive skipped non-finite steps before the run stops
    resume: str = ""  # run directory to continue from its last/ checkpoint
    init_from: str = ""  # start from the weights of a run directory, an exported model folder or its Hub id (ORG/NAME), by name
    overwrite: bool = False  # replace an existing run directory of the same name


@dataclass
class EvalConfig:
    top_k: int = 4  # most relations predicted per entity pair (ATLOP's num_labels)
    batch_size: int = 8  # documents per evaluation batch
    # at most this many encoder tokens per evaluation batch (bounds memory); 0 = no cap; -1 = 4096 on CPU, no cap on a GPU
    # (and none for TTM-RE's official layout, whose pairs attend across the batch: the same predictions on every device)
    max_batch_tokens: int = -1
    tune_threshold_offset: bool = False  # add a dev-tuned offset to the TH logit when decoding (threshold-class losses)
    save_logits: bool = True  # keep dev/test logits (fp16 safetensors) for threshold diagnostics


@dataclass
class SweepConfig:
    # loss.alpha=auto (ATGL): alpha values tried, as multiples of alpha_base; the best dev F1 wins
    alpha_grid: list[float] = field(default_factory=lambda: [0.25, 0.5, 1.0, 2.0])
    alpha_base: float = 0.0  # 0 = the dataset's paper alpha (docre.sweep.PAPER_ALPHA); 1 = the grid holds the values


@dataclass
class LogConfig:
    # metrics.jsonl is always written; these send the same rows (and the config, and the final scores) to a tracker
    wandb: bool = False  # Weights & Biases (pip install wandb); honours WANDB_MODE=offline and WANDB_DIR (else RUN_DIR/wandb)
    wandb_project: str = "docre"  # the Weights & Biases project of the run
    tensorboard: bool = False  # TensorBoard event files in RUN_DIR/tensorboard (pip install tensorboard)


@dataclass
class VaeDiffConfig:
    # model.name=vaediff only (VaeDiff-DocRE, docre/vaediff.py): stage 2 fits the augmenter on the stage-1
    # model's features of related training pairs; stage 3 trains again with its synthetic features. With any
    # other model (the vaediff loss on ATLOP included) nothing reads this section, so load_config refuses a
    # value other than the default there. Defaults: the official Re-DocRED scripts (Stage_2/scripts/train.sh,
    # Stage_3/scripts/train.sh)
    latent_size: int = 384  # the VAE's latent width
    denoiser_width: int = 256  # the diffusion prior's width (tx_dim); 6 layers, width / 64 heads
    denoiser_depth: int = 6  # the diffusion prior's layers
    diffusion_steps: int = 50  # steps of the diffusion schedule and of the sampler
    augmenter_epochs: int = 100  # stage 2
    augmenter_batch_size: int = 8  # stage 2: documents whose related pairs make one batch
    augmenter_warmup_epochs: int = 10  # stage 2: VAE alone with KL weight 1e-6, then the prior trains too
    vae_lr: float = 2.0e-4  # the VAE's rate, cosine-annealed to vae_min_lr over the epochs after the warm-up
    vae_min_lr: float = 2.0e-5  # the VAE's rate at the end of stage 2
    diffusion_lr: float = 5.0e-5  # the diffusion prior's rate (constant)
    kl_weight: float = 1.0e-3  # the VAE's KL / prior cross-entropy weight after the warm-up
    uncond_prob: float = 0.2  # classifier-free training: a batch's labels are dropped with this probability
    guidance: float = 0.1  # stage 3: w of (1 + w) cond - w uncond
    copies: int = 2  # stage 3: synthetic pairs per related pair of a batch
    augment_from_epoch: int = 5  # stage 3: the epochs before train with the classification loss alone
    stage3_from_stage1: bool = False  # stage 3 starts from the stage-1 weights (official: from the pre-trained encoder)
    augmenter: str = ""  # set by the pipeline for stage 3: the stage-2 augmenter's folder


@dataclass
class Config:
    seed: int = 66  # seeds Python, NumPy and torch (data order, initialisation, dropout)
    output_dir: str = "runs"  # runs are written to <output_dir>/<run_name>/
    # "" = <config file name>[-<model named on the command line>][-<loss named on the command line>]-s<seed>,
    # e.g. minilm_atgl-s66, smoke-ttm_re-atl-s66
    run_name: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    # the loss: its name in docre.losses.LOSSES plus its keyword arguments, e.g. {name: atgl, alpha: 16.5}
    loss: dict[str, Any] = field(default_factory=lambda: {"name": "atl"})
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    log: LogConfig = field(default_factory=LogConfig)
    vaediff: VaeDiffConfig = field(default_factory=VaeDiffConfig)


CHOICES = {
    "model.layer_pooling": ("last", "mean_last_3"),
    "model.ttm_layout": ("official", "per_pair"),
    "train.precision": ("auto", "fp32", "bf16", "fp16"),
}


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Build a checked `Config` from defaults, an optional YAML file and `key=value` overrides.

    Raises:
        DocreError: one line naming the file or override and the offending key.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    schema = OmegaConf.structured(Config)
    layers = [schema]
    source = "defaults"
    if path is not None:
        source = str(path)
        if not Path(path).is_file():
            raise DocreError(f"{path}: config file not found")
        try:
            layers.append(_check_sections(OmegaConf.load(path), path))
        except DocreError:
            raise
        except Exception as error:  # yaml.YAMLError and friends: one line, with the place
            mark = getattr(error, "problem_mark", None)
            where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
            raise DocreError(f"{path}: not valid YAML{where}: {_yaml_problem(error)}") from None
    given = list(overrides)  # as typed, for messages
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise DocreError(f"override {item!r}: expected key=value")
    # "key=" means the empty string (e.g. data.test_file= for no test split), not null
    overrides = [item + "''" if item.endswith("=") else item for item in overrides]
    for item in overrides:
        try:
            OmegaConf.from_dotlist([item])
        except Exception as error:  # a value that is not valid YAML, e.g. train.epochs=[1
            raise DocreError(f"override {item!r}: not a valid value ({_yaml_problem(error)})") from None
    try:
        command_line = OmegaConf.from_dotlist(overrides)
    except (OmegaConfBaseException, ValueError) as error:  # ValueError: a list index that is no number (key.x=...)
        raise DocreError(f"overrides: {_first_line(error)}") from None
    # A loss named on the command line does not inherit the file's loss keywords (loss.name=atl on
    # an ATGL config must not pass alpha to ATL); keywords given next to it still apply.
    new_loss = OmegaConf.select(command_line, "loss.name")
    file_loss = OmegaConf.select(layers[-1], "loss.name") or OmegaConf.select(schema, "loss.name")  # file, else default
    new_model = OmegaConf.select(command_line, "model.name")
    file_model = OmegaConf.select(layers[-1], "model.name") or OmegaConf.select(schema, "model.name")
    if new_loss is not None and len(layers) > 1 and OmegaConf.select(layers[1], "loss.name") != new_loss:
        layers[1].pop("loss", None)
    # the file first, then the command line: a bad key or value is reported where it was given
    try:
        merged = OmegaConf.merge(*layers)
    except OmegaConfBaseException as error:
        raise DocreError(f"{source}: {_describe(error)}") from None
    try:
        merged = OmegaConf.merge(merged, command_line)
    except OmegaConfBaseException as error:
        raise DocreError(f"{_origin(getattr(error, 'full_key', None) or '', 'overrides', given)}: {_describe(error)}") from None
    try:
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:  # e.g. an unresolvable ${...}: blamed on the override that set the key, if any
        raise DocreError(f"{_origin(getattr(error, 'full_key', None) or '', source, given)}: {_describe(error)}") from None
    if not cfg.run_name:
        # One convention for every run name: the config file's name as written (words joined by "_"),
        # "-s<seed>" at the end, and before it "-<model>" then "-<loss>" only when the command line swapped
        # the model or the loss, so that such a run never lands in the directory of the file's own model or
        # loss. Grids (scripts/reproduce.py, compare_losses, sweeps, VaeDiff's stages) set run_name themselves.
        stem = Path(path).stem if path is not None else "run"
        swapped = "".join(f"-{new}" for new, old in ((new_model, file_model), (new_loss, file_loss))
                          if new is not None and new != old)
        cfg.run_name = f"{stem}{swapped}-s{cfg.seed}"
    check_config(cfg, source, given)
    return cfg


def _origin(key: str, source: str, overrides: list[str]) -> str:
    """Where `key` got its value: the command-line override that sets it (or a key inside or around
    it; the last one wins), else `source` (the config file)."""
    for item in reversed(overrides):
        name = item.split("=", 1)[0]
        if name == key or name.startswith(key + ".") or key.startswith(name + "."):
            return f"override {item!r}"
    return source


def _check_sections(loaded, path):
    """The file's top level must be a mapping whose sections are mappings; an empty section
    (a header whose entries are all commented out) counts as absent."""
    from omegaconf import DictConfig, OmegaConf

    names = [f.name for f in dataclasses.fields(Config)]
    if not isinstance(loaded, DictConfig):
        raise DocreError(f"{path}: top level must be a mapping of sections ({', '.join(names)}), got a list")
    values = OmegaConf.to_container(loaded)
    for name, value in values.items():
        if value is None and name in names:
            loaded.pop(name)
        elif name in ("data", "model", "loss", "train", "eval", "sweep", "log") and not isinstance(value, dict):
            raise DocreError(f"{path}: {name}: must be a section of key: value lines, got {value!r}")
    return loaded


# (key, lowest allowed value, what to say): numbers the schema's types cannot restrict
MINIMUMS = [
    ("train.batch_size", 1, "at least 1"), ("train.grad_accum", 1, "at least 1"), ("eval.batch_size", 1, "at least 1"),
    ("eval.top_k", 1, "at least 1"), ("train.log_every", 1, "at least 1"), ("train.max_nonfinite_steps", 1, "at least 1"),
    ("train.max_steps", 0, "0 or more"), ("train.eval_every", 0, "0 or more"), ("train.save_every", 0, "0 or more"),
    ("train.num_threads", 0, "0 or more"), ("model.max_seq_length", 0, "0 or more"), ("model.window", 0, "0 or more"),
    ("model.pair_chunk_size", 0, "0 or more"), ("model.emb_size", 1, "at least 1"), ("model.block_size", 1, "at least 1"),
    ("train.max_grad_norm", 0, "0 or more"), ("train.weight_decay", 0, "0 or more"),
    ("model.evidence_weight", 0, "0 or more"),
    ("eval.max_batch_tokens", -1, "-1 (4096 on CPU, no cap on a GPU), 0 (no cap) or more"),
    # model.name=vaediff's (another model keeps the defaults, which lie in range): a 0 fails only after
    # stage 1 has trained (diffusion_steps, augmenter_batch_size) or silently skips a stage's work
    ("vaediff.latent_size", 1, "at least 1"), ("vaediff.denoiser_depth", 1, "at least 1"),
    ("vaediff.diffusion_steps", 1, "at least 1"), ("vaediff.augmenter_epochs", 1, "at least 1"),
    ("vaediff.augmenter_batch_size", 1, "at least 1"), ("vaediff.augmenter_warmup_epochs", 0, "0 or more"),
    ("vaediff.kl_weight", 0, "0 or more"), ("vaediff.copies", 1, "at least 1"),
    ("vaediff.augment_from_epoch", 0, "0 or more"),
    # (1 + w) cond - w uncond: 0 = the conditional prior alone; below 0 the samples drift towards the
    # unconditional prior, away from the labels stage 3 gives them (at -1 they ignore them)
    ("vaediff.guidance", 0, "0 or more (0 = the label-conditioned prior alone)"),
]


# settings of ModelConfig that one model alone reads (the vaediff section is VaeDiff-DocRE's as a whole)
MODEL_ONLY = {"model.evidence_weight": "dreeam", "model.evidence_threshold": "dreeam", "model.ttm_layout": "ttm_re"}


def check_config(cfg: Config, source: str = "config", overrides: list[str] = ()) -> None:
    """Checks OmegaConf cannot do: enumerated choices, registry names, loss keywords and values, ranges, and
    settings the chosen model never reads. An error names the override of `overrides` that set the value, else
    `source`."""
    def where(key: str) -> str:
        return _origin(key, source, list(overrides))

    for key, allowed in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in allowed:
            raise DocreError(f"{where(key)}: {key}={value!r} is not one of {', '.join(allowed)}")
    from docre.data import READERS

    if cfg.data.dataset not in READERS:
        raise DocreError(f"{where('data.dataset')}: data.dataset={cfg.data.dataset!r} is not one of {', '.join(READERS)}"
                         f"{did_you_mean(cfg.data.dataset, READERS)}")
    if not cfg.data.train_file.strip():  # else the path is data.dir itself, and the error "DIR: file not found"
        raise DocreError(f"{where('data.train_file')}: data.train_file is empty: name the training file (a file in "
                         "data.dir, or a path); training and evaluation read it")
    from docre.models import MODELS

    if cfg.model.name not in MODELS:
        raise DocreError(f"{where('model.name')}: model.name={cfg.model.name!r} is not one of {', '.join(MODELS)}"
                         f"{did_you_mean(cfg.model.name, MODELS)}")
    loss_kwargs = dict(cfg.loss)
    name = loss_kwargs.pop("name", None)
    check_loss_kwargs(name, loss_kwargs, source, overrides)
    from docre.losses import LOSSES

    if cfg.eval.tune_threshold_offset and "th_offset" not in inspect.signature(LOSSES[name]).parameters:
        raise DocreError(f"{where('eval.tune_threshold_offset')}: eval.tune_threshold_offset needs a loss that decodes "
                         f"with the TH class; {name!r} does not")
    for key, lowest, allowed in MINIMUMS:
        section, field_name = key.split(".")
        if getattr(getattr(cfg, section), field_name) < lowest:
            raise DocreError(f"{where(key)}: {key} must be {allowed}")
    if cfg.train.max_steps == 0 and cfg.train.epochs < 1:
        raise DocreError(f"{where('train.epochs')}: train.epochs must be at least 1 (or set train.max_steps)")
    if not 0 <= cfg.train.warmup_ratio <= 1:
        raise DocreError(f"{where('train.warmup_ratio')}: train.warmup_ratio must lie in [0, 1]")
    if not 0 < cfg.model.evidence_threshold < 1:
        raise DocreError(f"{where('model.evidence_threshold')}: model.evidence_threshold must lie in (0, 1)")
    from docre.data.feature import TYPED

    marker = cfg.model.marker.lower()
    if cfg.model.marker != TYPED and (TYPED in marker or difflib.get_close_matches(marker, [TYPED], cutoff=0.75)):
        # any other string is a literal marker, so a misspelt "typed" would silently mark every mention with it
        raise DocreError(f"{where('model.marker')}: model.marker={cfg.model.marker!r} is too close to {TYPED!r} to be taken "
                         f"as a literal marker (did you mean {TYPED}?)")
    if cfg.model.emb_size % cfg.model.block_size:
        raise DocreError(f"{where('model.emb_size')}: model.emb_size must be a multiple of model.block_size")
    from docre.models.ttm_re import MEMORY_HEADS

    if cfg.model.name == "ttm_re" and cfg.model.emb_size % MEMORY_HEADS:  # else only when the model is built
        raise DocreError(f"{where('model.emb_size')}: model.emb_size={cfg.model.emb_size} must be divisible by TTM-RE's "
                         f"{MEMORY_HEADS} memory heads")
    if not cfg.sweep.alpha_grid or min(cfg.sweep.alpha_grid) <= 0 or cfg.sweep.alpha_base < 0:
        raise DocreError(f"{where('sweep')}: sweep.alpha_grid must hold positive numbers and sweep.alpha_base be >= 0")
    if cfg.model.name == "vaediff":
        check_vaediff(cfg, where)
    # A setting only one model reads, set on another, would be ignored without a word. Caution: a saved run's
    # config.yaml holds every key at its default of the day, so changing one of these defaults would make older
    # runs of the other models fail here (the defaults are the official values).
    only = {key: model for key, model in MODEL_ONLY.items() if model != cfg.model.name}
    if cfg.model.name != "vaediff":  # only VaeDiff-DocRE's stages read the vaediff section (the vaediff loss does not)
        only |= {f"vaediff.{f.name}": "vaediff" for f in dataclasses.fields(VaeDiffConfig)}
    defaults = Config()
    for key, model in only.items():
        value = functools.reduce(getattr, key.split("."), cfg)
        if value != functools.reduce(getattr, key.split("."), defaults):
            raise DocreError(f"{where(key)}: {key}={value!r} is read only with model.name={model}"
                             f"{' (its stages 2 and 3)' if model == 'vaediff' else ''}; model.name={cfg.model.name} "
                             "never reads it")


def check_vaediff(cfg: Config, where: typing.Callable[[str], str]) -> None:
    """What the schema's types cannot say about the `vaediff` section of a model.name=vaediff config: its
    ranges beyond MINIMUMS and how its numbers relate. `where(key)` names the file or override that set a key."""
    vd = cfg.vaediff

    def where_any(*keys: str) -> str:  # a check of several keys: the override that set one, else the first's place
        places = [where(key) for key in keys]
        return next((place for place in places if place.startswith("override ")), places[0])

    if vd.denoiser_width < 4 or vd.denoiser_width % 2:  # half sines, half cosines, over (width / 2 - 1) frequencies
        raise DocreError(f"{where('vaediff.denoiser_width')}: vaediff.denoiser_width must be an even number of at "
                         "least 4 (its sinusoidal time embedding)")
    if vd.augmenter_warmup_epochs >= vd.augmenter_epochs:  # the prior trains only after the warm-up
        raise DocreError(f"{where_any('vaediff.augmenter_warmup_epochs', 'vaediff.augmenter_epochs')}: "
                         f"vaediff.augmenter_warmup_epochs={vd.augmenter_warmup_epochs} must be below "
                         f"vaediff.augmenter_epochs={vd.augmenter_epochs}, else the diffusion prior never trains")
    for key in ("vae_lr", "diffusion_lr"):
        if not getattr(vd, key) > 0:
            raise DocreError(f"{where(f'vaediff.{key}')}: vaediff.{key} must be positive")
    if not 0 <= vd.vae_min_lr <= vd.vae_lr:  # the VAE's rate is annealed from vae_lr down to vae_min_lr
        raise DocreError(f"{where_any('vaediff.vae_min_lr', 'vaediff.vae_lr')}: vaediff.vae_min_lr must lie in "
                         "[0, vaediff.vae_lr]")
    if not 0 <= vd.uncond_prob < 1:  # at 1 the label embeddings the samples are conditioned on never train
        raise DocreError(f"{where('vaediff.uncond_prob')}: vaediff.uncond_prob must lie in [0, 1) (at 1 the "
                         "label-conditioned prior never trains)")
    if vd.guidance > 0 and vd.uncond_prob == 0:
        raise DocreError(f"{where_any('vaediff.guidance', 'vaediff.uncond_prob')}: vaediff.guidance > 0 needs "
                         "vaediff.uncond_prob > 0: the unconditional prior that guidance subtracts trains only on "
                         "batches whose labels are dropped")
    if cfg.train.max_steps == 0 and vd.augment_from_epoch >= cfg.train.epochs:  # epochs count from 0
        raise DocreError(f"{where_any('vaediff.augment_from_epoch', 'train.epochs')}: vaediff.augment_from_epoch="
                         f"{vd.augment_from_epoch} must be below train.epochs={cfg.train.epochs}, else stage 3 never "
                         "trains with synthetic pairs")


def check_loss_kwargs(name: Any, kwargs: dict, source: str = "config", overrides: list[str] = ()) -> None:
    """Check that `name` is a registered loss, that `kwargs` are its keywords (its constructor's
    parameters), required ones included, and that its constructor takes their values; a misspelt name or
    keyword gets "did you mean"."""
    from docre.losses import FROM_TRAINING, LOSSES, loss_keywords

    if name not in LOSSES:
        raise DocreError(f"{_origin('loss.name', source, list(overrides))}: loss.name={name!r} is not one of "
                         f"{', '.join(LOSSES)}{did_you_mean(name, LOSSES)}")
    keywords = loss_keywords(name)
    for key, value in kwargs.items():  # "auto" means a dev-tuned sweep (docre.sweep), only for ATGL's alpha
        if value == "auto" and (name, key) not in (("atgl", "alpha"), ("vaediff", "alpha")):
            raise DocreError(f"{_origin(f'loss.{key}', source, list(overrides))}: loss.{key}=auto: only ATGL's alpha is "
                             "tuned on dev (loss.alpha=auto with loss.name=atgl, or loss.name=vaediff with classification: "
                             "atgl)")
    for key in kwargs:
        if key not in keywords:
            raise DocreError(f"{_origin(f'loss.{key}', source, list(overrides))}: loss {name!r}: got an unexpected keyword "
                             f"argument {key!r}{did_you_mean(key, keywords)}; its keywords: {', '.join(keywords) or 'none'}")
    missing = [key for key, default in keywords.items() if default is inspect.Parameter.empty and key not in kwargs]
    if missing:
        raise DocreError(f"{source}: loss {name!r} needs loss.{missing[0]}")
    # Build the loss once (cheap: no data, no model), so that a value its constructor refuses (afl's gamma=-1,
    # vaediff's classification: ATGL, or its alpha without classification: atgl) fails here, named as the override
    # or file that set it, not when training builds it. "auto" stands for one alpha of the sweep; a keyword the
    # trainer takes from the training split (FROM_TRAINING) is checked only where the config gives it as a list.
    from_training = FROM_TRAINING.get(name, ("",))[0]
    probe = {key: 1.0 if value == "auto" else value for key, value in kwargs.items()
             if key != from_training or isinstance(value, list)}
    try:
        LOSSES[name](**probe)
    except (TypeError, ValueError, DocreError) as error:
        message = str(error) if isinstance(error, DocreError) else f"loss {name!r}: {_first_line(error)}"
        raise DocreError(f"{_origin('loss', source, list(overrides))}: {message}") from None


def config_keys() -> list[tuple[str, Any, str]]:
    """Every config key as (dotted name, default, description), the description read from the comment
    beside or above its field in this file, so that the schema stays the one place a key is explained."""
    keys = []

    def walk(section: type, prefix: str) -> None:
        described, defaults = documented_names(inspect.getsource(section)), section()
        for f in dataclasses.fields(section):
            value = getattr(defaults, f.name)
            if dataclasses.is_dataclass(value):
                walk(type(value), f"{prefix}{f.name}.")
            elif isinstance(value, dict) and value:  # an open mapping with defaults (loss): its keys, as overridden
                keys.extend((f"{prefix}{f.name}.{key}", item, described.get(f.name, "")) for key, item in value.items())
            else:
                keys.append((prefix + f.name, value, described.get(f.name, "")))

    walk(Config, "")
    return keys


def documented_names(source: str) -> dict[str, str]:
    """Name -> its comment in Python `source`, for lines that start with a name and a colon (a dataclass
    field `name: type = ...`, a table entry `"name": ...`): the comment at the end of the line, else the
    comment lines right above it, joined into one line."""
    comments = {token.start[0]: token.string.lstrip("#").strip()
                for token in tokenize.generate_tokens(io.StringIO(source).readline) if token.type == tokenize.COMMENT}
    names, block = {}, []
    for number, line in enumerate(source.splitlines(), 1):
        if line.lstrip().startswith("#"):
            block.append(comments[number])
            continue
        match = re.match(r'\s*"?(\w+)"?\s*:', line)
        if match and (number in comments or block):
            names[match.group(1)] = comments.get(number) or " ".join(block)
        block = []
    return names


def to_dict(cfg: Config) -> dict:
    """The config as plain nested dicts (for config.yaml, run records and loggers)."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: Path) -> None:
    """Write the resolved config as YAML, atomically."""
    from omegaconf import OmegaConf

    from docre.utils import atomic_write_text

    atomic_write_text(path, OmegaConf.to_yaml(OmegaConf.create(to_dict(cfg))))


def resolve_path(path: str, base: str = "") -> Path:
    """Resolve a data path: absolute, else under `base`; relative paths that do not exist from the
    working directory are looked up from the project root, so commands work from any folder."""
    candidate = Path(base) / path if base and not Path(path).is_absolute() else Path(path)
    candidate = candidate.expanduser()
    if candidate.is_absolute() or candidate.exists():
        return candidate
    from_root = PROJECT_ROOT / candidate
    return from_root if from_root.exists() else candidate


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0]


def _yaml_problem(error: Exception) -> str:
    """A YAML parser error's problem ("did not find expected ',' or ']'"), else its first line."""
    return getattr(error, "problem", None) or _first_line(error)


def _describe(error: Exception) -> str:
    """Turn an OmegaConf error into one line: the full key, what went wrong, and a suggestion."""
    from omegaconf.errors import ConfigKeyError, ValidationError

    key = getattr(error, "full_key", None) or "?"
    if isinstance(error, ConfigKeyError):
        hints = _key_hints(key)
        return f"unknown key {key!r}" + (f" (did you mean {' or '.join(hints)}?)" if hints else "")
    if isinstance(error, ValidationError):
        return f"{key}: {_first_line(error)}"
    return _first_line(error)


# Names other trainers give to settings that no spelling rule leads to ours
SYNONYMS = {"lr": ["train.encoder_lr", "train.head_lr"], "learning_rate": ["train.encoder_lr", "train.head_lr"]}


def _key_hints(key: str) -> list[str]:
    """The dotted keys an unknown `key` may have meant, best first; [] if none is close. The same name in
    another section comes first (a key put in the wrong section: epochs=3, model.batch_size, which is then
    train.batch_size rather than the similar model.block_size), then a close spelling in its own section
    (a typo: train.epoch), a name other trainers use (lr), a loss keyword (train.alpha), and last a close
    spelling anywhere (alph). Loss keywords come late because they need docre.losses, whose torch import
    costs seconds: a plain typo is answered without it."""
    parent, _, leaf = key.rpartition(".")
    by_name = _keys_by_name(with_loss_keywords=False)
    if leaf in by_name:
        return by_name[leaf]
    same_section = difflib.get_close_matches(leaf, _field_names(parent), n=1)
    if same_section:
        return [".".join(filter(None, [parent, same_section[0]]))]
    if leaf in SYNONYMS:
        return SYNONYMS[leaf]
    by_name = _keys_by_name(with_loss_keywords=True)
    close = difflib.get_close_matches(leaf, by_name, n=1)  # an exact loss keyword scores highest
    return by_name[close[0]] if close else []


def _keys_by_name(with_loss_keywords: bool) -> dict[str, list[str]]:
    """Leaf name -> the dotted keys of the schema that end in it (batch_size -> train.batch_size,
    eval.batch_size); with `with_loss_keywords` also loss.KEYWORD for every keyword of a registered loss."""
    keys = []

    def walk(section: type, prefix: str) -> None:
        for name, kind in typing.get_type_hints(section).items():
            if dataclasses.is_dataclass(kind):
                walk(kind, f"{prefix}{name}.")
            else:
                keys.append(prefix + name)

    walk(Config, "")
    if with_loss_keywords:
        from docre.losses import LOSSES, loss_keywords

        keys += list(dict.fromkeys(f"loss.{keyword}" for name in LOSSES for keyword in loss_keywords(name)))  # no repeats
    by_name: dict[str, list[str]] = {}
    for dotted in keys:
        by_name.setdefault(dotted.rpartition(".")[2], []).append(dotted)
    return by_name


def _field_names(dotted_section: str) -> list[str]:
    """Field names of a config section ("" = top level), for "did you mean" hints."""
    section: Any = Config
    for part in filter(None, dotted_section.split(".")):
        section = typing.get_type_hints(section).get(part)
        if not dataclasses.is_dataclass(section):
            return []
    return [f.name for f in dataclasses.fields(section)]
