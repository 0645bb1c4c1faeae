"""The roles of `ratios --processes`, each in a process of its own, for the
scripts beside this one: a source, a sink, and between them the broker
(tokio, smol or mio) or a bare forwarder. Warmed up with 64 MiB."""
import os, subprocess


def start_roles(mode, exe, tag):
    """Starts the roles; returns the source and [(name, process)]."""
    def start(*args):
        p = subprocess.Popen([exe, "--procs-role", *args], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
        return p, p.stdout.readline().strip()
    if mode == "forwarder":
        sink_path, fwd = f"/tmp/{tag}-sink-{os.getpid()}.sock", f"/tmp/{tag}-fwd-{os.getpid()}.sock"
        sink, _ = start("sink", "raw:" + sink_path)
        f, _ = start("forwarder", fwd, sink_path)
        src, _ = start("source", "raw:" + fwd)
        procs = [("source", src), ("forwarder", f), ("sink", sink)]
    else:
        b, hello = start("broker", mode)
        unix = hello.split()[0]
        sink, _ = start("sink", unix)
        src, _ = start("source", unix)
        procs = [("source", src), ("broker", b), ("sink", sink)]
    src.stdin.write("bulk 67108864\n"); src.stdin.flush(); src.stdout.readline()
    return src, procs
