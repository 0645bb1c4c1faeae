"""System calls, context switches and CPU (perf's task-clock, ms) of each
process for one 1 GiB transfer, with every role in a process of its own as
`ratios --processes` runs them (docs/PERFORMANCE.md, issue 12).

    cargo build --release -p plugboard-benches --bin ratios
    python3 benches/scripts/relay_counts.py forwarder|tokio|smol|mio [RATIOS]

Needs `perf` with the syscalls tracepoints (run as root)."""
import os, signal, subprocess, sys, time
from roles import start_roles

target = os.environ.get("CARGO_TARGET_DIR", "target")
exe = sys.argv[2] if len(sys.argv) > 2 else f"{target}/release/ratios"
mode = sys.argv[1]
src, procs = start_roles(mode, exe, "cnt")
ev = "syscalls:sys_enter_recvfrom,syscalls:sys_enter_recvmsg,syscalls:sys_enter_sendmsg,syscalls:sys_enter_sendto,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_futex,context-switches,task-clock"
stats = []
for name, p in procs:
    out = f"/tmp/cnt-{os.getpid()}-{name}.txt"
    stats.append((name, out, subprocess.Popen(["perf", "stat", "-x,", "-e", ev, "-p", str(p.pid), "-o", out])))
time.sleep(0.5)
src.stdin.write("bulk 1073741824\n"); src.stdin.flush(); ns = int(src.stdout.readline())
time.sleep(0.1)
for name, out, s in stats:
    s.send_signal(signal.SIGINT); s.wait()
print(f"{mode}: wall {ns/1e9:.3f} s")
for name, out, s in stats:
    row = {}
    for line in open(out):
        parts = line.strip().split(",")
        if len(parts) > 3 and parts[0] and not line.startswith("#"):
            row[parts[2].replace("syscalls:sys_enter_", "")] = parts[0]
    print(f"  {name:10s} " + " ".join(f"{k}={v}" for k, v in row.items() if v not in ("0", "<not counted>")))
for name, p in procs:
    p.stdin.close()
for name, p in procs:
    p.wait()
