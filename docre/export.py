"""A trained run -> a self-contained model folder, loadable offline and pushable to a model hub as is.

Layout (what `run_dir.load_trained` and `Predictor.from_pretrained` read):
    README.md           model card: backbone, loss, training data, scores (from results.json)
    config.yaml         the run's docre config (model.backbone keeps the original name, for the record)
    model.safetensors   all weights (encoder and head), the run's best checkpoint
    encoder/            the encoder's config.json and tokenizer files (save_pretrained); the model is
                        built from this config (pretrained=False) and then given model.safetensors
    rel2id.json         relation id -> class index
    rel_info.json       relation id -> name (when the run's data.rel_info names a file)
    decode.json         decision parameters tuned on dev (when the loss has any)
    results.json        the run's final scores (when the run finished)
"""

import shutil
from pathlib import Path

import torch

from docre.errors import DocreError
from docre.utils import atomic_write_json, atomic_write_text, logger


def export_model(run_dir: str | Path, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Write the model folder of a run (see the module docstring); returns `out_dir`.

    The folder is assembled under a temporary name beside `out_dir` and renamed into place, so an
    interrupted export leaves no half-written model folder.
    """
    from docre import __version__
    from docre.checkpoint import save_weights
    from docre.config import resolve_path, save_config
    from docre.data import load_rel_names
    from docre.run_dir import load_trained, model_kind, read_decode, read_json, read_results

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
    results = read_results(run_dir) or {}
    if results:
        atomic_write_json(staging / "results.json", {k: v for k, v in results.items() if k != "run_dir"})
    else:
        logger.warning("%s: no results.json (unfinished run?): the model card has no scores", run_dir)
    environment = read_json(run_dir / "environment.json") if (run_dir / "environment.json").is_file() else {}
    atomic_write_text(staging / "README.md", model_card(cfg, rel2id, rel_info, results, decode, environment, __version__))

    if out_dir.exists():
        shutil.rmtree(out_dir)
    staging.rename(out_dir)
    logger.info("exported %s to %s", run_dir, out_dir)
    return out_dir


PROVENANCE = ("torch", "transformers", "git_commit", "device")  # environment.json keys the model card names


def is_hub_id(backbone: str) -> bool:
    """Whether `backbone` is a hub id (not an alias, not a local folder): the model card's base_model,
    which the hub links to."""
    from docre.models import ALIASES

    return (backbone not in ALIASES and backbone.count("/") <= 1 and not backbone.startswith((".", "/", "~"))
            and not Path(backbone).expanduser().exists())


def model_card(cfg, rel2id: dict, rel_info: dict, results: dict, decode: dict, environment: dict, version: str) -> str:
    """The README.md of an exported model: hub metadata, what it is, its data, scores and usage."""
    from docre.report import results_table

    backbone = cfg.model.backbone
    hub_id = is_hub_id(backbone)
    loss = ", ".join(f"{k}={v}" for k, v in cfg.loss.items() if k != "name")
    data = cfg.data
    lines = [
        "---",
        "library_name: docre",
        "tags:",
        "- relation-extraction",
        "- document-level-relation-extraction",
        f"- {data.dataset}",
        *([f"base_model: {backbone}"] if hub_id else []),
        "---",
        "",
        f"# {cfg.run_name}",
        "",
        f"A document-level relation extraction model trained with docre {version}: the ATLOP architecture "
        f"(entity markers, localized context pooling, group bilinear classifier) over the encoder `{backbone}`, "
        f"trained with the `{cfg.loss['name']}` loss{f' ({loss})' if loss else ''}. It predicts {len(rel2id) - 1} "
        "relations between the entities of a document.",
        "",
        "## Training data",
        "",
        "| split | file |",
        "|---|---|",
        f"| train | `{data.train_file}` |",
        f"| dev (model selection) | `{data.dev_file or '-'}` |",
        f"| test | `{data.test_file or '-'}` |",
        "",
        f"Dataset format `{data.dataset}`, files from `{data.dir}`; seed {cfg.seed}; "
        f"max {cfg.model.max_seq_length or 'unlimited'} word-pieces per document; "
        f"at most {cfg.eval.top_k} relations per entity pair.",
        "",
        "## Scores",
        "",
    ]
    if results and (results.get("dev") or results.get("test")):
        lines += [results_table(results), "",
                  f"Best dev checkpoint at step {results.get('best_step')} of {results.get('steps')}. Scores in %, "
                  "official DocRED scorer (Ign F1 leaves out facts seen in the training file)."]
    else:
        lines.append("No scores recorded (the run had not finished when it was exported).")
    if decode:
        lines += ["", "Decision parameters tuned on dev (decode.json): " + ", ".join(f"{k}={v}" for k, v in decode.items()) + "."]
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from docre import Predictor",
        "",
        'predictor = Predictor.from_pretrained("path/to/this/folder", device="cpu")',
        'doc = {"text": "Alice works for Acme Corp in Berlin.",',
        '       "entities": [{"mentions": [[0, 5]]}, {"mentions": [[16, 25]]}, {"mentions": [[29, 35]]}]}',
        "for triple in predictor.predict([doc])[0]:",
        '    print(triple["h_name"], triple["r_name"], triple["t_name"], triple["score"])',
        "```",
        "",
        "or on the command line, from a docre checkout: "
        "`python scripts/predict.py path/to/this/folder docs.jsonl -o triples.jsonl` (see docs/predict.md).",
        "",
        "## Files",
        "",
        "- `model.safetensors`: all weights (encoder and relation head)",
        "- `encoder/`: the encoder's configuration and tokenizer (the model loads offline from this folder)",
        "- `config.yaml`: the docre training configuration",
        "- `rel2id.json`" + (", `rel_info.json`" if rel_info else "") + ": relation ids and names",
        *(["- `decode.json`: decision parameters tuned on dev"] if decode else []),
        *(["- `results.json`: the training run's final scores"] if results else []),
    ]
    if environment:
        versions = ", ".join(f"{k} {environment[k]}" for k in PROVENANCE if environment.get(k))
        lines += ["", "## Provenance", "", f"Trained with {versions}."]
    return "\n".join(lines) + "\n"
