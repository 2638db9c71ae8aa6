"""Score a trained run on a labelled split, rebuilding everything from the run directory.

The split's file comes from the run's config unless --data names another (a DocRED-format file,
or a slice such as data/redocred/dev_revised.json.gz[400:]). Splits without labels (DocRED test)
are refused: their scores come only from the CodaLab leaderboard (scripts/predict.py writes
result.zip).

--isf (models that predict evidence: DREEAM) also scores inference-stage fusion (docre/isf.py): the
model re-run on pseudo-documents of each pair's evidence sentences, merged with the first pass under a
threshold tuned on the run's dev file, and printed beside the plain scores.

Examples:
  docre-evaluate runs/minilm_atgl-s66
  docre-evaluate runs/minilm_atgl-s66 --split test --json
  docre-evaluate runs/minilm_atgl-s66 --data "data/redocred/dev_revised.json.gz[400:]"
"""

import json

from docre.allocator import use_huge_pages
from docre.cli import command_parser
from docre.errors import DocreError, run_cli


def main() -> int:
    use_huge_pages()  # first: torch reads the allocator setting once, at import (docre/allocator.py)
    parser = command_parser("docre-evaluate", __doc__)
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a training run directory (config.yaml, best.safetensors)")
    parser.add_argument("--split", choices=("dev", "test"), default="dev", help="which of the config's splits to score")
    parser.add_argument("--data", metavar="FILE", help="score this file instead of the config's split file")
    parser.add_argument("--top-k", type=int, metavar="K", help="most relations per pair (default: the run's eval.top_k)")
    parser.add_argument("--isf", action="store_true", help="also score inference-stage fusion (DREEAM)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    parser.add_argument("--json", action="store_true", help="print the scores as one JSON line at the end")
    args = parser.parse_args()

    from docre.config import resolve_path
    from docre.data import load_rel_names, load_split, read_split
    from docre.data.docred import split_spec
    from docre.inference import decode_predictions, predict
    from docre.metrics import breakdown, score
    from docre.report import breakdown_table, per_relation_table, results_table
    from docre.run_dir import load_trained
    from docre.utils import inference_precision, resolve_device, setup_logging

    setup_logging()
    device = resolve_device(args.device, "--device")
    cfg, tokenizer, model, loss_fn, rel2id = load_trained(args.run_dir, device)
    from docre.losses import refuse_top_k

    refuse_top_k(loss_fn, args.top_k, "--top-k", f"{cfg.loss['name']} of {args.run_dir}")
    data = cfg.data
    spec = args.data or (data.dev_file if args.split == "dev" else data.test_file)
    if not spec:
        raise DocreError(f"{args.run_dir}: the run's config has no {args.split} file; pass --data FILE")
    split = load_split(args.split, data.dataset, spec, "" if args.data else data.dir, tokenizer, rel2id,
                       cfg.model.marker, cfg.model.max_seq_length, data.cache_dir)
    if not all("labels" in doc for doc in split.docs):
        name, _ = split_spec(spec)
        path = resolve_path(name, "" if args.data else data.dir)
        raise DocreError(
            f"{spec}: documents without labels (e.g. DocRED test) cannot be scored locally; write the leaderboard "
            f"file with: python scripts/predict.py {args.run_dir} {path}{spec[len(name):]} -o result.zip "
            "and submit result.zip to the CodaLab competition"
        )
    train_docs = read_split(data.dataset, data.train_file, data.dir, None)[2]
    ign_docs = read_split(data.dataset, data.ign_train_file, data.dir, None)[2] if data.ign_train_file else train_docs
    rel_names = load_rel_names(data.rel_info)
    logits, evidence = predict(model, split.features, len(rel2id), tokenizer.pad_token_id or 0, cfg.eval.batch_size,
                               device, inference_precision(cfg.train.precision, device), desc=args.split,
                               max_tokens=cfg.eval.max_batch_tokens)
    predictions = decode_predictions(split.features, logits, loss_fn, args.top_k or cfg.eval.top_k, rel2id, evidence,
                                     cfg.model.evidence_threshold)
    scores = score(data.dataset, predictions, split.docs, ign_docs)
    details = breakdown(data.dataset, predictions, split.docs, train_docs, rel_names)
    fused = {}
    if args.isf:
        if evidence is None:
            raise DocreError(f"{args.run_dir}: --isf needs a model that predicts evidence (model.name=dreeam), "
                             f"not {cfg.model.name}")
        dev = split if args.split == "dev" and not args.data else load_split(
            "dev", data.dataset, data.dev_file, data.dir, tokenizer, rel2id, cfg.model.marker, cfg.model.max_seq_length,
            data.cache_dir)
        fused = _isf(cfg, model, loss_fn, tokenizer, rel2id, device, split, (logits, evidence), dev, ign_docs)
    print(results_table({args.split: scores, **({f"{args.split} + ISF": fused} if fused else {})}))
    print(f"\n{breakdown_table({args.split: details})}\n\n{per_relation_table(details['per_relation'])}")
    if args.json:
        print(json.dumps({"split": args.split, **scores, "breakdown": details, **({"isf": fused} if fused else {})}))
    return 0


def _isf(cfg, model, loss_fn, tokenizer, rel2id, device, split, first_pass, dev, ign_docs) -> dict:
    """Scores of inference-stage fusion on `split`, its threshold tuned on `dev` (with "isf_threshold")."""
    from docre.inference import predict
    from docre.isf import run_isf
    from docre.metrics import score
    from docre.utils import inference_precision

    dtype = inference_precision(cfg.train.precision, device)
    dev_pass = first_pass if dev is split else predict(
        model, dev.features, len(rel2id), tokenizer.pad_token_id or 0, cfg.eval.batch_size, device, dtype, desc="dev",
        max_tokens=cfg.eval.max_batch_tokens)
    _, threshold = run_isf(model, loss_fn, dev.docs, dev.features, *dev_pass, tokenizer, rel2id, cfg, device, dtype)
    rows, _ = run_isf(model, loss_fn, split.docs, split.features, *first_pass, tokenizer, rel2id, cfg, device, dtype,
                      threshold)
    return {**score(cfg.data.dataset, rows, split.docs, ign_docs), "isf_threshold": threshold}


def run() -> None:
    """The `docre-evaluate` console command (and `python evaluate.py`)."""
    run_cli(main)
