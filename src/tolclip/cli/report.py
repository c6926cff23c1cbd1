"""`tolclip report SWEEP_DIR`: tables from a sweep's run folders.

* `tolclip report SWEEP_DIR`: the text-type ablation (training × evaluation text type × rank, as
  BioCLIP's Table 5) from the zero-shot CSVs of a training sweep; also written to SWEEP_DIR/table.md.
* `tolclip report --suite SWEEP_DIR [--wandb]`: models × tasks for every eval-suite measure (as
  BioCLIP's Table 4) from the `results.json` files; written as SWEEP_DIR/suite_table.md and .csv.
  A cell computed on part of a task reads e.g. `48.0 ± 8.7 (3/520 cls)`; one with fewer than 2 usable
  classes reads `not computed`; the footnote under each table gives the rule, chance and reasons.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tolclip.evaluation.report import collect, markdown, own_text_tables, pivot, write_suite


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tolclip report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sweep_dir", metavar="SWEEP_DIR")
    parser.add_argument("--metric", default="top1", choices=["top1", "top5"])
    parser.add_argument("--out", help="also write the markdown table here (default: SWEEP_DIR/table.md)")
    parser.add_argument("--suite", action="store_true", help="an eval-suite sweep (results.json files)")
    parser.add_argument("--wandb", action="store_true", help="with --suite: also log the table to wandb")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.suite:
        print(write_suite(args.sweep_dir, args.wandb))
        print(f"written to {Path(args.sweep_dir) / 'suite_table.md'} and suite_table.csv")
        return 0
    rows = collect(args.sweep_dir)
    header, body = pivot(rows, args.metric)
    text = (
        f"Each training text type with its own evaluation text (mixed: taxon_com)\n\n{own_text_tables(rows, args.metric)}"
        f"\n\nEvery pair\n\n{markdown(header, body)}"
    )
    print(f"zero-shot {args.metric} (%), by training and evaluation text type\n{text}")
    out = Path(args.out or Path(args.sweep_dir) / "table.md")
    out.write_text(text + "\n")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
