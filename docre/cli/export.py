"""Export a training run as a self-contained model folder (loads offline), and share it on the Hugging Face Hub.

OUT_DIR gets model.safetensors, the encoder's config and tokenizer (encoder/), config.yaml,
rel2id.json, rel_info.json, decode.json (if any), results.json and a README.md model card.
Load it with Predictor.from_pretrained(OUT_DIR) or python scripts/predict.py OUT_DIR ...

--push-to-hub uploads OUT_DIR to the Hub model repository ORG/NAME (created if missing; needs a token:
`hf auth login` or HF_TOKEN); then Predictor.from_pretrained("ORG/NAME") and
python scripts/predict.py ORG/NAME ... load it anywhere. See docs/predict.md.

Examples:
  docre-export runs/minilm_atgl-s66 models/minilm-atgl
  docre-export runs/minilm_atgl-s66 models/minilm-atgl --overwrite --push-to-hub my-org/minilm-atgl --private
"""


from docre.allocator import use_huge_pages
from docre.cli import command_parser
from docre.errors import run_cli


def main() -> int:
    use_huge_pages()  # first: torch reads the allocator setting once, at import (docre/allocator.py)
    parser = command_parser("docre-export", __doc__)
    parser.add_argument("run_dir", metavar="RUN_DIR",
                        help="a training run directory (config.yaml, best.safetensors, rel2id.json)")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="the model folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
    parser.add_argument("--push-to-hub", metavar="ORG/NAME", help="then upload OUT_DIR to this Hugging Face Hub model repository")
    parser.add_argument("--private", action="store_true", help="with --push-to-hub: create the repository private")
    parser.add_argument("--revision",
                        help="with --push-to-hub: the branch to upload to (created if missing; default: main)")
    parser.add_argument("--commit-message", metavar="TEXT", help="with --push-to-hub: the commit's message")
    args = parser.parse_args()

    from docre.errors import DocreError
    from docre.export import check_can_push, export_model, push_to_hub
    from docre.utils import setup_logging

    hub_options = [name for name, value in (("--private", args.private), ("--revision", args.revision),
                                            ("--commit-message", args.commit_message)) if value]
    if hub_options and not args.push_to_hub:
        raise DocreError(f"{', '.join(hub_options)}: only with --push-to-hub ORG/NAME")
    if args.push_to_hub:
        check_can_push(args.push_to_hub)  # a bad id or a missing token fails before the export
    setup_logging()
    out_dir = export_model(args.run_dir, args.out_dir, args.overwrite, args.push_to_hub)
    files = sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*") if p.is_file())
    print(f"{out_dir}: " + ", ".join(files))
    if args.push_to_hub:
        url = push_to_hub(out_dir, args.push_to_hub, args.private, args.revision, args.commit_message)
        print(f"pushed to {url}; load it with Predictor.from_pretrained({args.push_to_hub!r}) "
              f"or python scripts/predict.py {args.push_to_hub} INPUT -o OUTPUT")
    return 0


def run() -> None:
    """The `docre-export` console command (and `python scripts/export.py`)."""
    run_cli(main)
