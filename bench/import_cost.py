"""1. DAG-parse cost: what importing the sensor and operator adds on top of Airflow's own imports.

Each sample is a fresh interpreter that first imports what Airflow itself loads to parse any DAG file
(``airflow.sdk`` with DAG, BaseOperator, BaseSensorOperator), then times the import under test.
"""

from __future__ import annotations

import subprocess
import sys

from _common import median

BASELINE = "import airflow, airflow.sdk; from airflow.sdk import DAG, BaseOperator, BaseSensorOperator, task"
TARGETS = {
    "airflow-provider-faxplus (OutboxFaxSensor + UpdateOutboxCommentOperator)": (
        "from airflow_provider_faxplus.sensors.outbox import OutboxFaxSensor; "
        "from airflow_provider_faxplus.operators.outbox import UpdateOutboxCommentOperator"
    ),
    "apache-airflow-providers-http 6.3.0 (HttpSensor)": (
        "from airflow.providers.http.sensors.http import HttpSensor"
    ),
}
SNIPPET = (
    "import time; {baseline}; t = time.perf_counter(); {target}; print((time.perf_counter() - t) * 1000)"
)


def sample(target: str) -> float:
    code = SNIPPET.format(baseline=BASELINE, target=target)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def heaviest(target: str, count: int = 6) -> list[tuple[str, int]]:
    """The modules with the largest self time under ``target`` (python -X importtime)."""
    code = f"{BASELINE}; import sys; sys.stderr.write('--mark--\\n'); {target}"
    err = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True
    ).stderr
    rows = []
    for line in err.split("--mark--", 1)[1].splitlines():
        if line.startswith("import time:") and "|" in line:
            self_us, _cumulative, name = (part.strip() for part in line[len("import time:") :].split("|"))
            if self_us.isdigit():
                rows.append((name.strip(), int(self_us)))
    return sorted(rows, key=lambda row: -row[1])[:count]


def run(rounds: int = 10) -> list[str]:
    samples: dict[str, list[float]] = {name: [] for name in TARGETS}
    for _ in range(rounds):  # interleaved
        for name, target in TARGETS.items():
            samples[name].append(sample(target))
    lines = [
        f"| import (after Airflow's own) | median of {rounds} fresh processes | min | max |",
        "|---|---|---|---|",
    ]
    for name, values in samples.items():
        lines.append(f"| {name} | {median(values):.1f} ms | {min(values):.1f} ms | {max(values):.1f} ms |")
    ours, http = (median(v) for v in samples.values())
    lines.append("")
    lines.append(
        f"Ratio faxplus / http: {ours / http:.2f}. Heaviest modules of ours (self time, -X importtime):"
    )
    ours_target = next(iter(TARGETS.values()))
    lines.append(", ".join(f"`{name}` {us / 1000:.1f} ms" for name, us in heaviest(ours_target)))
    return lines


if __name__ == "__main__":
    print("\n".join(run()))
