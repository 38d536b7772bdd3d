"""What a person watching a rehearsal sees: a live line of fleet states and the final tables (rich)."""

from __future__ import annotations

from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def snapshot_view(snap: dict[str, Any], headline: str = "") -> Group:
    """The live panel: cars per state, cars per running version, bytes moved and the rate."""
    states = Table.grid(padding=(0, 2))
    names = [k for k, v in snap["states"].items() if v or k in ("idle", "downloading", "installing")]
    for _ in names:
        states.add_column(justify="right")
    states.add_row(*[Text(n, style="bold") for n in names])
    states.add_row(*[str(snap["states"][n]) for n in names])
    versions = "  ".join(f"v{v}: {n}" for v, n in snap["versions"].items())
    line = (f"sim {snap['sim_s'] / 60:6.1f} min | wall {snap['wall_s']:5.1f} s | moved {human_bytes(snap['bytes'])} "
            f"at {human_bytes(snap['rate_bytes_per_s'])}/s | failed inferences {snap['failed_inferences']}")
    return Group(Text(headline, style="cyan"), states, Text(f"running versions  {versions}"), Text(line))


class LiveView:
    """``with LiveView(console) as view: view.update(snapshot, headline)``; a no-op when ``console`` is None."""

    def __init__(self, console: Console | None) -> None:
        # Live redraws need a terminal; piped output gets only the phase lines the caller prints.
        live = console is not None and console.is_terminal
        self._live = Live(console=console, refresh_per_second=4, transient=False) if live else None
        self.headline = ""

    def __enter__(self) -> LiveView:
        if self._live:
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live:
            self._live.__exit__(None, None, None)

    def update(self, snap: dict[str, Any]) -> None:
        if self._live:
            self._live.update(snapshot_view(snap, self.headline))


def summary_table(summary: dict[str, Any]) -> Table:
    """Per network profile: cars updated, p50/p95 time to update, bytes per car; then the total line."""
    t = Table(title="Fleet summary (times are simulated)", show_footer=False)
    for col in ("network", "cars", "updated", "failed", "installs", "via delta", "p50 to update", "p95 to update",
                "bytes/car", "drops"):
        t.add_column(col, justify="right" if col != "network" else "left")

    def secs(v: float | None) -> str:
        return "-" if v is None else (f"{v:.0f} s" if v < 120 else f"{v / 60:.1f} min")

    for row in summary["per_network"]:
        t.add_row(row["network"], str(row["cars"]), str(row["updated"]), str(row["failed"]), str(row["installs"]),
                  str(row["delta_installs"]), secs(row["p50_time_to_update_s"]), secs(row["p95_time_to_update_s"]),
                  human_bytes(row["bytes_per_car"]), str(row["drops"]))
    return t


def total_line(summary: dict[str, Any]) -> str:
    sent, fp32, pkg = summary["bytes_sent"], summary["bytes_full_fp32"], summary["bytes_full_package"]

    def pct(base: int) -> str:
        return f"{100 * sent / base:.1f}%" if base else "-"

    return (f"total: {summary['installs']} installs on {summary['updated']} of {summary['cars']} cars "
            f"({summary['delta_installs']} via delta); {human_bytes(sent)} sent vs {human_bytes(fp32)} as full fp32 "
            f"ONNX ({pct(fp32)}) and {human_bytes(pkg)} as full compressed packages ({pct(pkg)}); "
            f"{summary['failed_inferences']} failed of {summary['inferences']} inferences; "
            f"{summary['failed']} cars failed, {summary['rolled_back']} rolled back; wall {summary['wall_s']:.1f} s")


def print_summary(console: Console, summary: dict[str, Any]) -> None:
    console.print(summary_table(summary))
    console.print(total_line(summary))
