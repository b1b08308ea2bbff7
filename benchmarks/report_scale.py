"""How long ``toolkit report`` takes for 1,000 runs, and how its start-up compares with a torch + Lightning import.

Makes N run logs from real ones: it trains two short digits runs (or takes the ``run-*.wandb`` files under
``--logs``) and re-encodes copies with distinct ablation identities (variant, seed, run id), so the report sees N
different runs of one ablation. Then it times, in this process, reading + tabulating (``runs_from_logs``,
``mark_counted``, ``aggregate``) and the whole ``build_report`` (tables and plots), and, side by side in fresh
processes, importing the report command vs importing torch, Lightning and timm.

    python benchmarks/report_scale.py [--runs 1000] [--variants 10] [--logs DIR] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

NAME = "scale"
METRICS = ["test/acc", "test/f1", "val/acc"]


def train_templates(folder: Path) -> list[Path]:
    """Two real ``toolkit fit`` runs on digits (3 epochs, the config's defaults); their logs are the templates."""
    from toolkit.lightning_cli import run_cli

    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    config = Path(__file__).resolve().parents[1] / "configs" / "digits.yaml"
    for seed in (0, 1):
        run_cli(
            [
                *("fit", "--config", str(config), "--trainer.default_root_dir", str(folder / f"t{seed}")),
                *("--test_after_fit", "true", "--seed_everything", str(seed), "--trainer.enable_progress_bar", "false"),
                *("--ablation.name", "template", "--ablation.variant", "full", "--ablation.seed", str(seed)),
            ]
        )
    import wandb

    wandb.teardown()  # run_cli's wandb.finish() can return before wandb-core has written the log
    return sorted(folder.glob("t*/wandb/offline-run-*/run-*.wandb"))


def encode_log(records: list, path: Path) -> None:
    """Write records in the W&B LevelDB log framing (the format ``toolkit.report.wandb_log`` documents)."""
    from toolkit.report.wandb_log import BLOCK_SIZE, CHUNK_HEADER, FILE_HEADER, FIRST, FULL, LAST, MIDDLE

    out = bytearray(FILE_HEADER)
    for record in records:
        data, first = record.SerializeToString(), True
        while True:
            left = BLOCK_SIZE - len(out) % BLOCK_SIZE
            if left < CHUNK_HEADER.size:
                out += bytes(left)
                continue
            chunk, data = data[: left - CHUNK_HEADER.size], data[left - CHUNK_HEADER.size :]
            kind = (FULL if not data else FIRST) if first else (LAST if not data else MIDDLE)
            out += CHUNK_HEADER.pack(zlib.crc32(chunk, zlib.crc32(bytes([kind]))), len(chunk), kind) + chunk
            first = False
            if not data:
                break
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(out))


def make_runs(templates: list[Path], root: Path, n_runs: int, n_variants: int) -> None:
    """N logs under ``root/scale/<variant>/seed<N>/`` whose records say ablation ``scale``, that variant and seed."""
    from toolkit.report.wandb_log import iter_records

    parsed = [list(iter_records(path)) for path in templates]
    for i in range(n_runs):
        variant, seed, run_id = f"v{i % n_variants}", i // n_variants, f"r{i:07d}"
        identity = json.dumps({"name": NAME, "variant": variant, "seed": seed})
        records = []
        for template in parsed[i % len(parsed)]:
            record = type(template)()
            record.CopyFrom(template)
            kind = record.WhichOneof("record_type")
            if kind == "run":
                record.run.run_id, record.run.run_group, record.run.job_type = run_id, NAME, variant
                del record.run.tags[:]
                record.run.tags.extend([variant, f"seed={seed}"])
            if kind in ("run", "config"):
                items = record.run.config.update if kind == "run" else record.config.update
                for item in items:
                    if item.key == "ablation":
                        item.value_json = identity
            records.append(record)
        encode_log(
            records, root / NAME / variant / f"seed{seed}" / "wandb" / f"offline-run-x-{run_id}" / f"run-{run_id}.wandb"
        )


def import_seconds(code: str, repeat: int) -> float:
    """Median wall time of ``python -c code`` in a fresh process."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--variants", type=int, default=10)
    parser.add_argument("--logs", type=Path, default=None, help="folder with real run-*.wandb logs to copy")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from toolkit.report.build import build_report
    from toolkit.report.sources import runs_from_logs
    from toolkit.report.table import aggregate, mark_counted

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        templates = sorted(args.logs.rglob("run-*.wandb")) if args.logs else train_templates(tmp / "templates")
        assert templates, f"no run-*.wandb under {args.logs}"
        start = time.perf_counter()
        make_runs(templates, tmp / "root", args.runs, args.variants)
        sizes = [p.stat().st_size for p in (tmp / "root").rglob("run-*.wandb")]
        print(f"made {len(sizes)} logs from {len(templates)} real ones ({statistics.mean(sizes) / 1024:.1f} KiB each, "
              f"{sum(sizes) / 2**20:.1f} MiB) in {time.perf_counter() - start:.1f} s")  # fmt: skip

        read, tab, full = [], [], []
        for i in range(args.repeat):
            start = time.perf_counter()
            runset = runs_from_logs(tmp / "root", NAME)
            read.append(time.perf_counter() - start)
            start = time.perf_counter()
            table = aggregate(mark_counted(runset.runs), METRICS, "v0")
            tab.append(time.perf_counter() - start)
            start = time.perf_counter()
            build_report(NAME, "v0", METRICS, root=tmp / "root", out=tmp / f"out{i}")
            full.append(time.perf_counter() - start)
        assert int(table["n"].sum()) == args.runs * len(METRICS), table
        per = 1000 / args.runs
        for label, times in (
            (f"read {args.runs} logs", read),
            ("tabulate (count + aggregate)", tab),
            ("build_report (tables + plots)", full),
        ):
            median = statistics.median(times)
            print(f"{label:<30} {median:6.2f} s  ({median * per:.2f} s per 1,000 runs)")

    report_import = import_seconds("import toolkit.report.cli, toolkit.report.build", args.repeat)
    torch_import = import_seconds("import torch, lightning.pytorch, timm", args.repeat)
    print(
        f"start-up: toolkit report imports in {report_import:.2f} s, torch + Lightning + timm in "
        f"{torch_import:.2f} s (torch/report ratio {torch_import / report_import:.1f}x)"
    )


if __name__ == "__main__":
    main()
