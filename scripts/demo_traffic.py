"""Realistic traffic for k8s-alog demos on the simulated node (python3 stdlib only).

Three roles, each run as a container of a simulated pod (scripts/demo.sh):

  demo_traffic.py payment PORT
      the payment service: POST /charge answers in 5-40 ms; every 8th charge is slow
      (300-800 ms) and every 12th fails with 503 (counted, not drawn, so that even a
      short demo shows both); GET /healthz.
  demo_traffic.py cart PORT PAYMENT_URL
      the cart service: GET /cart/items, GET /cart/items/ID (404 for unknown ids),
      POST /cart/checkout calls PAYMENT_URL/charge (through its Service IP) and passes
      its status on (502 when payment is unreachable).
  demo_traffic.py client CART_URL RATE
      a shopper: RATE requests per second on keep-alive connections (and a fresh
      connection now and then), a mix of browsing, missing items and checkouts.

Prints "READY" once a server listens. Runs until killed.
"""

import http.client
import json
import random
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ITEMS = {str(i): {"id": i, "name": n, "price": p} for i, (n, p) in enumerate(
    [("kettle", 29), ("mug", 7), ("teapot", 35), ("sugar", 3), ("spoon", 2)], start=1)}


class Base(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "demo/1"

    def log_message(self, format, *args):  # noqa: A002 - base class signature
        pass

    def reply(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""


class Payment(Base):
    charges = 0
    lock = threading.Lock()

    def do_GET(self):
        if self.path == "/healthz":
            self.reply(200, {"ok": True})
        else:
            self.reply(404, {"error": "not found"})

    def do_POST(self):
        self.read_body()
        if self.path != "/charge":
            self.reply(404, {"error": "not found"})
            return
        with Payment.lock:
            Payment.charges += 1
            n = Payment.charges
        time.sleep(random.uniform(0.3, 0.8) if n % 8 == 3 else random.uniform(0.005, 0.04))
        if n % 12 == 5:
            self.reply(503, {"error": "card processor unavailable"})
        else:
            self.reply(200, {"charged": True, "ref": random.randrange(1 << 30)})


class Cart(Base):
    payment = None  # (host, port)

    def do_GET(self):
        path = urllib.parse.urlsplit(self.path).path
        if path == "/cart/items":
            time.sleep(random.uniform(0.001, 0.01))
            self.reply(200, list(ITEMS.values()))
        elif path.startswith("/cart/items/"):
            item = ITEMS.get(path.rsplit("/", 1)[1])
            self.reply(200 if item else 404, item or {"error": "no such item"})
        else:
            self.reply(404, {"error": "not found"})

    def do_POST(self):
        body = self.read_body()
        if self.path != "/cart/checkout":
            self.reply(404, {"error": "not found"})
            return
        host, port = self.payment
        try:
            c = http.client.HTTPConnection(host, port, timeout=5)
            c.request("POST", "/charge", body=body, headers={"Content-Type": "application/json"})
            r = c.getresponse()
            r.read()
            c.close()
            self.reply(200 if r.status == 200 else 502, {"payment": r.status})
        except OSError as e:
            self.reply(502, {"error": str(e)})


def serve(handler, port):
    srv = ThreadingHTTPServer(("0.0.0.0", port), handler)
    srv.daemon_threads = True
    print("READY", port, flush=True)
    srv.serve_forever()


def client(url, rate):
    u = urllib.parse.urlsplit(url)
    host, port = u.hostname, u.port or 80
    conn = None
    interval = 1.0 / max(rate, 0.1)
    while True:
        if conn is None or random.random() < 0.1:
            if conn is not None:
                conn.close()
            conn = http.client.HTTPConnection(host, port, timeout=10)
        r = random.random()
        try:
            if r < 0.45:
                conn.request("GET", "/cart/items")
            elif r < 0.75:
                conn.request("GET", "/cart/items/%d" % random.randint(1, 8))
            elif r < 0.95:
                body = json.dumps({"items": [random.randint(1, 5)], "total": random.randint(3, 90)})
                conn.request("POST", "/cart/checkout", body=body,
                             headers={"Content-Type": "application/json"})
            else:
                conn.request("GET", "/cart/does-not-exist")
            conn.getresponse().read()
        except OSError:
            conn = None
            time.sleep(1)
        time.sleep(random.expovariate(1.0 / interval))


def main():
    role = sys.argv[1] if len(sys.argv) > 1 else ""
    if role == "payment" and len(sys.argv) == 3:
        serve(Payment, int(sys.argv[2]))
    elif role == "cart" and len(sys.argv) == 4:
        u = urllib.parse.urlsplit(sys.argv[3])
        Cart.payment = (u.hostname, u.port or 80)
        serve(Cart, int(sys.argv[2]))
    elif role == "client" and len(sys.argv) == 4:
        client(sys.argv[2], float(sys.argv[3]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
