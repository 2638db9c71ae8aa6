"""A trained run -> a self-contained model folder, loadable offline and pushable to the Hugging Face Hub.

Layout (what `run_dir.load_trained` and `Predictor.from_pretrained` read):
    README.md           model card: hub metadata, model, loss, training data, scores (from results.json), use
    config.yaml         the run's docre config (model.backbone keeps the original name, for the record)
    model.safetensors   all weights (encoder and head), the run's best checkpoint
    encoder/            the encoder's config.json and tokenizer files (save_pretrained); the model is
                        built from this config (pretrained=False) and then given model.safetensors
    rel2id.json         relation id -> class index
    rel_info.json       relation id -> name (when the run's data.rel_info names a file)
    decode.json         decision parameters tuned on dev (when the loss has any)
    loss_statistics.json  what the loss took from the training split (SSR-PU's priors, AMTL's label spaces)
    results.json        the run's final scores (when the run finished)

`push_to_hub` uploads such a folder as it is; `Predictor.from_pretrained("ORG/NAME")` downloads it
again (docre/predict.py, `resolve_model`).
"""

import shutil
from pathlib import Path

import torch

from docre.errors import DocreError
from docre.utils import atomic_write_json, atomic_write_text, logger, plural

LOCAL_NAME = "path/to/this/folder"  # the card's usage examples name the model so when it has no hub id


def export_model(run_dir: str | Path, out_dir: str | Path, overwrite: bool = False, repo_id: str | None = None) -> Path:
    """Write the model folder of a run (see the module docstring); returns `out_dir`.

    The folder is assembled under a temporary name beside `out_dir` and renamed into place, so an
    interrupted export leaves no half-written model folder. `repo_id` ("ORG/NAME"): the hub repository
    the folder is meant for, which the model card's usage examples then load.
    """
    from docre import __version__
    from docre.checkpoint import save_weights
    from docre.config import resolve_path, save_config
    from docre.data import load_rel_names
    from docre.run_dir import LOSS_STATISTICS, load_trained, model_kind, read_decode, read_json, read_results

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if model_kind(run_dir) != "run":
        raise DocreError(f"{run_dir}: already an exported model folder; copy it instead")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise DocreError(f"{out_dir}: exists and is not empty (pass --overwrite to replace it)")
    cfg, tokenizer, model, _, rel2id = load_trained(run_dir, torch.device("cpu"))

    staging = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "encoder").mkdir(parents=True)
    model.encoder.config.save_pretrained(staging / "encoder")
    tokenizer.save_pretrained(staging / "encoder")
    save_weights(model, staging / "model.safetensors")
    save_config(cfg, staging / "config.yaml")
    atomic_write_json(staging / "rel2id.json", rel2id)
    rel_info = {}
    if cfg.data.rel_info and resolve_path(cfg.data.rel_info).is_file():
        names = load_rel_names(cfg.data.rel_info)
        rel_info = {r: names[r] for r in rel2id if r in names}
        atomic_write_json(staging / "rel_info.json", rel_info)
    decode = read_decode(run_dir)
    if decode:
        atomic_write_json(staging / "decode.json", decode)
    if (run_dir / LOSS_STATISTICS).is_file():  # the loss rebuilds from it, as from the run directory
        shutil.copyfile(run_dir / LOSS_STATISTICS, staging / LOSS_STATISTICS)
    results = read_results(run_dir) or {}
    if results:
        atomic_write_json(staging / "results.json", {k: v for k, v in results.items() if k != "run_dir"})
    else:
        logger.warning("%s: no results.json (unfinished run?): the model card has no scores", run_dir)
    environment = read_json(run_dir / "environment.json") if (run_dir / "environment.json").is_file() else {}
    card = model_card(cfg, rel2id, rel_info, results, decode, environment, __version__, repo_id or LOCAL_NAME)
    atomic_write_text(staging / "README.md", card)

    if out_dir.exists():
        shutil.rmtree(out_dir)
    staging.rename(out_dir)
    logger.info("exported %s to %s", run_dir, out_dir)
    return out_dir


# ---------------------------------------------------------------------------------------------- the Hub
def check_repo_id(repo_id: str) -> None:
    """Refuse what the Hub would refuse, before any work: an id that is not "ORG/NAME". A bare NAME
    would land in the pusher's own namespace, and the card's `from_pretrained(...)` line would then
    name a model that cannot be downloaded under that name."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise DocreError(f"--push-to-hub {repo_id!r}: not a Hugging Face repository id ({error})") from None
    if repo_id.count("/") != 1:
        raise DocreError(f"--push-to-hub {repo_id!r}: name the repository as ORG/NAME (your user name or an organisation)")


def check_can_push(repo_id: str) -> None:
    """Fail in the first second, before the export: a bad repository id, or no token to push with."""
    import huggingface_hub

    check_repo_id(repo_id)
    if not huggingface_hub.get_token():
        raise DocreError("no Hugging Face token to push with: run `hf auth login` (a token with write access) or set HF_TOKEN")


def push_to_hub(folder: str | Path, repo_id: str, private: bool = False, revision: str | None = None,
                commit_message: str | None = None) -> str:
    """Upload the model folder `folder` to the Hub model repository `repo_id` ("ORG/NAME"), creating
    the repository (and the branch `revision`) when missing; returns the commit's URL.

    Raises:
        DocreError: a bad repository id, no token, or the Hub refused or could not be reached (one line).
    """
    import huggingface_hub

    from docre.errors import hub_error_line, hub_errors

    check_can_push(repo_id)
    api = huggingface_hub.HfApi(library_name="docre")
    try:
        # private=None lets an organisation's default visibility apply; an existing repository keeps its own
        api.create_repo(repo_id, private=private or None, exist_ok=True)
        if revision:  # upload_folder needs the branch to exist
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), revision=revision,
                                   commit_message=commit_message or f"Upload {Path(folder).name} with docre")
    except hub_errors() as error:  # refused, unreachable, HF_HUB_OFFLINE
        why = hub_error_line(error)
        raise DocreError(f"pushing {folder} to the Hugging Face Hub repository {repo_id} failed: {why}") from None
    logger.info("pushed %s to %s", folder, commit.commit_url)
    return commit.commit_url


# ---------------------------------------------------------------------------------------------- the model card
PROVENANCE = ("torch", "transformers", "git_commit", "device")  # environment.json keys the model card names
# What a hub user searches for and what the Hub links: the embedded encoder's original hub id, and the
# hub datasets of the data folders docre knows (data/<name>, scripts/download_data.py).
BACKBONE_HUB_IDS = {"minilm": "sentence-transformers/all-MiniLM-L6-v2"}
DATASET_HUB_IDS = {"redocred": "tonytan48/Re-DocRED", "docred": "thunlp/docred"}
MODEL_DESCRIPTIONS = {  # model.name -> what the card says it is (docs/models.md)
    "atlop": "ATLOP (entity markers, localized context pooling, group bilinear classifier)",
    "dreeam": "DREEAM (ATLOP whose pair attention also picks each relation's evidence sentences)",
    "docunet": "DocuNet (a U-Net over the entity-pair map)",
    "kd_docre": "KD-DocRE (axial attention over the entity-pair map, without distillation)",
    "ttm_re": "TTM-RE (ATLOP with a token-memory read step on each pair's head and tail)",
    "vaediff": "VaeDiff-DocRE (KD-DocRE's model trained with synthetic pair features from a VAE + latent diffusion augmenter)",
}


def is_hub_id(backbone: str) -> bool:
    """Whether `backbone` is a hub id (not an alias, not a local folder): the model card's base_model,
    which the hub links to."""
    from docre.models import ALIASES

    return (backbone not in ALIASES and backbone.count("/") <= 1 and not backbone.startswith((".", "/", "~"))
            and not Path(backbone).expanduser().exists())


def backbone_license(backbone: str, revision: str = "") -> str | None:
    """The licence in the backbone's own model card (its README.md front matter) when that card is at
    hand: in the backbone's folder, or in the Hugging Face cache. Never downloads (export works offline),
    so a hub backbone whose card was never fetched gives None and the card states no licence."""
    import huggingface_hub
    import yaml

    from docre.models import ALIASES, resolve_backbone

    if backbone in ALIASES or Path(backbone).expanduser().is_dir():
        card = Path(resolve_backbone(backbone)) / "README.md"
    elif is_hub_id(backbone):
        cached = huggingface_hub.try_to_load_from_cache(backbone, "README.md", revision=revision or None)
        card = Path(cached) if isinstance(cached, str) else None  # else None or "cached as missing"
    else:
        return None
    if card is None or not card.is_file():
        return None
    try:
        found = huggingface_hub.metadata_load(card) or {}
    except yaml.YAMLError:  # someone else's card: a broken one costs the licence line, not the export
        return None
    return found.get("license") if isinstance(found.get("license"), str) else None


def card_metadata(cfg) -> dict:
    """The model card's YAML front matter: what the Hub indexes, filters on and links."""
    backbone = BACKBONE_HUB_IDS.get(cfg.model.backbone, cfg.model.backbone)
    tags = ["relation-extraction", "document-level-relation-extraction", cfg.model.name, cfg.data.dataset]
    metadata = {"library_name": "docre", "tags": list(dict.fromkeys(tags))}
    if is_hub_id(backbone):
        metadata["base_model"] = backbone
    dataset = DATASET_HUB_IDS.get(Path(cfg.data.dir).name)
    if dataset:
        metadata["datasets"] = [dataset]
    license_ = backbone_license(cfg.model.backbone, cfg.model.revision)
    if license_:
        metadata["license"] = license_
    return metadata


def model_card(cfg, rel2id: dict, rel_info: dict, results: dict, decode: dict, environment: dict, version: str,
               name: str = LOCAL_NAME) -> str:
    """The README.md of an exported model: hub metadata, what it is, its data, scores and how to use
    it, loading it as `name` (a hub id, or a placeholder for the folder's path)."""
    import yaml

    from docre.losses import LOSSES, caps_top_k
    from docre.report import results_table

    backbone, data, loss_class = cfg.model.backbone, cfg.data, LOSSES[cfg.loss["name"]]
    loss = ", ".join(f"{k}={v}" for k, v in cfg.loss.items() if k != "name")
    model = MODEL_DESCRIPTIONS.get(cfg.model.name, cfg.model.name)
    lines = [
        "---", yaml.safe_dump(card_metadata(cfg), sort_keys=False).rstrip("\n"), "---", "",
        f"# {cfg.run_name}", "",
        f"A document-level relation extraction model trained with docre {version}: `model.name={cfg.model.name}`, "
        f"{model}, over the encoder `{backbone}`, trained with the `{cfg.loss['name']}` loss{f' ({loss})' if loss else ''}. "
        f"It predicts {len(rel2id) - 1} relations between the entities of a document"
        + (", and the sentences that are each relation's evidence." if cfg.model.name == "dreeam" else "."),
        "",
        "## Training data", "",
        "| split | file |", "|---|---|",
        f"| train | `{data.train_file}` |",
        f"| dev (model selection) | `{data.dev_file or '-'}` |",
        f"| test | `{data.test_file or '-'}` |", "",
        f"Dataset format `{data.dataset}`, files from `{data.dir}`; seed {cfg.seed}; "
        f"max {cfg.model.max_seq_length or 'unlimited'} word-pieces per document; "
        + (f"at most {plural(cfg.eval.top_k, 'relation')} per {getattr(loss_class, 'top_k_per', 'entity pair')}."
           if caps_top_k(loss_class) else "no cap on the relations per entity pair (the loss's own decision rule)."),
        "",
        "## Scores", "",
    ]
    if results and (results.get("dev") or results.get("test")):
        lines += [results_table(results), "",
                  f"Best dev checkpoint at step {results.get('best_step')} of {results.get('steps')}. Scores in %, "
                  "official DocRED scorer (Ign F1 leaves out facts seen in the training file; Evi columns, where "
                  "present, score the predicted evidence sentences)."]
    else:
        lines.append("No scores recorded (the run had not finished when it was exported).")
    if decode:
        lines += ["", "Decision parameters tuned on dev (decode.json): " + ", ".join(f"{k}={v}" for k, v in decode.items()) + "."]
    lines += usage_lines(name) + file_lines(rel_info, decode, results)
    if environment:
        versions = ", ".join(f"{k} {environment[k]}" for k in PROVENANCE if environment.get(k))
        lines += ["", "## Provenance", "", f"Trained with {versions}."]
    return "\n".join(lines) + "\n"


def usage_lines(name: str) -> list[str]:
    """The card's "Use" section, loading the model as `name`."""
    where = ("is downloaded once into the Hugging Face cache, then loads offline" if name != LOCAL_NAME
             else "loads offline")
    return [
        "", "## Use", "",
        f"With docre installed (the model {where}, without the original encoder):", "",
        "```python",
        "from docre import Predictor",
        "",
        f'predictor = Predictor.from_pretrained("{name}", device="cpu")',
        'doc = {"text": "Alice works for Acme Corp in Berlin.",',
        '       "entities": [{"mentions": [[0, 5]]}, {"mentions": [[16, 25]]}, {"mentions": [[29, 35]]}]}',
        "for triple in predictor.predict([doc])[0]:",
        '    print(triple["h_name"], triple["r_name"], triple["t_name"], triple["score"])',
        "```",
        "",
        f"or on the command line, from a docre checkout: `python scripts/predict.py {name} docs.json -o out.jsonl` "
        "(documents in DocRED format or as raw text with entity spans, a JSON list or JSON lines; see docs/predict.md).",
    ]


def file_lines(rel_info: dict, decode: dict, results: dict) -> list[str]:
    """The card's "Files" section."""
    return [
        "", "## Files", "",
        "- `model.safetensors`: all weights (encoder and relation head)",
        "- `encoder/`: the encoder's configuration and tokenizer (the model loads offline from this folder)",
        "- `config.yaml`: the docre training configuration",
        "- `rel2id.json`" + (", `rel_info.json`" if rel_info else "") + ": relation ids and names",
        *(["- `decode.json`: decision parameters tuned on dev"] if decode else []),
        *(["- `results.json`: the training run's final scores"] if results else []),
    ]
