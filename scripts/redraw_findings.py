"""Redraw a report's findings.png from its report.json, without the runs (they stay where they were trained).

python scripts/redraw_findings.py docs/results/report.json docs/results/findings.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from delving.paper import FINDINGS
from delving.report.findings import FindingResult, findings_figure
from delving.report.plots import save_figure
from delving.report.stats import Estimate, Verdict


def results_from_summary(findings: list[dict]) -> list[FindingResult]:
    """report.json's findings as FindingResults, matched to the paper's findings by source and claim."""
    by_claim = {(f.source, f.claim): f for f in FINDINGS}
    results = []
    for entry in findings:
        finding = by_claim.get((entry["source"], entry["claim"]))
        if finding is None:
            raise SystemExit(f"{entry['source']}: {entry['claim']!r} is not one of delving.paper.FINDINGS")
        estimates = {k: Estimate(**entry[k]) if entry.get(k) else None for k in ("a", "b", "difference")}
        verdict = Verdict(entry["verdict"]) if entry.get("verdict") else None
        results.append(FindingResult(finding, **estimates, verdict=verdict, seeds=entry.get("seeds", [])))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report_json", type=Path)
    parser.add_argument("png", type=Path)
    args = parser.parse_args()
    results = results_from_summary(json.loads(args.report_json.read_text(encoding="utf-8"))["findings"])
    figure = findings_figure(results)
    if figure is None:
        raise SystemExit(f"{args.report_json}: no decided finding to draw")
    save_figure(figure, args.png)
    shown = sum(r.verdict is not None and not r.finding.a.kind.startswith("slope") for r in results)
    print(f"{args.png}: {shown} of {sum(r.verdict is not None for r in results)} decided findings")


if __name__ == "__main__":
    main()
