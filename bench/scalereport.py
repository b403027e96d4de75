"""What bench/scale.py measures of one engine's run, and how it prints it."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from scalepeers import KEEPALIVE_S, REKEY_S


@dataclass(slots=True)
class Figures:
    engine: str
    registering_s: float = 0.0
    serving_s: float = 0.0
    handshaken_s: float = 0.0
    handshake_cpu_s: dict[str, float] = field(default_factory=dict)  # side -> CPU seconds
    settling_s: float | None = None  # until every endpoint was stored; None: not in time
    calming_s: float | None = None  # then until the server's CPU was steady; None: not in time
    steady_s: float = 0.0
    keepalives: int = 0
    handshakes: int = 0
    cookies: int = 0
    cpu: dict[str, list[float]] = field(default_factory=dict)  # side -> share per slice
    rendezvous_rss: int = 0
    database_pss: int = 0
    database_processes: int = 0
    dns_idle: list[float] = field(default_factory=list)  # p50, p99 in us
    dns_loaded: list[float] = field(default_factory=list)
    stopping_s: float | None = None  # None: killed after STOP_TIMEOUT_S
    log_lines: list[str] = field(default_factory=list)  # the server's warnings and errors
    statements: list[str] = field(default_factory=list)  # PostgreSQL's costliest (--pg-top)

    def server_cpu(self) -> list[float]:
        """Rendezvous and database together, slice by slice."""
        return [sum(shares) for shares in zip(*self.cpu.values(), strict=True)]


def seconds(value: float | None) -> str:
    return "never (gave up)" if value is None else f"{value:.1f} s"


def spread(shares: list[float]) -> str:
    """Median (min-max) of a few slices' CPU shares."""
    return f"{statistics.median(shares):.2f} ({min(shares):.2f}-{max(shares):.2f})"


def report(figures: Figures, peers: int) -> None:
    rates = (peers / KEEPALIVE_S, peers / REKEY_S)
    spent = ", ".join(f"{side} {seconds:.1f}" for side, seconds in figures.handshake_cpu_s.items())
    print(f"== {figures.engine}")
    print(
        f"{peers:,} peers registered in {figures.registering_s:.1f} s; serving "
        f"{figures.serving_s:.1f} s after start; all handshaken in {figures.handshaken_s:.1f} s "
        f"(CPU seconds: {spent})"
    )
    print(
        f"then, under the steady load: every endpoint stored after {seconds(figures.settling_s)}, "
        f"the server's CPU steady {seconds(figures.calming_s)} later"
    )
    print(
        f"steady state for {figures.steady_s:.0f} s: {rates[0]:,.0f} keepalives/s and "
        f"{rates[1]:,.0f} rekeys/s offered; {figures.keepalives:,} keepalives sent, "
        f"{figures.handshakes:,} handshakes completed, {figures.cookies:,} cookie replies"
    )
    slices = len(figures.cpu["rendezvous"])
    print(
        f"rendezvous: CPU share {spread(figures.cpu['rendezvous'])} of one core, median of "
        f"{slices} slices (goal: under 0.5), resident memory "
        f"{figures.rendezvous_rss / 2**20:,.0f} MiB (goal: under 1,024)"
    )
    if "database" in figures.cpu:
        print(
            f"PostgreSQL, its {figures.database_processes} processes: CPU share "
            f"{spread(figures.cpu['database'])} of one core, memory (PSS) "
            f"{figures.database_pss / 2**20:,.0f} MiB; with the rendezvous: CPU "
            f"{spread(figures.server_cpu())}, memory {server_memory(figures) / 2**20:,.0f} MiB"
        )
    print(
        f"DNS SRV latency: idle p50 {figures.dns_idle[0]:.0f} us, p99 {figures.dns_idle[1]:.0f} "
        f"us; during the load p50 {figures.dns_loaded[0]:.0f} us, p99 "
        f"{figures.dns_loaded[1]:.0f} us"
    )
    series = "; ".join(
        f"{side} {' '.join(f'{x:.2f}' for x in cpu)}" for side, cpu in figures.cpu.items()
    )
    print(f"CPU share slice by slice: {series}")
    stopped = "killed, not stopped" if figures.stopping_s is None else f"{figures.stopping_s:.1f} s"
    print(f"stopping (SIGTERM to exit): {stopped}")
    complain(figures.log_lines)
    if figures.statements:
        print("PostgreSQL's costliest statements while serving (pg_stat_statements):")
        for line in figures.statements:
            print(f"  {line}")


def complain(log_lines: list[str]) -> None:
    """How many warnings the server logged, and each different one once (timestamps off)."""
    complaints = [
        line.split(" ", 1)[-1] for line in log_lines if " WARNING " in line or " ERROR " in line
    ]
    if complaints:
        print(f"the server logged {len(complaints)} warnings or errors:")
        for line in dict.fromkeys(complaints):
            print(f"  {line}")


def server_memory(figures: Figures) -> int:
    return figures.rendezvous_rss + figures.database_pss


def report_ratios(sqlite: Figures, postgresql: Figures) -> None:
    def ratio(ours: float, theirs: float) -> str:
        return f"{ours / theirs:.2f}" if theirs else "n/a"

    def cpu(shares: list[float]) -> float:
        return statistics.median(shares)

    print("== PostgreSQL / SQLite")
    print(
        f"registering {ratio(postgresql.registering_s, sqlite.registering_s)}, serving after "
        f"start {ratio(postgresql.serving_s, sqlite.serving_s)}, all handshaken "
        f"{ratio(postgresql.handshaken_s, sqlite.handshaken_s)}"
    )
    rendezvous = ratio(cpu(postgresql.cpu["rendezvous"]), cpu(sqlite.cpu["rendezvous"]))
    server = ratio(cpu(postgresql.server_cpu()), cpu(sqlite.server_cpu()))
    print(f"CPU share: rendezvous {rendezvous}, rendezvous and its database {server}")
    print(
        f"memory: rendezvous {ratio(postgresql.rendezvous_rss, sqlite.rendezvous_rss)}, "
        f"rendezvous and its database {ratio(server_memory(postgresql), server_memory(sqlite))}"
    )
    print(
        f"DNS during the load: p50 {ratio(postgresql.dns_loaded[0], sqlite.dns_loaded[0])}, "
        f"p99 {ratio(postgresql.dns_loaded[1], sqlite.dns_loaded[1])}"
    )
