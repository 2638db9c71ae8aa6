"""Effect of a dev-tuned TH offset on threshold-class losses, from runs' saved logits (no retraining).

    python scripts/tune_offset.py RUN_DIR [RUN_DIR ...] [--json]

For each run: the offset o that maximises dev F1 of `threshold_decode(logits, top_k, o)`
(`docre.losses.common.tune_threshold_offset`, exact), then dev and test P/R/F1 at o = 0 (the official
rule) and at the tuned o, with the official scorer (P, R, F1, Ign F1 against the run's training
documents; CDR and GDA: binary P, R, F1, no Ign F1). The logits are the saved fp16 ones, so a score can differ from the run's own
results.json in the last digit.
"""

if __name__ == "__main__":
    from docre.cli.tune_offset import run

    run()
