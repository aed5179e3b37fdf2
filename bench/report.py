"""What bench/run.py prints, and the JSON it writes with ``--json``.

Backends are compared by the ratio of their req/s within one repetition
(median and range over repetitions): on this shared machine the req/s of
one backend move by up to about 27% between repetitions (the spread column),
while runs of the same repetition see the same machine. The targets are
those of issue 5; the scale target compares read latency on a table of
``--scale-rows`` rows to that on a table of the backend's own sessions.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
from pathlib import Path
from typing import Any

from counts import table as counts_table
from matrix import BASELINE, BLOCKS, RATIO_TO, Results
from micro import MICRO_PAIRS
from servers import BENCH

REPO = BENCH.parent

# (issue, what, block, backend, compared to, target): a backend's req/s over
# another's in the same repetition, at least. Issue 5's targets hold for
# pgstore and pgstore-prep (pgstore.prepare_statements = true, off by
# default); issue 24's for pgstore with default settings, the baseline's only
# with --baseline.
_ISSUE_5 = (
    ("untouched", "untouched/on", "cookie", 0.98),
    ("read", "read/on", "redis", 1.3),
    ("read", "read/on", "redis-lru", 1.3),
    ("read", "read/on", "floor", 0.95),
    ("write (sc off)", "write/off", "redis", 1.0),
    ("write (sc off)", "write/off", "redis-lru", 1.0),
    ("write (sc off)", "write/off", "floor", 0.9),
    ("write (sc on)", "write/on", "floor", 0.9),
)
TARGETS = (
    *(
        ("5", what, block, backend, other, target)
        for backend in ("pgstore", "pgstore-prep")
        for what, block, other, target in _ISSUE_5
    ),
    ("24", "untouched", "untouched/on", "pgstore", "floor", 0.98),
    ("24", "read", "read/on", "pgstore", "floor", 0.97),
    ("24", "write (sc on)", "write/on", "pgstore", "floor", 0.95),
    ("24", "write (sc off)", "write/off", "pgstore", "floor", 0.95),
    ("24", "read", "read/on", "pgstore", "redis", 1.3),
    ("24", "read", "read/on", "pgstore", "pgstore-base", 0.98),
    ("24", "write (sc on)", "write/on", "pgstore", "pgstore-base", 0.98),
    ("24", "write (sc off)", "write/off", "pgstore", "pgstore-base", 0.98),
)
SCALE_TARGET = 1.2  # big-table read latency over small-table, at most


def _spread(values: list[float]) -> float:
    """(max - min) / median, in percent."""
    return (max(values) - min(values)) / statistics.median(values) * 100


def _paired_ratio(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> tuple[float, float, float]:
    """Median, min and max over repetitions of a's req/s over b's (same repetition)."""
    ratios = [x["rps"] / y["rps"] for x, y in zip(a, b, strict=True)]
    return statistics.median(ratios), min(ratios), max(ratios)


def matrix_table(results: Results) -> tuple[str, dict[str, Any]]:
    """The side-by-side table, and every ratio as ``endpoint/sc/backend/other``:
    (median, min, max)."""
    header = (
        f"{'endpoint':9s} {'sc':3s} {'backend':12s} {'req/s':>6s} {'spread':>6s} {'min':>6s} {'max':>6s}"
        f" {'p50 ms':>6s} {'p99 ms':>6s} {'/cookie':>7s} {'/lean':>6s} {'/floor':>6s} {'/redis':>6s}"
        f" {'/r-lru':>6s}"
        + (f" {'/base':>6s}" if any(BASELINE in per for per in results.values()) else "")
        + f" {'others':>6s}"
    )
    lines = [header, "-" * len(header)]
    ratios: dict[str, Any] = {}
    for block in BLOCKS:
        endpoint, sync = block
        per = results[block]
        for backend in per:
            runs = per[backend]
            rps = [r["rps"] for r in runs]
            cells = []
            for other in RATIO_TO:
                median, low, high = _paired_ratio(runs, per[other])
                ratios[f"{endpoint}/{sync}/{backend}/{other}"] = (median, low, high)
                cells.append(f"{median:{7 if other == 'cookie' else 6}.2f}")
            if BASELINE in per:
                ratios[f"{endpoint}/{sync}/{backend}/{BASELINE}"] = _paired_ratio(runs, per[BASELINE])
                cells.append(f"{ratios[f'{endpoint}/{sync}/{backend}/{BASELINE}'][0]:6.2f}")
            errors = sum(r["errors"] for r in runs)
            lines.append(
                f"{endpoint:9s} {sync:3s} {backend:12s} {statistics.median(rps):6.0f} {_spread(rps):5.1f}%"
                f" {min(rps):6.0f} {max(rps):6.0f}"
                f" {statistics.median(r['p50_us'] for r in runs) / 1000:6.2f}"
                f" {statistics.median(r['p99_us'] for r in runs) / 1000:6.2f} "
                + " ".join(cells)
                + f" {max(r['foreign_cores'] for r in runs):6.2f}"
                + (f"  ({errors} errors)" if errors else "")
            )
        lines.append("")
    return "\n".join(lines), ratios


def targets(ratios: dict[str, Any], scale: dict[str, Any] | None) -> str:
    """One line per target: the median ratio, its range, met or missed by how
    much; a target whose backends did not run is left out."""
    lines = []
    for issue, what, block, backend, other, target in TARGETS:
        key = f"{block}/{backend}/{other}"
        if key not in ratios:
            continue
        median, low, high = ratios[key]
        verdict = "met" if median >= target else f"MISSED by {(target - median) / target * 100:.1f}%"
        label = f"#{issue} {what}: {backend} >= {target}x {other}"
        lines.append(f"  {label:52s} {median:5.2f}x (reps {low:.2f}-{high:.2f})  {verdict}")
    if scale:
        lines += _scale_targets(scale)
    return "\n".join(lines)


def _scale_targets(scale: dict[str, Any]) -> list[str]:
    small, big = f"{scale['small_rows']} rows", f"{scale['big_rows']} rows"
    inproc = scale["in_process"]
    ratio = inproc[big]["median_us"] / inproc[small]["median_us"]
    verdict = (
        "met" if ratio <= SCALE_TARGET else f"MISSED by {(ratio - SCALE_TARGET) / SCALE_TARGET * 100:.1f}%"
    )
    label = f"read latency {scale['big_rows']} / {scale['small_rows']} rows <= {SCALE_TARGET}"
    http = scale["http"]
    p50 = statistics.median(r["p50_us"] for r in http[big]) / statistics.median(
        r["p50_us"] for r in http[small]
    )
    return [
        f"  {label:47s} {ratio:5.2f}x (in-process load, median)  {verdict}",
        f"  {'  same, HTTP /read p50 through wrk':42s} {p50:5.2f}x",
    ]


def micro_table(micro: dict[str, Any]) -> str:
    """Median and p99 per operation, and the store's overhead over its statement."""
    lines = [f"{'operation':42s} {'median us':>10s} {'p99 us':>9s} {'overhead':>9s}"]
    for section, ops in micro.items():
        if section == "rounds":
            continue
        lines.append(f"{section}:")
        for name, row in ops.items():
            extra = ""
            if MICRO_PAIRS.get(name) in ops:
                extra = f"{row['median_us'] - ops[MICRO_PAIRS[name]]['median_us']:+8.1f}"
            lines.append(f"  {name:40s} {row['median_us']:10.1f} {row['p99_us']:9.1f} {extra:>9s}")
    return "\n".join(lines)


def scale_table(scale: dict[str, Any]) -> str:
    """In-process load latency and HTTP /read figures, small table then big."""
    lines = [f"table: {scale['big_rows']} rows is {scale['big_size']} (table + indexes)"]
    lines.append(
        f"{'rows':>10s} {'load median us':>15s} {'load p99 us':>12s}"
        f" {'req/s':>7s} {'p50 ms':>7s} {'p99 ms':>7s}"
    )
    for label, row in scale["in_process"].items():
        runs = scale["http"][label]
        lines.append(
            f"{label.split()[0]:>10s} {row['median_us']:15.1f} {row['p99_us']:12.1f}"
            f" {statistics.median(r['rps'] for r in runs):7.0f}"
            f" {statistics.median(r['p50_us'] for r in runs) / 1000:7.2f}"
            f" {statistics.median(r['p99_us'] for r in runs) / 1000:7.2f}"
        )
    listing = scale.get("listing")
    if listing:
        row = listing["sessions_of"]
        lines.append(
            f"one user's sessions (PGStore.sessions_of) among {scale['big_rows']} rows:"
            f" median {row['median_us']:.1f} us, p99 {row['p99_us']:.1f} us; its plan:"
        )
        lines += [f"  {line}" for line in listing["plan"]]
    return "\n".join(lines)


def _git(*args: str) -> str:
    done = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=30)
    return done.stdout.strip()


def export_package(ref: str, directory: Path) -> None:
    """Put the ``pyramid_pgstore`` package as it was at ``ref`` into
    ``directory`` (``git archive``: nothing else of the checkout changes)."""
    directory.mkdir(parents=True)
    command = ["git", "-C", str(REPO), "archive", ref, "pyramid_pgstore"]
    archive = subprocess.run(command, capture_output=True, check=True, timeout=60)
    subprocess.run(["tar", "-x", "-C", str(directory)], input=archive.stdout, check=True, timeout=60)


def describe_ref(ref: str) -> str:
    return _git("log", "-1", "--format=%h %s", ref)[:60]


def library_version() -> str:
    """The commit, and a digest of pyramid_pgstore/ when it differs from it:
    the library may be edited between runs, and figures must say which code ran."""
    try:
        head = _git("rev-parse", "--short", "HEAD")
        dirty = _git("status", "--porcelain", "pyramid_pgstore")
    except OSError:
        return "unknown (no git)"
    if not dirty:
        return f"commit {head}"
    digest = hashlib.sha256()
    for path in sorted((REPO / "pyramid_pgstore").rglob("*.py")):
        digest.update(path.read_bytes())
    return f"commit {head} + uncommitted changes (pyramid_pgstore/*.py sha256 {digest.hexdigest()[:12]})"


def print_header(args: argparse.Namespace, facts: dict[str, str], library: str) -> None:
    """How the run was made: load, servers, PostgreSQL and redis settings, code."""
    server = (
        f"gunicorn, {args.workers} sync workers"
        if args.server == "gunicorn"
        else f"waitress, {args.threads} threads"
    )
    print()
    print(
        f"{os.cpu_count()} cores; {server} per backend; wrk -t{args.wrk_threads} -c{args.connections},"
        f" {args.duration:g} s per run, {args.reps} repetitions, backends interleaved;"
        f" {args.sessions} sessions per backend"
    )
    print(
        f"PostgreSQL {facts['server_version']}: synchronous_commit {facts['synchronous_commit']} by default"
        f" (write also run with off), fsync {facts['fsync']}, wal_sync_method {facts['wal_sync_method']},"
        f" shared_buffers {facts['shared_buffers']}; redis: appendonly yes, appendfsync everysec, no RDB"
    )
    if "baseline" in facts:
        print(f"pgstore-base: pyramid_pgstore at {facts['baseline']}")
    print("req/s: median over repetitions; spread = (max - min) / median; p50/p99: wrk latency,")
    print("median over repetitions; /cookie /lean /floor /redis /r-lru /base: median over repetitions of the")
    print("req/s ratio measured in the same repetition (/base: to pgstore-base, with --baseline);")
    print("others: most cores that other processes on the machine used during any of the row's runs")
    print(f"(a run over {args.foreign_limit:g} is run again).")
    print(f"library measured: {library}")
    if args.pgstore_setting:
        print(f"pgstore ran with: {'; '.join(args.pgstore_setting)}")


def print_sections(
    results: Results | None,
    micro: dict[str, Any] | None,
    scale: dict[str, Any] | None,
    counts: dict[str, Any] | None = None,
) -> None:
    """The matrix with its targets, then the instruction counts, micro and
    scale: those that ran."""
    if results:
        table, ratios = matrix_table(results)
        print()
        print(table)
        print("targets (issues 5 and 24):")
        print(targets(ratios, scale))
    if counts:
        print()
        print(counts_table(counts))
    if micro:
        print()
        print(f"micro: one process, one connection, {micro['rounds']} rounds, operations interleaved")
        print(micro_table(micro))
    if scale:
        print()
        print("scale: the same sessions read from a small and a big table, interleaved")
        print(scale_table(scale))


def write_json(
    path: Path,
    args: argparse.Namespace,
    facts: dict[str, str],
    results: Results | None,
    micro: dict[str, Any] | None,
    scale: dict[str, Any] | None,
    counts: dict[str, Any] | None = None,
) -> None:
    """Every measurement, with the options and server settings it was made with."""
    blob = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "postgres": facts,
        "results": {f"{e}/{s}": per for (e, s), per in (results or {}).items()},
        "micro": micro,
        "scale": scale,
        "counts": counts,
    }
    path.write_text(json.dumps(blob, indent=1))
