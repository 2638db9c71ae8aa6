"""Export a training run as a self-contained model folder (loads offline; push it to a model hub as is).

    python scripts/export.py RUN_DIR OUT_DIR [--overwrite]

OUT_DIR gets model.safetensors, the encoder's config and tokenizer (encoder/), config.yaml,
rel2id.json, rel_info.json, decode.json (if any), results.json and a README.md model card.
Load it with Predictor.from_pretrained(OUT_DIR) or python scripts/predict.py OUT_DIR ...
"""


from docre.allocator import use_huge_pages
from docre.cli import command_parser
from docre.errors import run_cli


def main() -> int:
    use_huge_pages()  # first: torch reads the allocator setting once, at import (docre/allocator.py)
    parser = command_parser("docre-export", __doc__)
    parser.add_argument("run_dir", help="a training run directory (config.yaml, best.safetensors, rel2id.json)")
    parser.add_argument("out_dir", help="the model folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
    args = parser.parse_args()

    from docre.export import export_model
    from docre.utils import setup_logging

    setup_logging()
    out_dir = export_model(args.run_dir, args.out_dir, args.overwrite)
    files = sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*") if p.is_file())
    print(f"{out_dir}: " + ", ".join(files))
    return 0


def run() -> None:
    """The `docre-export` console command (and `python scripts/export.py`)."""
    run_cli(main)
