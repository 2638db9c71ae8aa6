"""Train one config once per loss and seed, then tabulate scores, errors and threshold diagnostics.

    python scripts/compare_losses.py CONFIG --losses atgl,atl,afl,... [--seeds 66,67,68]
                                     [--output-dir DIR] [--split test|dev] [key=value ...]

Every run goes through the one `train()` with the same data, model and seed; only the loss differs.
Runs land in DIR/<config>-<loss>-s<seed>/ (default DIR: runs/compare-<config>): finished runs
(results.json present) are skipped, interrupted ones resumed, so the command can be re-run after a
crash or with more losses. Then it writes DIR/comparison.md and DIR/comparison.json (P, R, F1,
Ign F1, FP, FN, TH offset std, violation rate, seconds per step; mean ± std over seeds when there
are several) and the plots under DIR/plots/.

Loss keywords: a loss named on the command line does not inherit the config file's loss keywords
(`load_config`), so each loss runs with its own defaults, except the loss the config itself names,
which keeps the file's keywords (ATGL keeps alpha from an ATGL config; elsewhere its default 16.5).
The table spells out every run's keywords, defaults included. `--losses all` runs every loss.
"""

if __name__ == "__main__":
    from docre.cli.compare_losses import run

    run()
