"""Chain-by-chain comparison of two contact evaluations of the same chains (two outputs of
scripts/contacts_eval.py, e.g. two training stages), so a change of a mean can be told from noise:

    python scripts/contacts_eval.py --model A --folds 3 > a.md
    python scripts/contacts_eval.py --model B --folds 3 > b.md
    python scripts/compare_contacts.py a.md b.md [--metric "long P@L"]

For every method in both files: the mean of each, how many chains went down and up, and a paired
Wilcoxon signed-rank p-value over the chains (ties dropped). Reads the per-protein tables, which
contacts_eval.py prints to 3 decimals.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy.stats import wilcoxon


def per_protein(text: str, metric: str) -> dict[str, dict[str, float]]:
    """{method: {chain: value of `metric`}} from the per-protein tables of a contacts_eval output."""
    out: dict[str, dict[str, float]] = {}
    method, columns = None, None
    for line in text.splitlines():
        if line.startswith("### "):
            method, columns = line[4:].strip(), None
            out[method] = {}
        elif not line.strip():
            columns = None  # a blank line ends a markdown table
        elif method and line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if cells[0] == "protein":
                columns = cells
            elif columns and not cells[0].startswith(("**", "---")):
                if metric not in columns:
                    raise SystemExit(f"no column {metric!r}; columns: {', '.join(columns[2:])}")
                out[method][cells[0]] = float(cells[columns.index(metric)])
    return {m: rows for m, rows in out.items() if rows}


def compare(a: dict[str, dict[str, float]], b: dict[str, dict[str, float]]) -> list[dict]:
    """Paired statistics per method present in both, over the chains present in both."""
    rows = []
    for method in a:
        if method not in b:
            continue
        chains = [c for c in a[method] if c in b[method]]
        x = np.array([a[method][c] for c in chains])
        y = np.array([b[method][c] for c in chains])
        d = y - x
        p = float(wilcoxon(d).pvalue) if np.any(d != 0) else 1.0
        rows.append({"method": method, "n": len(chains), "mean_a": float(x.mean()), "mean_b": float(y.mean()),
                     "lower": int((d < 0).sum()), "higher": int((d > 0).sum()), "p": p})
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", help="contacts_eval.py output of the first model")
    ap.add_argument("b", help="contacts_eval.py output of the second model (same chains)")
    ap.add_argument("--metric", default="long P@L")
    args = ap.parse_args(argv)
    missing = [f for f in (args.a, args.b) if not Path(f).is_file()]
    if missing:
        sys.exit(f"Error: no such file: {', '.join(missing)}")
    a = per_protein(Path(args.a).read_text(), args.metric)
    b = per_protein(Path(args.b).read_text(), args.metric)
    rows = compare(a, b)
    if not rows:
        sys.exit("no method with per-protein rows in both files")
    print(f"| method | chains | {args.metric} A | {args.metric} B | B lower | B higher | paired Wilcoxon p |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['n']} | {r['mean_a']:.3f} | {r['mean_b']:.3f} | {r['lower']} | "
              f"{r['higher']} | {r['p']:.3g} |")


if __name__ == "__main__":
    main()
