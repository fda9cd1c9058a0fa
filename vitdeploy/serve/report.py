"""Load-test results as JSON, a markdown table and a figure against concurrency (``bench``'s formats).

The result is a ``BenchResult`` whose rows are ``loadtest.run_loadtest``'s: one per model and
concurrency level, with ``throughput`` in images/s and ``median_ms`` the p50 latency, so the bench
figure draws them against concurrency.
"""

from __future__ import annotations

from pathlib import Path

from vitdeploy.bench.report import BenchResult, markdown_document, write_result
from vitdeploy.tables import format_table

HEADERS = ["model", "clients", "req/s", "img/s", "p50 (ms)", "p90 (ms)", "p99 (ms)", "errors", "server batch"]


def load_result(title: str, rows: list[dict], config: dict) -> BenchResult:
    from vitdeploy.hardware import environment

    return BenchResult(title, environment(), config, rows)


def markdown_table(rows: list[dict]) -> str:
    return format_table(HEADERS, [table_row(row) for row in rows])


def table_row(row: dict) -> list:
    return [row["model"], row["concurrency"], f"{row['requests_per_s']:.1f}", f"{row['throughput']:.1f}",
            *(_two_places(row[key]) for key in ("median_ms", "p90_ms", "p99_ms")), row["errors"],
            _two_places(row["mean_server_batch"])]


def markdown_report(result: BenchResult) -> str:
    return markdown_document(result, ["server batch = Δnv_inference_count ÷ Δnv_inference_exec_count over the level.",
                                      markdown_table(result.rows)], machine_label="client: ")


def write_load_result(result: BenchResult, out_stem: Path) -> list[Path]:
    """Write ``<out_stem>.json``, ``.md`` and ``.png`` together; return their paths."""
    return write_result(result, out_stem, markdown_report(result), x="concurrency", x_label="concurrent clients")


def _two_places(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"
