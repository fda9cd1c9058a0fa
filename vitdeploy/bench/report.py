"""Benchmark results: one JSON-ready record, written as JSON, markdown tables and a figure.

A ``BenchResult`` holds the environment (``vitdeploy.hardware.environment``), the config
that produced it and one row per (model, batch): the harness's ``Measurement.to_dict()`` plus
the model, backend, precision, optional MACs and ``ratio_to_first``, the throughput relative to
the first model at the same batch. Ratios are the figures to compare on a shared machine; they
are only fair when the models were timed interleaved in one process (``time_interleaved``).
"""

from __future__ import annotations

import io
import json
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Mapping

from vitdeploy.hardware import environment as current_environment
from vitdeploy.bench.harness import Measurement
from vitdeploy.errors import VitDeployError
from vitdeploy.io import atomic_paths, finite_json
from vitdeploy.tables import format_table

SeriesKey = tuple[str, str | None, str | None]


@dataclass
class BenchResult:
    title: str
    environment: dict
    config: dict
    """Batch sizes, backend, precision, threads, timing plan: JSON-ready."""
    rows: list[dict]

    @classmethod
    def from_measurements(cls, title: str, measurements: Iterable[Measurement], config: dict,
                          environment: dict | None = None, macs: Mapping[str, int] | None = None) -> "BenchResult":
        """Rows with ratios from ``measurements``; ``environment`` defaults to this machine's.

        ``macs`` maps a measurement's name to its model's MACs per image.
        """
        macs = macs or {}
        rows = [measurement_row(m, macs=macs.get(m.name)) for m in measurements]
        env = environment if environment is not None else current_environment(config.get("threads"))
        return cls(title, env, config, ratio_rows(rows))

    def to_dict(self) -> dict:
        return asdict(self)


def measurement_row(measurement: Measurement, model: str | None = None, backend: str | None = None,
                    precision: str | None = None, macs: int | None = None) -> dict:
    """One report row; model, backend and precision default to the measurement's name and metadata."""
    return {
        **measurement.to_dict(),
        "model": model or measurement.name,
        "backend": backend or measurement.metadata.get("backend"),
        "precision": precision or measurement.metadata.get("precision"),
        "macs": macs,
    }


def series_key(row: dict) -> SeriesKey:
    """What one line in the figure stands for: a model on a backend at a precision."""
    return (row["model"], row["backend"], row["precision"])


def ratio_rows(rows: list[dict]) -> list[dict]:
    """``rows`` with ``ratio_to_first``: throughput ÷ the first series' throughput at the same batch.

    None where the first series has no row at that batch.
    """
    if not rows:
        return []
    first = series_key(rows[0])
    base = {row["batch"]: row["throughput"] for row in rows if series_key(row) == first}
    return [{**row, "ratio_to_first": row["throughput"] / base[row["batch"]] if row["batch"] in base else None}
            for row in rows]


def series_labels(rows: list[dict]) -> dict[SeriesKey, str]:
    """A label per series: the model, plus backend and precision where those differ between rows."""
    keys = list(dict.fromkeys(series_key(row) for row in rows))
    varying = [i for i in (1, 2) if len({key[i] for key in keys}) > 1]
    return {key: key[0] + "".join(f" · {key[i]}" for i in varying) for key in keys}


def markdown_table(result: BenchResult) -> str:
    """One markdown table per batch size: model, median/p90/p99 latency, throughput, ratio."""
    labels = series_labels(result.rows)
    with_macs = any(row["macs"] is not None for row in result.rows)
    headers = ["model", *(["GMACs/img"] if with_macs else []), "median (ms)", "p90 (ms)", "p99 (ms)",
               "throughput (img/s)", "ratio"]
    sections = []
    for batch, rows in sorted(_rows_by_batch(result.rows).items()):
        table_rows = [[labels[series_key(row)], *([_gmacs(row["macs"])] if with_macs else []),
                       f"{row['median_ms']:.3f}", f"{row['p90_ms']:.3f}", f"{row['p99_ms']:.3f}",
                       f"{row['throughput']:.1f}", _ratio(row["ratio_to_first"])] for row in rows]
        sections.append(f"### batch {batch}\n\n" + format_table(headers, table_rows))
    return "\n\n".join(sections)


def markdown_report(result: BenchResult) -> str:
    """The whole markdown file: title, environment, config and the tables."""
    first = series_labels(result.rows)[series_key(result.rows[0])] if result.rows else None
    ratio_note = f"ratio = throughput ÷ {first}'s at the same batch." if first else "no measurements."
    return markdown_document(result, [ratio_note, markdown_table(result)])


def markdown_document(result: BenchResult, sections: list[str], machine_label: str = "") -> str:
    """A result's markdown file: title, environment line and config, then ``sections``."""
    return "\n\n".join([f"# {result.title}", machine_label + environment_line(result.environment),
                        "config: `" + json.dumps(result.config, sort_keys=True) + "`", *sections]) + "\n"


def environment_line(env: dict) -> str:
    """One line naming the device, libraries, threads and date of a run."""
    gpu = env.get("gpu")
    device = (f"GPU {gpu['name']} (sm {gpu['compute_capability']}, driver {gpu['driver']}, "
              f"CUDA {gpu['cuda_runtime']}, cuDNN {gpu['cudnn']}), " if gpu else "")
    libraries = ", ".join(f"{name} {env[name]}" for name in ("python", "torch", "onnxruntime", "numpy")
                          if env.get(name))
    return (f"{device}CPU {env.get('cpu')} ({env.get('cpu_count')} cores); {libraries}; "
            f"threads {env.get('threads') or 'default'}; {env.get('utc')}")


def figure_png(result: BenchResult, x: str = "batch", x_label: str = "batch size") -> bytes:
    """Two panels against ``x`` (log scale; batch size by default): throughput and median latency per series."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(figure)
    throughput_axes, latency_axes = figure.subplots(1, 2)
    labels = series_labels(result.rows)
    for key, rows in _rows_by_series(result.rows).items():
        rows = sorted(rows, key=lambda row: row[x])
        batches = [row[x] for row in rows]
        throughput_axes.plot(batches, [row["throughput"] for row in rows], marker="o", label=labels[key])
        latency_axes.plot(batches, [row["median_ms"] for row in rows], marker="o", label=labels[key])
    batch_sizes = sorted({row[x] for row in result.rows})
    for axes, ylabel in ((throughput_axes, "throughput (img/s)"), (latency_axes, "median latency (ms)")):
        axes.set_xscale("log", base=2)
        axes.set_xticks(batch_sizes, labels=[str(b) for b in batch_sizes])
        axes.minorticks_off()
        axes.set_xlabel(x_label)
        axes.set_ylabel(ylabel)
        axes.grid(alpha=0.3)
    if result.rows:
        throughput_axes.legend()
    figure.suptitle(result.title)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()


def write_result(result: BenchResult, out_stem: Path, markdown: str | None = None, x: str = "batch",
                 x_label: str = "batch size") -> list[Path]:
    """Write ``<out_stem>.json``, ``.md`` (``markdown``, default ``markdown_report``) and ``.png``
    together, all or none; return their paths. The plot's x axis is the rows' ``x`` field."""
    out_stem = Path(out_stem)
    paths = [out_stem.with_name(out_stem.name + suffix) for suffix in (".json", ".md", ".png")]
    with atomic_paths(*paths) as (json_tmp, md_tmp, png_tmp):
        json_tmp.write_text(finite_json(result.to_dict(), str(paths[0])))
        md_tmp.write_bytes((markdown if markdown is not None else markdown_report(result)).encode())
        png_tmp.write_bytes(figure_png(result, x, x_label))
    return paths


def load_result(path: Path) -> BenchResult:
    """Read a result written by ``write_result`` (its ``.json`` file)."""
    try:
        return BenchResult(**json.loads(Path(path).read_text()))
    except (OSError, ValueError, TypeError) as error:
        raise VitDeployError(f"{path}: not a benchmark result written by vitdeploy ({error}); "
                             "pass the .json file that write_result produced") from error


def _rows_by_batch(rows: list[dict]) -> dict[int, list[dict]]:
    grouped = defaultdict(list)
    for row in rows:
        grouped[row["batch"]].append(row)
    return grouped


def _rows_by_series(rows: list[dict]) -> dict[SeriesKey, list[dict]]:
    grouped = defaultdict(list)
    for row in rows:
        grouped[series_key(row)].append(row)
    return grouped


def _gmacs(macs: int | None) -> str:
    return "" if macs is None else f"{macs / 1e9:.3g}"


def _ratio(ratio: float | None) -> str:
    return "" if ratio is None else f"{ratio:.2f}×"
