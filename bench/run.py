"""Benchmark the reactor against what this machine can physically do, in one run.

    python bench/run.py            full run (a few minutes)
    python bench/run.py --quick    smaller workloads, one repetition (under a minute)

Starts RabbitMQ and SecantusDB (the MongoDB-wire server) through scripts/services.sh, builds a fixed seeded workload, and
measures in the same run: the broker ceiling (raw pika), the store ceilings (raw pymongo and
sqlite3 compare-and-set loops), ``reactor consume`` end to end on both stores (one commit per
message and, when available, group commit; on SQLite also with the pipeline in the consumer's
own process, ``pipeline_process: false``), publish→commit latency at half the measured
maximum, the pipeline's CPU per message, ``reactor invoke`` cold start beside ``python -c
pass``, and the consumer's peak RSS. Prints a table, then one JSON line.

The machine is shared and noisy: figures are medians of interleaved repetitions, and only
ratios measured within one run should be compared across runs.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import limits  # noqa: E402
import reactor_runs as runs  # noqa: E402
from workload import Workload, body  # noqa: E402

PREFETCH = 100  # the consumer's default prefetch (config key ``prefetch``)
# ``reactor consume --processes`` of the scaled-out run: one per core (a process is bound by
# its interpreter lock, so a core each is the most it uses), on as many partitions.
PROCESSES = max(2, os.cpu_count() or 2)

# Workload sizes per profile. Every ratio compares runs on the same workload; a MongoDB-wire
# commit (majority, journaled: a fsync) costs about a millisecond, so its workload is smaller.
PROFILES = {
    "full": dict(sqlite_jobs=200, mongo_jobs=100, per_job=25, memory_jobs=4000,
                 memory_mark=10_000, reps=3, invoke_runs=7, cpu_reps=7, latency_s=15),
    "quick": dict(sqlite_jobs=80, mongo_jobs=40, per_job=10, memory_jobs=300,
                  memory_mark=300, reps=1, invoke_runs=3, cpu_reps=3, latency_s=4),
}


def start_services() -> dict[str, str]:
    """``scripts/services.sh start``: the exported MONGODB_URI and AMQP_URL."""
    out = subprocess.run(["bash", str(ROOT / "scripts" / "services.sh"), "start"],
                         capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        sys.exit(f"bench: scripts/services.sh start failed: {out.stderr.strip()[-600:]}")
    env = {}
    for line in out.stdout.splitlines():
        if line.startswith("export ") and "=" in line:
            k, v = line[len("export "):].split("=", 1)
            env[k] = v.strip("'\"")
    return env


def group_commit_options() -> dict | None:
    """Configuration that switches group commit on, if this reactor has it."""
    from reactor.config import KEYS_BY_NAME

    if "batch_size" not in KEYS_BY_NAME:
        return None
    return {"batch_size": PREFETCH // 2}


def one_by_one_options() -> dict:
    from reactor.config import KEYS_BY_NAME

    return {"batch_size": 1} if "batch_size" in KEYS_BY_NAME else {}


def machine() -> dict:
    """Cores, load and what else was busy, for the record."""
    load = os.getloadavg()
    return {"cores": os.cpu_count(), "load_1m": round(load[0], 2), "load_5m": round(load[1], 2),
            "python": platform.python_version(), "host": platform.node()}


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small workloads, one repetition")
    parser.add_argument("--seed", type=int, default=20261129, help="workload seed")
    parser.add_argument("--skip-memory", action="store_true", help="leave out the RSS run")
    args = parser.parse_args()
    profile = PROFILES["quick" if args.quick else "full"]
    started = time.monotonic()
    info = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": "python bench/run.py" + (" --quick" if args.quick else ""),
            "machine_start": machine()}
    services = start_services()
    amqp, mongo = services["AMQP_URL"], services["MONGODB_URI"]
    tag = f"{os.getpid():x}{int(time.time()) % 100000:x}"
    sq = Workload.build(profile["sqlite_jobs"], profile["per_job"], args.seed, tag + "s")
    mg = Workload.build(profile["mongo_jobs"], profile["per_job"], args.seed, tag + "m")
    group = group_commit_options()
    one = one_by_one_options()
    modes = {"one": one, **({"group": group} if group else {})}
    r: dict[str, list[float]] = {}

    def add(name: str, value: float) -> None:
        r.setdefault(name, []).append(value)

    with tempfile.TemporaryDirectory(prefix="reactor-bench-") as tmp:
        work = Path(tmp)
        sq_bodies = [body(e, "107" + "0" * 5 + "-0000-5000-8000-000000000000", "t" * 32)
                     for e in sq.events]
        mg_bodies = sq_bodies[:len(mg)]
        # First, while nothing else of the benchmark runs: the in-process CPU cost is the one
        # figure that other processes' load (RabbitMQ and SecantusDB still settling after a
        # run) would distort through the shared caches of the two vCPUs.
        log("CPU per message (in-process)")
        cpu = runs.cpu_per_message(f"sqlite:///{work / 'cpu.db'}", sq, profile["cpu_reps"])
        for rep in range(profile["reps"]):
            log(f"repetition {rep + 1}/{profile['reps']}")
            add("broker_ack_each", limits.broker_ceiling(amqp, sq_bodies, PREFETCH, 1))
            add("broker_ack_batch", limits.broker_ceiling(amqp, sq_bodies, PREFETCH,
                                                          (group or {}).get("batch_size", 50)))
            add("store_sqlite", limits.sqlite_ceiling(str(work / f"raw-{rep}.db"), sq, sq_bodies))
            add("store_mongo", limits.mongo_ceiling(mongo, f"benchraw{tag}{rep}", mg, mg_bodies))
            add("store_mongo_bulk", limits.mongo_bulk_ceiling(
                mongo, f"benchbulk{tag}{rep}", mg, mg_bodies, (group or {}).get("batch_size", 50)))
            for mode, options in modes.items():
                for kind, wl in (("sqlite", sq), ("mongo", mg)):
                    log(f"  end to end: {kind}, {mode}")
                    setup = runs.Setup(kind, amqp, work, mongo, options)
                    add(f"e2e_{kind}_{mode}", runs.end_to_end(setup, wl)["msgs_s"])
            if _has_pipeline_process():
                # The same on the embedded store with the pipeline in the consumer's process:
                # what the child process (the default) gains.
                for mode, options in modes.items():
                    log(f"  end to end: sqlite, {mode}, pipeline in-process")
                    setup = runs.Setup("sqlite", amqp, work, mongo,
                                       {**options, "pipeline_process": False})
                    add(f"e2e_sqlite_{mode}_inproc", runs.end_to_end(setup, sq)["msgs_s"])
            if group:
                log(f"  end to end: sqlite, group, {PROCESSES} processes")
                setup = runs.Setup("sqlite", amqp, work, mongo, {**group, "partitions": PROCESSES})
                add("e2e_sqlite_procs", runs.end_to_end(setup, sq, PROCESSES)["msgs_s"])
        log("latency at half the measured maximum")
        latency = {}
        for mode, options in modes.items():
            for kind, wl_jobs in (("sqlite", profile["sqlite_jobs"]),
                                  ("mongo", profile["mongo_jobs"])):
                rate = median(r[f"e2e_{kind}_{mode}"]) / 2
                count = max(20, min(int(rate * profile["latency_s"]), wl_jobs * profile["per_job"]))
                jobs = max(1, min(wl_jobs, count // profile["per_job"]))
                wl = Workload.build(jobs, profile["per_job"], args.seed + 1, tag + f"l{kind}{mode}")
                latency[f"{kind}_{mode}"] = runs.latency(runs.Setup(kind, amqp, work, mongo,
                                                                    options), wl, rate)
        log("cold start")
        cold = runs.cold_start(work, profile["invoke_runs"])
        mem = None
        if not args.skip_memory:
            default_mode = "group" if group and _group_is_default() else "one"
            mwl = Workload.build(profile["memory_jobs"], profile["per_job"], args.seed + 2,
                                 tag + "mem")
            log(f"memory: {len(mwl)} messages, {default_mode} mode")
            mem = runs.memory(runs.Setup("sqlite", amqp, work, mongo, modes[default_mode]), mwl,
                              profile["memory_mark"])
            mem["messages"] = len(mwl)
            mem["mode"] = default_mode
    info["machine_end"] = machine()
    info["seconds"] = round(time.monotonic() - started, 1)
    report(info, profile, r, latency, cpu, cold, mem, sq, mg, bool(group))
    return 0


def _has_pipeline_process() -> bool:
    from reactor.config import KEYS_BY_NAME

    return "pipeline_process" in KEYS_BY_NAME


def _group_is_default() -> bool:
    from reactor.config import KEYS_BY_NAME

    return KEYS_BY_NAME["batch_size"].default > 1


def report(info, profile, r, latency, cpu, cold, mem, sq, mg, has_group) -> None:
    """Print the table, then the JSON line."""
    m = {k: median(v) for k, v in r.items()}
    default_mode = "group" if has_group and _group_is_default() else "one"
    broker_for = {"one": m["broker_ack_each"], "group": m["broker_ack_batch"]}

    def ratio(kind: str, mode: str) -> float:
        return m[f"e2e_{kind}_{mode}"] / min(broker_for[mode], m[f"store_{kind}"])

    rows = [
        ("workload", f"sqlite {sq.jobs}×{sq.per_job}, mongo {mg.jobs}×{mg.per_job} "
                     f"events of ~1 KB, seed {sq.seed}", ""),
        ("broker ceiling, ack each (p100)", f"{m['broker_ack_each']:,.0f} msgs/s", "raw pika"),
        ("broker ceiling, multiple-ack", f"{m['broker_ack_batch']:,.0f} msgs/s", "raw pika"),
        ("store ceiling, embedded (sqlite)", f"{m['store_sqlite']:,.0f} ops/s",
         "raw sqlite3 CAS loop"),
        ("store ceiling, MongoDB-wire", f"{m['store_mongo']:,.0f} ops/s",
         "raw pymongo CAS loop (majority, journaled)"),
        ("  same as bulk writes", f"{m['store_mongo_bulk']:,.0f} ops/s",
         f"{m['store_mongo_bulk'] / m['store_mongo']:.2f}× the loop; raw bulk_write of "
         f"{(group_commit_options() or {}).get('batch_size', 50)} CAS"),
    ]
    for mode in ("one", "group"):
        if f"e2e_sqlite_{mode}" not in m:
            continue
        label = "one commit/msg" if mode == "one" else "group commit"
        for kind in ("sqlite", "mongo"):
            bulk = (f"; vs bulk writes {m['e2e_mongo_group'] / m['store_mongo_bulk']:.2f}×"
                    if (kind, mode) == ("mongo", "group") else "")
            rows.append((f"e2e {kind}, {label}", f"{m[f'e2e_{kind}_{mode}']:,.0f} msgs/s",
                         f"ratio vs limit {ratio(kind, mode):.2f}; vs store ceiling "
                         f"{m[f'e2e_{kind}_{mode}'] / m[f'store_{kind}']:.2f}×{bulk}"))
            inproc = m.get(f"e2e_{kind}_{mode}_inproc")
            if inproc:
                rows.append((f"  same, pipeline in-process", f"{inproc:,.0f} msgs/s",
                             f"pipeline_process: false; vs store ceiling "
                             f"{inproc / m[f'store_{kind}']:.2f}×"))
            lat = latency[f"{kind}_{mode}"]
            rows.append((f"  latency {kind}, {label}", f"p50 {lat['p50_ms']:.1f} ms, p99 "
                         f"{lat['p99_ms']:.1f} ms", f"at {lat['rate']:,.0f} msgs/s, "
                         f"{lat['count']} msgs, from {lat['source']}"))
    if "e2e_sqlite_procs" in m:
        rows.append((f"e2e sqlite, group commit, {PROCESSES} processes",
                     f"{m['e2e_sqlite_procs']:,.0f} msgs/s",
                     f"vs store ceiling {m['e2e_sqlite_procs'] / m['store_sqlite']:.2f}×; "
                     f"reactor consume --processes {PROCESSES}, {PROCESSES} partitions"))
    rows += [
        ("CPU per message", f"{cpu['total']:.1f} µs", f"prepare {cpu['prepare']:.1f} + plan "
         f"{cpu['plan']:.1f} + update {cpu['update']:.1f}"),
        ("reactor invoke (cold start)", f"{cold['invoke_ms']:.0f} ms",
         f"python -c pass {cold['python_floor_ms']:.0f} ms; target < "
         f"{2.5 * cold['python_floor_ms'] + 150:.0f} ms"),
    ]
    if mem:
        rows.append(("consumer peak RSS", f"{mem['rss_first_mb']:.1f} MB → "
                     f"{mem['rss_last_mb']:.1f} MB", f"after {profile['memory_mark']:,} → "
                     f"{mem['messages']:,} msgs ({mem['mode']})"))
    width = max(len(a) for a, _, _ in rows)
    print(f"Reactor benchmark — {info['date']} — {info['command']} — "
          f"{info['machine_start']['cores']} cores, load {info['machine_start']['load_1m']} → "
          f"{info['machine_end']['load_1m']}, {info['seconds']} s")
    for a, b, c in rows:
        print(f"  {a:<{width}}  {b:<24} {c}")
    headline = "sqlite"  # the default (embedded) store
    fields = {
        "broker_ceiling_msgs_s": round(broker_for[default_mode]),
        "store_ceiling_ops_s": round(m[f"store_{headline}"]),
        "e2e_msgs_s": round(m[f"e2e_{headline}_{default_mode}"]),
        "ratio_vs_limit": round(ratio(headline, default_mode), 3),
        "p99_ms": round(latency[f"{headline}_{default_mode}"]["p99_ms"], 1),
        "cpu_us_per_msg": round(cpu["total"], 1),
        "invoke_ms": round(cold["invoke_ms"], 1),
        "python_floor_ms": round(cold["python_floor_ms"], 1),
        "rss_mb_10k": round(mem["rss_first_mb"], 1) if mem else None,
        "rss_mb_100k": round(mem["rss_last_mb"], 1) if mem else None,
        "default_mode": default_mode,
        "broker_ceiling_ack_each_msgs_s": round(m["broker_ack_each"]),
        "broker_ceiling_multiple_ack_msgs_s": round(m["broker_ack_batch"]),
        "store_ceiling_sqlite_ops_s": round(m["store_sqlite"]),
        "store_ceiling_mongo_ops_s": round(m["store_mongo"]),
        "store_ceiling_mongo_bulk_ops_s": round(m["store_mongo_bulk"]),
        **{f"e2e_{k}_{mode}_msgs_s": round(m[f"e2e_{k}_{mode}"])
           for mode in ("one", "group") for k in ("sqlite", "mongo") if f"e2e_{k}_{mode}" in m},
        **{f"ratio_{k}_{mode}": round(ratio(k, mode), 3)
           for mode in ("one", "group") for k in ("sqlite", "mongo") if f"e2e_{k}_{mode}" in m},
        **{f"e2e_sqlite_{mode}_inproc_msgs_s": round(m[f"e2e_sqlite_{mode}_inproc"])
           for mode in ("one", "group") if f"e2e_sqlite_{mode}_inproc" in m},
        **({"e2e_sqlite_group_processes_msgs_s": round(m["e2e_sqlite_procs"]),
            "ratio_sqlite_group_processes": round(m["e2e_sqlite_procs"] / min(
                broker_for["group"], m["store_sqlite"]), 3),
            "consumer_processes": PROCESSES} if "e2e_sqlite_procs" in m else {}),
        **{f"p99_ms_{k}": round(v["p99_ms"], 1) for k, v in latency.items()},
        **{f"p50_ms_{k}": round(v["p50_ms"], 1) for k, v in latency.items()},
        "cpu_us_breakdown": {k: round(v, 1) for k, v in cpu.items() if k != "total"},
        "memory_messages": (mem["messages"], profile["memory_mark"]) if mem else None,
        "reps": profile["reps"], "seconds": info["seconds"], "date": info["date"],
        "cores": info["machine_start"]["cores"],
        "load_1m": [info["machine_start"]["load_1m"], info["machine_end"]["load_1m"]],
    }
    print(json.dumps(fields, ensure_ascii=False))


if __name__ == "__main__":
    sys.exit(main())
