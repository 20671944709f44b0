#!/usr/bin/python3
"""Recall/QPS curves, as ann-benchmarks draws them, from the JSON lines of
bench/vecidx-bench and bench/vecidx-compare.

    bench/plot.py [options] OUT.png FILE.jsonl...      (FILE "-": stdin)

x is recall@k, y queries per second on a log scale; one curve per library
and configuration (lib, index, storage, build parameters, search mode and
threads, filter), its points in sweep order and labelled with their ef or
nprobe. Lines that are no sweep point, without "param" or "qps" (the stall
scenarios' lines, vecidx-ab's new/old ratio lines), are skipped with a
note; a line that is not a JSON object, or a sweep point whose qps or
recall_at_K is missing or not a number, is an error.

Needs matplotlib (Debian: apt-get install python3-matplotlib) in the Python
that runs it; the #! line names Debian's /usr/bin/python3. Exit status: 0
with the PNG written, 1 for bad input (or a PNG it cannot write), 2 for bad
options, 3 without matplotlib. See bench/README.md, "Plots".
"""

import argparse
import json
import math
import re
import sys

PROG = "bench/plot.py"

# Markers by library, so a curve's library shows without the legend.
MARKERS = {"vecidx": "o", "hnswlib": "s", "faiss": "^"}

RECALL_KEY = re.compile(r"^recall_at_([0-9]+)$")
SWEEP = re.compile(r"^(ef|nprobe)=([0-9]+)$")


class InputError(Exception):
    pass


def note(msg):
    print("%s: %s" % (PROG, msg), file=sys.stderr)


def read_lines(path):
    """(where, text) of every non-blank line of path ("-": stdin)."""
    try:
        if path == "-":
            f = sys.stdin
        else:
            f = open(path, encoding="utf-8")
    except OSError as e:
        raise InputError("%s: %s" % (path, e.strerror))
    with f:
        try:
            for i, line in enumerate(f, 1):
                if line.strip():
                    yield "%s:%d" % ("<stdin>" if path == "-" else path, i), line
        except UnicodeDecodeError:
            raise InputError("%s: not UTF-8 text" % path)


def number(where, obj, key):
    v = obj.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise InputError("%s: \"%s\" is %s, not a number" % (where, key, json.dumps(v)))
    return float(v)


def matches(obj, where_args):
    for key, value in where_args:
        v = obj.get(key)
        if isinstance(v, bool):
            v = "true" if v else "false"
        if v is None or str(v) != value:
            return False
    return True


def curve_key(obj):
    """The legend label of the configuration a point belongs to."""
    lib = str(obj.get("lib", "?"))
    index = str(obj.get("index", "?"))
    parts = [lib, index]
    storage = obj.get("storage")
    if storage:
        parts.append(str(storage))
    if obj.get("keep") is True:
        parts.append("keep, refine %s" % obj.get("refine"))
    build = obj.get("build")
    if build:
        parts.append(str(build))
    mode = obj.get("mode")
    threads = obj.get("threads")
    if mode == "batch":
        parts.append("batch, %s threads" % threads)
    elif threads not in (None, 1):
        parts.append("%s threads" % threads)
    if "selectivity" in obj:
        parts.append(
            "filter %s %s" % (obj.get("filter_form", "?"), obj.get("selectivity"))
        )
    label = " ".join(parts[:2])
    if len(parts) > 2:
        label += " (" + ", ".join(parts[2:]) + ")"
    return label


def load(paths, where_args):
    """Curves {label: {param: (recall, qps, nq * k)}} in first-seen order
    (nq * k None if the line has no nq), and what the title needs: the data
    sets {name: first line}, the k of the recall keys and the (mode,
    threads) of the lines."""
    points = []
    datasets = {}
    ks = set()
    modes = set()
    skipped = 0
    replaced = 0
    for path in paths:
        for where, text in read_lines(path):
            try:
                obj = json.loads(text)
            except ValueError as e:
                raise InputError(
                    "%s: not a JSON line (%s): %s" % (where, e, text.strip()[:80])
                )
            if not isinstance(obj, dict):
                raise InputError(
                    "%s: not a JSON object: %s" % (where, text.strip()[:80])
                )
            if "param" not in obj or "qps" not in obj or "scenario" in obj:
                skipped += 1
                continue
            if not matches(obj, where_args):
                continue
            rkeys = [k for k in obj if RECALL_KEY.match(k)]
            if len(rkeys) != 1:
                raise InputError("%s: a sweep line needs one recall_at_K key" % where)
            k = int(RECALL_KEY.match(rkeys[0]).group(1))
            ks.add(k)
            recall = number(where, obj, rkeys[0])
            qps = number(where, obj, "qps")
            if not 0 <= recall <= 1:
                raise InputError("%s: recall %g outside [0, 1]" % (where, recall))
            if qps <= 0:
                raise InputError("%s: qps %g is not above 0 (log scale)" % (where, qps))
            ds = str(obj.get("dataset", "?"))
            datasets.setdefault(ds, obj)
            modes.add((obj.get("mode"), obj.get("threads")))
            nq = obj.get("nq")
            slots = nq * k if isinstance(nq, int) and nq > 0 else None
            points.append(
                (ds, curve_key(obj), str(obj["param"]), (recall, qps, slots))
            )
    curves = {}
    for ds, label, param, point in points:
        if len(datasets) > 1:
            label = ds + ": " + label
        pts = curves.setdefault(label, {})
        if param in pts:
            replaced += 1
        pts[param] = point
    if skipped:
        note("%d line(s) without a sweep point skipped" % skipped)
    if replaced:
        note("%d point(s) given again: the later line counts" % replaced)
    if not curves:
        raise InputError("no sweep points to plot in %s" % " ".join(paths))
    return curves, {"datasets": datasets, "ks": ks, "modes": modes}


def sweep_order(param):
    m = SWEEP.match(param)
    return (0, int(m.group(2))) if m else (1, 0)


def title_of(info):
    datasets, ks, modes = info["datasets"], info["ks"], info["modes"]
    if len(datasets) == 1:
        name, obj = next(iter(datasets.items()))
        t = "%s (n=%s, dim=%s, %s)" % (
            name,
            obj.get("n", "?"),
            obj.get("dim", "?"),
            obj.get("metric", "?"),
        )
    else:
        t = ", ".join(datasets)
    t += ": recall@%s against queries per second" % "/".join(map(str, sorted(ks)))
    if len(modes) == 1:
        mode, threads = next(iter(modes))
        if mode in ("single", "batch") and isinstance(threads, int):
            t += ", %s on %d thread%s" % (
                "single queries" if mode == "single" else "batches",
                threads,
                "" if threads == 1 else "s",
            )
    return t


def plot(out, curves, info, args):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError as e:
        note(
            "matplotlib is not available to %s (%s). On Debian: "
            "apt-get install python3-matplotlib, then run the script as "
            "bench/plot.py or with /usr/bin/python3" % (sys.executable, e)
        )
        sys.exit(3)

    fig, ax = plt.subplots(figsize=(args.width, args.height), dpi=args.dpi)
    allx = []
    clamped = 0
    for n, (label, pts) in enumerate(curves.items()):
        params = sorted(pts, key=sweep_order)
        xs = [pts[p][0] for p in params]
        ys = [pts[p][1] for p in params]
        if args.xscale == "logit":
            # The logit of 0 and 1 is infinite: such a recall is drawn half
            # a neighbour inside, 1/(2 nq k) from the end.
            for i, p in enumerate(params):
                half = 0.5 / pts[p][2] if pts[p][2] else 1e-6
                x = min(max(xs[i], half), 1 - half)
                clamped += x != xs[i]
                xs[i] = x
        allx += xs
        lib = label.split(": ")[-1].split(" ")[0]
        (line,) = ax.plot(
            xs, ys, marker=MARKERS.get(lib, "D"), markersize=4, linewidth=1.2,
            label=label,
            # the colours repeat after 10 curves; the line style then changes
            linestyle=("-", "--", ":", "-.")[n // 10 % 4],
        )
        if args.labels:
            for p, x, y in zip(params, xs, ys):
                m = SWEEP.match(p)
                ax.annotate(
                    m.group(2) if m else p, (x, y), textcoords="offset points",
                    xytext=(3, 3), fontsize=6, color=line.get_color(),
                )
    ax.set_yscale("log")
    # Plain numbers at 1, 2 and 5 times the powers of ten: a sweep spans
    # about one decade, which would otherwise get a single label.
    ticks = matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0))
    ax.yaxis.set_major_locator(ticks)
    ax.yaxis.set_major_formatter(
        matplotlib.ticker.FuncFormatter(lambda v, _: "{:,.0f}".format(v))
    )
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xscale(args.xscale)
    k = "/".join(map(str, sorted(info["ks"])))
    xlabel = "recall@" + k
    if args.xscale == "logit":
        xlabel += " (logit scale%s)" % (
            "; recall 1 drawn at 1 - 1/(2 nq k)" if clamped else ""
        )
    ax.set_xlabel(xlabel)
    ax.set_ylabel("queries per second (log scale)")
    ax.set_title(args.title or title_of(info), fontsize=9)
    if args.xscale == "linear":
        ax.set_xlim(max(0.0, min(allx) - 0.01), 1.002)
    else:
        lo = math.log(min(allx) / (1 - min(allx)))
        hi = math.log(max(allx) / (1 - max(allx)))
        pad = 0.05 * (hi - lo) + 0.05
        ax.set_xlim(1 / (1 + math.exp(pad - lo)), 1 / (1 + math.exp(-hi - pad)))
        ax.xaxis.set_major_formatter(
            matplotlib.ticker.FuncFormatter(lambda v, _: "{:.6g}".format(v))
        )
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        if clamped:
            note(
                "%d point(s) at recall 0 or 1 drawn 1/(2 nq k) inside, as "
                "the logit scale has no place for them" % clamped
            )
    ax.grid(True, which="both", linewidth=0.3, alpha=0.6)
    # ef, nprobe or both: what the numbers at the points are
    names = set()
    for pts in curves.values():
        names.update(m.group(1) for m in map(SWEEP.match, pts) if m)
    title = None
    if args.labels and names:
        title = "at the points: " + " / ".join(sorted(names))
    ax.legend(fontsize=7, title=title, title_fontsize=7, loc="best")
    fig.tight_layout()
    try:
        fig.savefig(out, format="png")
    except OSError as e:
        note("%s: %s" % (out, e.strerror))
        sys.exit(1)
    plt.close(fig)


def main(argv):
    ap = argparse.ArgumentParser(
        prog=PROG,
        description="Recall/QPS curves (PNG) from vecidx-bench and "
        "vecidx-compare JSON lines.",
    )
    ap.add_argument("out", metavar="OUT.png", help="the PNG to write")
    ap.add_argument(
        "files", metavar="FILE.jsonl", nargs="+", help='JSON lines ("-": stdin)'
    )
    ap.add_argument(
        "--where", metavar="KEY=VALUE", action="append", default=[],
        help="only lines whose KEY is VALUE (repeatable; e.g. index=hnsw)",
    )
    ap.add_argument("--title", help="plot title (default: the data set)")
    ap.add_argument(
        "--no-labels", dest="labels", action="store_false",
        help="no ef/nprobe labels at the points",
    )
    ap.add_argument(
        "--xscale", choices=("linear", "logit"), default="linear",
        help="recall axis: linear (default) or logit, which spreads recalls "
        "near 1 (a recall of 1 is then drawn at 1 - 1/(2 nq k))",
    )
    ap.add_argument("--width", type=float, default=8.0, help="inches (default 8)")
    ap.add_argument("--height", type=float, default=5.5, help="inches (default 5.5)")
    ap.add_argument("--dpi", type=int, default=100, help="default 100")
    args = ap.parse_args(argv)
    if not args.out.lower().endswith(".png"):
        ap.error("OUT must be a .png file: %s" % args.out)
    where_args = []
    for w in args.where:
        if "=" not in w:
            ap.error("--where takes KEY=VALUE: %s" % w)
        where_args.append(tuple(w.split("=", 1)))
    try:
        curves, info = load(args.files, where_args)
    except InputError as e:
        note(str(e))
        return 1
    plot(args.out, curves, info, args)
    npts = sum(len(p) for p in curves.values())
    note("%s: %d curve(s), %d point(s)" % (args.out, len(curves), npts))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
