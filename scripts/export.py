"""Export a training run as a self-contained model folder (loads offline; push it to a model hub as is).

    python scripts/export.py RUN_DIR OUT_DIR [--overwrite]

OUT_DIR gets model.safetensors, the encoder's config and tokenizer (encoder/), config.yaml,
rel2id.json, rel_info.json, decode.json (if any), results.json and a README.md model card.
Load it with Predictor.from_pretrained(OUT_DIR) or python scripts/predict.py OUT_DIR ...
"""

if __name__ == "__main__":
    from docre.cli.export import run

    run()
