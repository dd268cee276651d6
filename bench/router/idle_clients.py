"""Opens N keep-alive connections to the router, makes one request on each, keeps them all open
and idle, then prints the router's resident memory (from its /proc status file)."""
import resource
import selectors
import socket
import sys

port, count, status_path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 1000), hard))
request = b"GET /small HTTP/1.1\r\nHost: bench.localhost\r\n\r\n"
socks, sel = [], selectors.DefaultSelector()
answered = 0
pending = {}
for i in range(count):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(request)
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ)
    pending[s] = b""
    socks.append(s)
    # drain answers as we go so neither side's buffers pile up
    while len(pending) > 200 or (i == count - 1 and pending):
        for key, _ in sel.select(timeout=10):
            data = key.fileobj.recv(4096)
            pending[key.fileobj] += data
            if not data or pending[key.fileobj].endswith(b"hello, world\n"):
                sel.unregister(key.fileobj)
                del pending[key.fileobj]
                answered += bool(data)
rss = 0
with open(status_path) as f:
    for line in f:
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
print(f"idle keep-alive clients: {answered} of {count} answered and held open; "
      f"router RSS {rss / 1024:.1f} MB")
for s in socks:
    s.close()
