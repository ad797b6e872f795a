"""The guidance check for every data.guidance option, on the testbed, from one checkpoint.

    python benchmarks/guidance_check.py                                  # the embedded SmolLM2-135M-Instruct
    python benchmarks/guidance_check.py --checkpoint runs/x/iter_0/train/model --label warmstart

For an even spread of --cases testbed DSAT cases (both kinds), one sampler run draws the policy's
reply to the original prompt and to the guided prompt of each guidance option (same seeds per
case), and the gold reward scores them against the case's preference: the share of cases where
the guided sample beats (a) the DSAT reply and (b) the policy's own original-prompt sample, per
kind. This is what the pipeline's guidance check measures before iteration 1 (drift.guidance),
for all options side by side. Writes benchmarks/results/guidance_check_<label>.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    from drift.config import SamplerConfig
    from drift.data import DataConfig, load_records
    from drift.data.prompts import GUIDANCE, ORIGINAL_KEEP_LAST, guided_keep_last, guided_prompt, original_prompt
    from drift.eval.gold import preference_kind
    from drift.guidance import gold_scorer, guidance_check
    from drift.io import write_text_atomic
    from drift.methods import check_cases
    from drift.model import ensure_embedded_smollm2
    from drift.sampler.client import SamplingJob, sample

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None, help="an HF folder (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--label", default="base")
    parser.add_argument("--cases", type=int, default=48)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "guidance_check")
    args = parser.parse_args()

    checkpoint = args.checkpoint or str(ensure_embedded_smollm2())
    records = load_records(DataConfig(name="testbed"))
    cases = check_cases(records.dsat_cases, args.cases)
    rows = [{"prompt_id": f"{c.case_id}#original", "messages": list(original_prompt(c)), "keep_last": ORIGINAL_KEEP_LAST}
            for c in cases]
    for option in GUIDANCE:
        rows += [{"prompt_id": f"{c.case_id}#{option}", "messages": list(guided_prompt(c, option)),
                  "keep_last": guided_keep_last(option)} for c in cases]
    sampler = SamplerConfig(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, truncated="keep")
    result = sample(SamplingJob(checkpoint, tuple(rows), args.work / args.label, sampler, max_prompt_length=1024),
                    label="guidance check")
    texts = {row["prompt_id"]: row["text"] for row in result.samples}
    cut = {row["prompt_id"] for row in result.samples if row["finish_reason"] == "length"}

    def by_case(kind: str) -> dict[str, str]:
        return {c.case_id: texts[f"{c.case_id}#{kind}"] for c in cases if f"{c.case_id}#{kind}" in texts}

    scorer = gold_scorer()
    original = by_case("original")
    options = {}
    for option in GUIDANCE:
        check = guidance_check(cases, by_case(option), original, scorer, lambda c: preference_kind(c.case_id))
        check.pop("cases")
        check["cut_share"] = round(sum(f"{c.case_id}#{option}" in cut for c in cases) / len(cases), 4)
        options[option] = check
    report = {"checkpoint": checkpoint, "label": args.label, "cases": len(cases), "settings": {**vars(args), "work": str(args.work), "checkpoint": checkpoint},
              "original_cut_share": round(sum(f"{c.case_id}#original" in cut for c in cases) / len(cases), 4),
              "options": options}
    lines = [f"guidance check, {args.label} ({checkpoint}), {len(cases)} testbed DSAT cases, gold reward",
             f"{'guidance':<22} {'beats DSAT':>10} {'beats own':>9}  {'stated: DSAT / own':>18}  {'revealed: DSAT / own':>20}"
             f"  {'gold guided':>11} {'original':>8} {'cut':>5}"]
    for option, check in options.items():
        o, st, rv = check["overall"], check["by_kind"]["stated"], check["by_kind"]["revealed"]
        lines.append(f"{option:<22} {o['guided_beats_dsat']:>10.2f} {o['guided_beats_own_original']:>9.2f}  "
                     f"{st['guided_beats_dsat']:>8.2f} / {st['guided_beats_own_original']:<7.2f}  "
                     f"{rv['guided_beats_dsat']:>10.2f} / {rv['guided_beats_own_original']:<7.2f}  "
                     f"{o['mean_guided']:>11.3f} {o['mean_original']:>8.3f} {check['cut_share']:>5.2f}")
    print("\n".join(lines))
    out = ROOT / "benchmarks" / "results" / f"guidance_check_{args.label}.json"
    write_text_atomic(out, json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
