"""Where each process's CPU goes during one 1 GiB relayed transfer, every
role in a process of its own as `ratios --processes` runs them: `perf
record` of the source, the broker (or the bare forwarder) and the sink, then
each one's flat profile (self time by symbol, top N) and its share of
samples by kind: kernel copies, other kernel work, memcpy/memmove in user
space, allocation, the runtime, plugboard's own code, crypto.

    cargo build --release -p plugboard-benches --bin ratios
    python3 benches/scripts/relay_profile.py forwarder|tokio|smol|mio [TOP] [RATIOS]

PERF_RECORD overrides what is recorded (`-e page-faults --call-graph
dwarf`, say); with PERF_KEEP set the recordings are kept and named, not
summed up.

Needs `perf` allowed to sample kernel and user space (root, or
perf_event_paranoid <= 1)."""
import os, signal, subprocess, sys, time, re
from roles import start_roles

target = os.environ.get("CARGO_TARGET_DIR", "target")
mode = sys.argv[1]
top = int(sys.argv[2]) if len(sys.argv) > 2 else 12
exe = sys.argv[3] if len(sys.argv) > 3 else f"{target}/release/ratios"


tag = os.getpid()
src, procs = start_roles(mode, exe, "prof")
records = []
for name, p in procs:
    out = f"/tmp/prof-{tag}-{name}.data"
    extra = os.environ.get("PERF_RECORD", "-F 1999").split()
    rec = subprocess.Popen(["perf", "record", "-q", *extra, "-p", str(p.pid), "-o", out],
                           stderr=subprocess.DEVNULL)
    records.append((name, out, rec))
time.sleep(0.5)
src.stdin.write("bulk 1073741824\n"); src.stdin.flush(); ns = int(src.stdout.readline())
time.sleep(0.1)
for _, _, rec in records:
    rec.send_signal(signal.SIGINT); rec.wait()
for _, p in procs:
    p.stdin.close()
for _, p in procs:
    p.wait()

KINDS = [
    ("kernel copies", re.compile(r"copy_(user|to_user|from_user|page)|rep_movs|skb_copy|memcpy_(to|from)|_copy_(to|from)_iter|copyout|copyin")),
    ("user memcpy", re.compile(r"^(__)?mem(cpy|move|set)")),
    ("allocation", re.compile(r"malloc|free|_int_|realloc|calloc|tcache|arena|clear_page|page_fault|alloc_pages|get_page_from")),
    ("crypto", re.compile(r"salsa|poly1305|curve25519|sha|hmac|secretbox", re.I)),
    ("runtime", re.compile(r"tokio|async_io|async_executor|smol|mio|polling|futex|epoll|schedule|wake|park", re.I)),
    ("plugboard", re.compile(r"plugboard")),
]
print(f"{mode}: wall {ns / 1e9:.3f} s for 1 GiB")
for name, out, _ in records:
    if os.environ.get("PERF_KEEP"):
        print(f"{name}: {out}")
        continue
    report = subprocess.run(["perf", "report", "-i", out, "--no-children", "--stdio",
                             "--sort", "sym", "--percent-limit", "0.01"],
                            capture_output=True, text=True).stdout
    rows = []
    for line in report.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+\[(.)\]\s+(.*)", line)
        if m:
            rows.append((float(m.group(1)), m.group(2), m.group(3).strip()))
    kinds = {}
    for pct, space, sym in rows:
        kind = next((k for k, r in KINDS if r.search(sym)), None)
        if kind is None:
            kind = "kernel, other" if space == "k" else "user, other"
        kinds[kind] = kinds.get(kind, 0) + pct
    samples = re.search(r"# Samples: (\S+)", report)
    print(f"\n{name} ({samples.group(1) if samples else '?'} samples): " +
          ", ".join(f"{k} {v:.1f}%" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])))
    for pct, space, sym in rows[:top]:
        print(f"  {pct:5.1f}% [{space}] {sym[:90]}")
    os.remove(out)
