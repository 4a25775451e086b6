"""Tables, target checks and the plot of a benchmark result document (see `bench.run`)."""

from __future__ import annotations

GIB = 1 << 30
MIB = 1 << 20
LABELS = {"mindspore": "MindSpore transform_checkpoints (1 proc)", "by_rank": "MindSpore by-rank (mpirun -n P)",
          "mpitrans": "mpitrans (mpirun -n P)", "floor": "I/O floor (cat + dd + sync)"}

# The targets, for scenario (a) at its largest size (~2.5 GiB of dp2·mp4 shards -> dp1·mp2).
SPEEDUP_MIN = 10.0
FLOOR_RATIO_MAX = 1.5
RSS_MAX_MIB = 512.0


def _ok_cases(doc: dict, key: str | None = None) -> list[dict]:
    return sorted((c for c in doc["cases"] if "error" not in c and (key is None or c["scenario"] == key)),
                  key=lambda c: c["source_bytes"])


def evaluate_targets(doc: dict) -> dict:
    cases = [c for c in _ok_cases(doc, "a") if "mpitrans" in c["contenders"]]
    if not cases:
        return {"note": "no scenario (a) case with mpitrans in this run"}
    big = cases[-1]
    mt = big["contenders"]["mpitrans"]
    out: dict = {"case": f"a @ {_gib(big['source_bytes'])} GiB"}
    for other in ("mindspore", "by_rank"):
        if other in big["contenders"]:
            o = big["contenders"][other]
            speed = o["wall_median"] / mt["wall_median"]
            cmd_only = round(o["cmd_median"] / mt["cmd_median"], 2)
            out[f"speedup_vs_{other}"] = {"value": round(speed, 2), "cmd_only": cmd_only,
                                          "best_runs": round(min(o["wall_s"]) / min(mt["wall_s"]), 2),
                                          "target": f">= {SPEEDUP_MIN:g}", "met": speed >= SPEEDUP_MIN}
    if "floor" in big["contenders"]:
        fl = big["contenders"]["floor"]
        ratio = mt["wall_median"] / fl["wall_median"]
        cmd_only = round(mt["cmd_median"] / fl["cmd_median"], 2)
        out["mpitrans_over_floor"] = {"value": round(ratio, 2), "cmd_only": cmd_only,
                                      "best_runs": round(min(mt["wall_s"]) / min(fl["wall_s"]), 2),
                                      "target": f"<= {FLOOR_RATIO_MAX:g}", "met": ratio <= FLOOR_RATIO_MAX}
    rss = [(c["source_bytes"] / GIB, c["contenders"]["mpitrans"]["peak_rss_mib"]) for c in cases]
    peak = max(r for _, r in rss)
    out["mpitrans_peak_rss_mib"] = {"value": peak, "by_size_gib": [[round(s, 3), r] for s, r in rss],
                                    "target": f"<= {RSS_MAX_MIB:g}", "met": peak <= RSS_MAX_MIB}
    lo, hi = min(r for _, r in rss), peak
    flat = hi - lo <= max(64.0, 0.25 * lo)
    out["mpitrans_rss_flat"] = {"value": round(hi - lo, 1), "sizes": len(rss),
                                "target": "growth <= max(64 MiB, 25%) from smallest to largest size",
                                "met": flat if len(rss) > 1 else None}
    return out


def _gib(n) -> str:
    return "-" if n is None else f"{n / GIB:.3f}" if n < 0.1 * GIB else f"{n / GIB:.2f}"


def _verdict(chk: dict) -> str:
    return {True: "identical", False: "NOT identical"}.get(chk.get("identical"), "unchecked")


def markdown_table(doc: dict) -> str:
    m = doc["machine"]
    lines = [f"Machine: {m.get('cores')} cores, {m.get('mem_gib')} GiB RAM ({m.get('cpu', '')}); "
             f"MindSpore {m.get('mindspore')}, mpitrans {m.get('mpitrans')} ({m.get('commit', '?')}), "
             f"{doc['args']['repeats']} repeat(s). wall = median of command + sync, best = fastest repeat, "
             f"cmd = median of the command alone; RSS = largest process.", "",
             "| case | source GiB | P | contender | wall s | best s | cmd s | peak RSS MiB | read GiB | sent GiB "
             "| written GiB | mpitrans ÷ this (wall) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in doc["cases"]:
        if "error" in c:
            lines.append(f"| {c['scenario']} | {c['size_gib']:g} (requested) | | FAILED: "
                         f"{c['error'].splitlines()[0][:120]} | | | | | | | | |")
            continue
        mt = c["contenders"].get("mpitrans")
        for name, e in c["contenders"].items():
            if "wall_median" not in e:
                lines.append(f"| {c['scenario']} | {_gib(c['source_bytes'])} | {c['procs']} | {name} | FAILED: "
                             f"{e.get('error', '?')[:160]} | | | | | | | |")
                continue
            ratio = "" if not mt or name == "mpitrans" else f"{mt['wall_median'] / e['wall_median']:.3f}"
            read = e.get("bytes_read", e.get("rchar"))
            written = e.get("bytes_written", e.get("wchar"))
            rss = "-" if name == "floor" else f"{e['peak_rss_mib']:.0f}"
            lines.append(f"| {c['scenario']} | {_gib(c['source_bytes'])} | {c['procs']} | {name} "
                         f"| {e['wall_median']:.2f} | {min(e['wall_s']):.2f} | {e['cmd_median']:.2f} | {rss} "
                         f"| {_gib(read)} | {_gib(e.get('bytes_sent'))} | {_gib(written)} | {ratio} |")
    checks = []
    for c in doc["cases"]:
        if "error" in c:
            continue
        for who, chk in c["checks"].items():
            checks.append(f"{c['scenario']}@{_gib(c['source_bytes'])}G {who}: {_verdict(chk)} "
                          f"({chk.get('files', 0)} files)")
    lines += ["", "Byte checks against mindspore.transform_checkpoints: " + ("; ".join(checks) or "none")]
    st = [f"{c['scenario']}@{_gib(c['source_bytes'])}G: "
          + ", ".join(f"{k.split('/')[1]} {v:.3f}" for k, v in c["ratios"].items() if k.startswith("mpitrans_st/"))
          for c in doc["cases"] if "error" not in c and any(k.startswith("mpitrans_st/") for k in c.get("ratios", {}))]
    if st:
        lines += ["", "Safetensors row (mpitrans_st: the same bytes as safetensors sources and targets), its wall "
                  "time over each other row's: " + "; ".join(st)]
    starts = [f"{c['scenario']}@{_gib(c['source_bytes'])}G P={c['procs']}: "
              f"{c['diagnostics']['mpi_startup_median']:.2f} s"
              for c in doc["cases"] if "error" not in c and "mpi_startup_median" in c.get("diagnostics", {})]
    if starts:
        lines += ["", "Startup alone (mpirun + P Pythons importing mpitrans + MPI_Init + a barrier): "
                  + "; ".join(starts)]
    t = doc.get("targets") or {}
    if "case" in t:
        lines += ["", f"Targets ({t['case']}):"]
        for k, v in t.items():
            if isinstance(v, dict):
                met = {True: "met", False: "MISSED", None: "n/a"}[v["met"]]
                extra = f" (command only: {v['cmd_only']}; fastest runs: {v['best_runs']})" if "cmd_only" in v else ""
                lines.append(f"- {k}: {v['value']}{extra}, target {v['target']}: **{met}**")
    return "\n".join(lines)


def plot(doc: dict, path: str) -> str | None:
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    from bench.layouts import SCENARIOS

    keys = sorted({c["scenario"] for c in _ok_cases(doc)})
    if not keys:
        return None
    cols = min(2, len(keys))
    rows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols, 4.6 * rows), squeeze=False)
    markers = {"mindspore": "o", "by_rank": "s", "mpitrans": "D", "floor": "^"}
    plain = FuncFormatter(lambda v, _pos: f"{v:g}")
    for i, key in enumerate(keys):
        ax = axes[i // cols][i % cols]
        cases = _ok_cases(doc, key)
        sizes = [c["source_bytes"] / GIB for c in cases]
        for name in LABELS:
            pts = [(c["source_bytes"] / GIB, c["contenders"][name]["wall_median"]) for c in cases
                   if name in c["contenders"]]
            if pts:
                ax.plot([x for x, _ in pts], [y for _, y in pts], marker=markers[name], label=LABELS[name])
                for x, y in pts:
                    ax.annotate(f"{y:.1f}", (x, y), textcoords="offset points", xytext=(6, -3), fontsize=7)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(min(sizes) / 1.6, max(sizes) * 1.6)
        ax.set_xticks(sizes)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:.2f}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("source shards (GiB)")
        ax.set_ylabel("wall seconds (median, incl. sync)")
        short = SCENARIOS[key].short if key in SCENARIOS else cases[0]["title"]
        ax.set_title(f"({key}) {short}, P={cases[0]['procs']}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    for j in range(len(keys), rows * cols):
        axes[j // cols][j % cols].set_visible(False)
    m = doc["machine"]
    fig.suptitle(f"mpitrans vs MindSpore — {m.get('cores')} cores, {m.get('mem_gib')} GiB RAM, "
                 f"MindSpore {m.get('mindspore')}, mpitrans {m.get('commit', '')}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
