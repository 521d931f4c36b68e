"""The report's targets, tables and plots, from a results.json that evaluate.py wrote.

    check_targets   the reproduction's four targets (docs/results.md), judged on FID, each with
                    the same ratio in KID beside it
    plot            fid_vs_calls.png (FID and KID against network calls, one panel per w) and
                    fid_vs_is.png (the quality / diversity trade-off across w, as in the paper)
    obedience_table G and R (obedience.py) against their goals
    write_report    report.md: protocol, targets, every row, G and R

Rerun the plots and report.md after editing this file, without sampling anything again:

    python report.py runs/cpu/report/results.json
"""
import argparse
import json
from pathlib import Path

from config import UserError
from infra import run_cli


def find(rows, **kw):
    hits = [r for r in rows if all(r.get(k) == v for k, v in kw.items())]
    return hits[0] if hits else None


def check_targets(rows, teacher_N):
    """The four reproduction targets, judged on FID; each also shows the same ratio in KID and,
    where it is missed, by how much (the ratio's distance from its goal, in %)."""
    out = []

    def add(target, value, goal, at_most, detail, kid_value=float("nan")):
        passed = value <= goal if at_most else value >= goal
        off_by = 0.0 if passed else 100 * (value / goal - 1 if at_most else 1 - value / goal)
        out.append(dict(target=target, value=value, goal=goal, passed=passed, off_by=off_by,
                        kid_value=kid_value, detail=detail))

    def ratio(target, num, den, goal, at_most):  # FID(num) / FID(den) against the goal
        add(target, num["fid"] / den["fid"], goal, at_most,
            f"FID {num['fid']:.2f} ({num['model']} {num['sampler']} {num['N']}) "
            f"vs {den['fid']:.2f}",
            num["kid"] / den["kid"] if den["kid"] > 0 else float("nan"))
    for w in sorted({r["w"] for r in rows if r["model"] == "teacher" and r["N"] == teacher_N}):
        ref = find(rows, model="teacher", N=teacher_N, w=w)
        s4 = [r for r in rows if r["model"] == "stage2" and r["N"] == 4 and r["w"] == w]
        s1 = find(rows, model="stage2", N=1, w=w, sampler="ddim")
        if s4:  # the better of the two samplers
            ratio(f"1: FID(student, 4 steps) <= 1.05 x FID(teacher, {teacher_N}) at w={w:g}",
                  min(s4, key=lambda r: r["fid"]), ref, 1.05, True)
        if s1:
            ratio(f"3: FID(student, 1 step) <= 1.5 x FID(teacher, {teacher_N}) at w={w:g}", s1, ref,
                  1.5, True)
        s4d = find(rows, model="stage2", N=4, w=w, sampler="ddim")
        if s4d and w == 1.0:
            add(f"4: wall-clock speedup, 4-step student vs {teacher_N}-step teacher >= 450x",
                ref["ms_per_image"] / s4d["ms_per_image"], 450, False,
                f"{ref['ms_per_image']:.1f} vs {s4d['ms_per_image']:.2f} ms per image")
    for t4 in [r for r in rows if r["model"] == "teacher" and r["N"] == 4]:
        s4 = find(rows, model="stage2", N=4, w=t4["w"], sampler="ddim")
        if s4:
            ratio(f"2: FID(teacher DDIM, 4 steps) >= 5 x FID(student, 4 steps) at w={t4['w']:g}",
                  t4, s4, 5.0, False)
    return sorted(out, key=lambda t: t["target"])


def plot(rows, ws, folder):
    """fid_vs_calls.png (one panel per w, log2 x) and fid_vs_is.png (the trade-off across w)."""
    fid_vs_calls(rows, ws, folder / "fid_vs_calls.png")
    fid_vs_is(rows, ws, folder / "fid_vs_is.png")


def fid_vs_calls(rows, ws, path):
    """FID (top) and KID (bottom) against network calls per image, one panel per w, one line per
    model and sampler (the training-free DPM-Solver++ beside DDIM and the students)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    series = [("teacher", "ddim", "guided teacher, DDIM"),
              ("stage1", "ddim", "stage-1 student, DDIM"),
              ("stage2", "ddim", "stage-2 students, DDIM"),
              ("stage2", "stochastic", "stage-2 students, stochastic"),
              ("teacher", "dpmpp2m", "guided teacher, DPM-Solver++(2M)")]
    floor = find(rows, model="data")
    fig, axes = plt.subplots(2, len(ws), figsize=(3.6 * len(ws), 6.4), sharey="row", squeeze=False)
    for i, metric in enumerate(["fid", "kid"]):  # top row FID, bottom row KID (unbiased)
        for ax, w in zip(axes[i], ws):
            for model, sampler, label in series:
                pts = sorted((r["calls"], r[metric]) for r in rows
                             if r["model"] == model and r["sampler"] == sampler and r["w"] == w)
                if pts:
                    ax.plot(*zip(*pts), "o-", ms=3, label=label)
            if floor:
                ax.axhline(floor[metric], color="grey", ls="--", lw=1,
                           label="data (the floor at this n)")
            ax.set(yscale="log" if metric == "fid" else "linear", title=f"w = {w:g}")
            ax.set_xscale("log", base=2)
        axes[i][0].set_ylabel(metric.upper())
    for ax in axes[1]:
        ax.set_xlabel("network calls per image")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def fid_vs_is(rows, ws, path, title="quality / diversity across w (labels: w)"):
    """The paper's trade-off figure: FID (x) against IS (y), one curve per model, points by w."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import StrMethodFormatter
    fig, ax = plt.subplots(figsize=(5, 4))
    for model, sampler, N, label in [("teacher", "ddim", None, "teacher DDIM"),
                                     ("stage1", "ddim", None, "stage-1 DDIM"),
                                     ("stage2", "ddim", 4, "student 4 steps"),
                                     ("stage2", "stochastic", 4,
                                     "student 4 steps, stochastic"),
                                     ("stage2", "ddim", 1, "student 1 step"),
                                     ("teacher", "ddim", 4, "teacher DDIM 4 steps")]:
        cand = [r for r in rows if r["model"] == model and r["sampler"] == sampler]
        if N is None:  # the largest N that ran at every w
            w_of = lambda n: {r["w"] for r in cand if r["N"] == n}  # noqa: E731
            full = [n for n in {r["N"] for r in cand} if len(w_of(n)) == len(ws)]
            N, label = (max(full), f"{label} {max(full)} steps") if full else (None, label)
        pts = sorted((r["w"], r["fid"], r["inception_score"]) for r in cand if r["N"] == N)
        if len(pts) > 1:
            ax.plot([p[1] for p in pts], [p[2] for p in pts], "o-", ms=3, label=label)
            for w, fid, is_ in pts:
                ax.annotate(f"{w:g}", (fid, is_), fontsize=6)
    ax.set(xlabel="FID (lower is better)", xscale="log",
           ylabel="IS, EfficientNet-Lite0 (higher is better)",
           title=title)
    ax.xaxis.set_major_formatter(StrMethodFormatter("{x:g}"))  # 100, not 10^2
    ax.xaxis.set_minor_formatter(StrMethodFormatter("{x:g}"))
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def goal_cell(v, ok, bounds):
    """'0.84 met': more decimals where 2 would round onto a goal's bound (0.798 missed, 0.7996
    missed, not 0.80)."""
    digits = 2
    while digits < 4 and any(abs(v - b) < 0.5 * 10 ** -digits for b in bounds):
        digits += 1
    return f"{v:.{digits}f} {'met' if ok else 'missed'}"


def obedience_table(result):
    """Markdown: G per w (all t, then per bin) and R per student and w, each against its goal."""
    t_bins = result["protocol"]["t_bins"]
    bins = " | ".join(f"t in [{lo:g}, {hi:g})" for lo, hi in t_bins)
    lines = [f"| w | G, all t (goal >= 0.9) | {bins} |", "|" + "---|" * (2 + len(t_bins))]
    for w, v in result["G"].items():
        lines.append(f"| {float(w):g} | {goal_cell(v[0], v[0] >= 0.9, [0.9])} | "
                     + " | ".join(f"{g:.2f}" for g in v[1:]) + " |")
    ws = result["protocol"]["R_w"]
    lines += ["", "| model | " + " | ".join(f"R(w = {w:g})" for w in ws) + " |",
              "|" + "---|" * (1 + len(ws))]
    for name, r in result["R"].items():
        lines.append(f"| {name} | " + " | ".join(
            goal_cell(v, 0.8 <= v <= 1.2, [0.8, 1.2]) for v in r.values()) + " |")
    return "\n".join(lines) + "\n"


def write_report(folder, results):
    """report.md from results.json's dict: protocol, targets, the table; plots and grids beside."""
    proto, rows, targets = results["protocol"], results["rows"], results["targets"]
    name = f"{proto['features']}-{proto['feature_size']}"
    is_net = proto.get("is_features", f"effnet at {proto['feature_size']} px")
    comparable = ("the standard FID Inception: comparable with pytorch-fid at the same n"
                  if proto["features"] == "inception"
                  else "effnet numbers are not comparable with published FIDs")
    lines = [f"# Report: {folder.parent.name}", "",
             f"FID and KID use the **{name}** features ({comparable}; numbers are comparable "
             f"only with the same backend, feature size and n); IS uses {is_net}.", "",
             "Protocol: " + "; ".join(f"{k} = {v}" for k, v in proto.items()) + ".", "",
             results["plan"], "",
             f"Reference IS (the data itself): {results['reference_is']:.2f}.", "",
             "## Targets", "",
             "Judged on FID; the last column is the same ratio in KID, which has no "
             "small-sample bias (the data row's FID is far from 0 at this n; its KID is not).", "",
             "| target | measured | goal | passed | numbers | same ratio in KID |",
             "|---|---|---|---|---|---|"]
    for t in targets:
        passed = "yes" if t["passed"] else f"**no**, off by {t['off_by']:.0f} %"
        lines.append(f"| {t['target']} | {t['value']:.2f} | {t['goal']:g} | {passed} | "
                     f"{t['detail']} | "
                     f"{t['kid_value']:.2f} |")
    lines += ["", f"## All rows ({name}, n = {proto['n']} per row)", "",
              "| model | sampler | N | w | FID | KID x 1000 | IS (effnet) | network calls / image "
              "| ms / image |",
              "|---|---|---|---|---|---|---|---|---|"]
    order = {"data": 0, "data_ae": 1, "teacher": 2, "stage1": 3, "stage2": 4}
    for r in sorted(rows,
                    key=lambda r: (r["w"] if r["w"] is not None else -1, order[r["model"]],
                                   r["sampler"], -r["N"])):
        w = "-" if r["w"] is None else f"{r['w']:g}"
        lines.append(f"| {r['model']} | {r['sampler']} | {r['N']} | {w} | {r['fid']:.2f} | "
                     f"{1000 * r['kid']:.1f} | "
                     f"{r['inception_score']:.2f} | {r['calls']} | {r['ms_per_image']:.2f} |")
    if "obedience" in results:  # obedience.py: does each student follow w as the teacher does?
        lines += ["", "## Obeying w: G of stage 1 (per step), R of every student (samples)", "",
                  obedience_table(results["obedience"])]
    lines += ["", "![FID and KID vs network calls](fid_vs_calls.png)", "",
              "![FID vs IS across w](fid_vs_is.png)", "",
              "Sample grids (first two images of each class) for every row: `grids/`.", ""]
    (folder / "report.md").write_text("\n".join(lines))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", help="a results.json written by evaluate.py --run")
    args = parser.parse_args(argv)
    path = Path(args.results)
    try:
        results = json.loads(path.read_text())
        rows, ws = results["rows"], results["eval_w"]
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"{path}: not a results.json of evaluate.py --run "
                        f"({type(e).__name__}: {e})") from None
    results["targets"] = check_targets(rows, max(r["N"] for r in rows if r["model"] == "teacher"))
    plot(rows, ws, path.parent)
    write_report(path.parent, results)
    print(f"wrote {path.parent / 'report.md'}, fid_vs_calls.png, fid_vs_is.png")


if __name__ == "__main__":
    run_cli(main)
