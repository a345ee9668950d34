"""bench_int8_matrix.py's JSON as markdown tables (`--render`), one per case, arms in the order run."""

from __future__ import annotations


def render(results: dict) -> str:
    """The JSON as markdown tables, one per case, arms in the order run."""
    lines = [f"Command: `{results['command']}`; load at start: `{results['uptime_start']}`", ""]
    for case, rows in results.items():
        if not isinstance(rows, dict) or "fp32" not in rows:
            continue
        fp32 = rows["fp32"]
        lines += [
            f"### {case}: {fp32['images']} measured photos, FP32 top-1 {100 * fp32['top1']:.2f}%",
            "",
            "| arm | agreement % [95% CI] | KL [95% CI] | vs reference: agreement pts, KL [95% CI] | top-1 % | latency vs FP32 |",
            "|---|---|---|---|---|---|",
        ]
        for name, r in rows.items():
            if name == "fp32" or name.startswith("_"):
                continue
            if "error" in r:
                lines.append(f"| {name} | failed: {r['error'][:120]} | | | | |")
                continue
            a, k = r["agreement_ci95"], r["kl_ci95"]
            vs = r.get("vs_reference")
            diff = (
                f"{100 * vs['agreement_diff']:+.2f} [{100 * vs['agreement_diff_ci95'][0]:+.2f}, "
                f"{100 * vs['agreement_diff_ci95'][1]:+.2f}], {vs['kl_diff']:+.5f} "
                f"[{vs['kl_diff_ci95'][0]:+.5f}, {vs['kl_diff_ci95'][1]:+.5f}]"
                if vs
                else ""
            )
            top1 = "–" if r.get("top1") is None else f"{100 * r['top1']:.2f}"
            ratio = (
                r.get("latency_vs_fp32") or r.get("latency_pair_vs_fp32") or r.get("openvino_latency_vs_fp32")
            )
            lines.append(
                f"| {name} | {100 * r['agreement']:.2f} [{100 * a[0]:.2f}, {100 * a[1]:.2f}] | "
                f"{r['kl']:.5f} [{k[0]:.5f}, {k[1]:.5f}] | {diff} | {top1} | "
                + (f"{ratio:.2f}x |" if ratio else "|")
            )
        lines.append("")
    return "\n".join(lines)
