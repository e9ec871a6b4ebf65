"""End to end: every service as its own process, under faults, load and bad input.

    .venv/bin/python -m bench.bench_e2e            # the full run (MiniLM from var/registry)
    .venv/bin/python -m bench.bench_e2e --short    # tiny model, one kill, no load (minutes)

The full run adds to the short one: every service killed, three Redis restarts and a
25 s Redis outage during the feed, Kafka overload, and the gRPC overload phase (unary
capacity measured, then twice that offered with a 2 s deadline); both publish the
forged model.versions records.

Prints a table and writes ``bench/results/e2e.json`` (--short: ``e2e-short.json`` in its
work folder).
Exits non-zero when a bar is missed; the reasons are in ``failures``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from bench import report
from stack.system.run import SERVICES, RunConfig, run, short_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="the CI version")
    parser.add_argument("--registry", type=Path, default=Path("var/registry"))
    parser.add_argument(
        "--model",
        choices=("registry", "tiny"),
        help="tiny: the full schedule with a random tiny model (results stay in the work folder)",
    )
    parser.add_argument("--docs", type=int, help="documents in the fault phase")
    parser.add_argument("--rate", type=float, help="documents/s in the fault phase")
    parser.add_argument("--corrections", type=int)
    parser.add_argument("--load-s", type=float, help="seconds of overload (0: none)")
    parser.add_argument("--load-rate", type=float, help="documents/s offered under load")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--redis-outage-s", type=float, help="seconds of Redis outage (0: none)")
    parser.add_argument(
        "--capacity-s", type=float, help="seconds measuring gRPC capacity (0: no overload phase)"
    )
    parser.add_argument("--overload-s", type=float, help="seconds of gRPC overload")
    parser.add_argument("--work-dir", type=Path, help="default: a temporary folder")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="sentiflow-e2e-"))
    if args.short:
        config = short_config(work)
    else:
        config = RunConfig(
            work_dir=work,
            source_registry=args.registry,
            services=SERVICES,
            load_s=90.0,
            load_rate=250.0,
            redis_restarts=3,
            redis_outage_s=25.0,
            restart_after_forged=True,
            capacity_s=15.0,
            overload_s=20.0,
        )
    overrides = {
        "docs": args.docs,
        "rate": args.rate,
        "corrections": args.corrections,
        "load_s": args.load_s,
        "load_rate": args.load_rate,
        "seed": args.seed,
        "redis_outage_s": args.redis_outage_s,
        "capacity_s": args.capacity_s,
        "overload_s": args.overload_s,
        "model": args.model,
    }
    config = replace(config, **{k: v for k, v in overrides.items() if v is not None})
    started = time.monotonic()
    result = run(config)
    v = result.values
    v["wall_seconds"] = round(time.monotonic() - started, 1)
    v["command"] = "python -m bench.bench_e2e" + (" " + " ".join(argv or sys.argv[1:])).rstrip()
    v["failures"] = result.failures
    v["events"] = result.events
    v["config"] = {
        k: str(val) if isinstance(val, Path) else val
        for k, val in config.__dict__.items()
        if k != "work_dir"
    }
    if args.short or config.model == "tiny":
        # A smoke run: its numbers stay beside its logs; the committed ones are the full run's.
        path = work / ("e2e-short.json" if args.short else "e2e-tiny.json")
        path.write_text(json.dumps({**v, "machine": report.machine()}, indent=2, default=str))
    else:
        path = report.write("e2e", v)
    rows: list[tuple[str, object]] = [
        (key, v.get(key))
        for key in (
            "docs_in",
            "docs_scored",
            "docs_lost",
            "conflicting_labels",
            "transient_dead_letters",
            "forged_versions_served",
            "duplicate_examples",
            "duplicate_alerts",
            "alerts",
            "kills",
            "dlq_records",
            "bad_inputs_sent",
            "feedback_to_live_seconds",
            "max_lag",
            "overload_capacity_per_s",
            "overload_goodput_ratio",
            "overload_refused_fast_share",
            "overload_p99_ms",
            "wall_seconds",
        )
    ]
    rows.append(("redis_outage_s", v.get("faults", {}).get("redis_outage", {}).get("down_seconds")))
    rows.append(("redis_restarts", len(v.get("faults", {}).get("redis", []))))
    forged = v.get("forged", {})
    rows.append(("forged_refused", f"{forged.get('refused')}/{len(forged.get('records', []))}"))
    restart = v.get("restart_after_forged")
    if restart is not None:
        rows.append(("ready_after_forged_restart_s", restart.get("ready_after_s")))
    rows += [(f"peak_rss_mb.{k}", mb) for k, mb in v.get("peak_rss_mb", {}).items()]
    rows.append(("load_average_start", v.get("load_average_start")))
    rows.append(("load_average_end", v.get("load_average_end")))
    print(report.table(rows, "sentiflow end to end"))
    print(f"written to {path}")
    if result.failures:
        print("FAILED:\n  " + "\n  ".join(result.failures))
    if not args.keep and args.work_dir is None and not args.short:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"work folder (logs under logs/): {work}")
    print(json.dumps({"failures": result.failures}))
    return 1 if result.failures else 0


if __name__ == "__main__":
    sys.exit(main())
