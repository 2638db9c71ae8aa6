"""Train a DocRE model from a config file.

    python train.py CONFIG [key=value ...]           e.g. python train.py configs/quickstart.yaml train.epochs=2
    python train.py --resume RUN_DIR [key=value ...]  continue an interrupted run from RUN_DIR/last/
    python train.py CONFIG loss.name=atgl loss.alpha=auto  ATGL with alpha tuned on dev (docs/alpha.md)

Writes runs/<run_name>/ (config, metrics.jsonl, best.safetensors, predictions, results.json) and
prints the dev/test results table. Multi-GPU: torchrun --nproc-per-node N train.py CONFIG.
"""

if __name__ == "__main__":
    from docre.cli.train import run

    run()
