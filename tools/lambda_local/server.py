#!/usr/bin/env python3
"""A local stand-in for AWS Lambda's Invoke API, for dynastream's Lambda
target tests: it runs one Python handler through dynastream's own adapter.

    python3 tools/lambda_local/server.py --port 0 --handler module.fn [--path DIR] [--function NAME]

Prints exactly one line on stdout once listening,
`{"endpoint":"http://127.0.0.1:PORT"}`, and logs to stderr (so does the
handler). SIGTERM or SIGINT exits 0.

It serves Lambda's documented REST call

    POST /2015-03-31/functions/{FunctionName}/invocations[?Qualifier=Q]
    X-Amz-Invocation-Type: RequestResponse (default) | Event | DryRun
    body: the event, JSON

FunctionName is a name, `name:qualifier`, or a (partial) ARN, URL-encoded
or not. With `--function NAME`, any other name is answered 404
ResourceNotFoundException; without it, every name is this handler.

The handler runs in one long-lived child process,
`python3 adapters/python/dynastream_lambda.py HANDLER [--path DIR]`, which
reads one JSON event per line on stdin and answers one JSON line on stdout.
Invocations are serialised through it (one at a time, like one warm Lambda
environment); it is restarted if it dies. Answers, as Lambda gives them:

- RequestResponse: 200, the handler's answer as the payload (the adapter
  reduces it to `{"batchItemFailures": [...]}` or `{}`); if the handler
  raised, 200 with `{"errorMessage", "errorType", ...}` and
  `X-Amz-Function-Error: Unhandled`; if the child died or timed out, the
  same with errorType `Runtime.ExitError` or `Sandbox.Timedout`.
- Event: 202, empty; the handler runs afterwards, in the background.
- DryRun: 204, empty; nothing runs.

Every answer carries `x-amzn-RequestId`; invocations also
`X-Amz-Executed-Version: $LATEST`. Errors of the call itself are
`{"Type": "User", "message": ...}` with `x-amzn-ErrorType`. SigV4 headers
are ignored. Python 3.8+, standard library only.
"""

import argparse
import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
DEFAULT_ADAPTER = os.path.join(ROOT, "adapters", "python", "dynastream_lambda.py")
# Lambda's limit for a synchronous invocation's request payload.
MAX_PAYLOAD = 6 * 1024 * 1024
INVOKE_PATH = re.compile(r"^/2015-03-31/functions/([^/]+)/invocations/?$")


def log(message):
    sys.stderr.write("lambda-local: {}\n".format(message))
    sys.stderr.flush()


class Runner:
    """The handler's child process (dynastream's Python adapter), one
    invocation at a time."""

    def __init__(self, command, timeout):
        self.command = command
        self.timeout = timeout
        self.lock = threading.Lock()
        self.child = None
        self.pending = b""  # bytes read past the last answer line (none expected)

    def _start(self):
        log("starting " + " ".join(self.command))
        # stderr is inherited: the handler's output lands on ours.
        self.child = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.pending = b""

    def _kill(self):
        if self.child is not None and self.child.poll() is None:
            self.child.kill()
            self.child.wait()

    def ensure_started(self):
        with self.lock:
            if self.child is None or self.child.poll() is not None:
                self._start()

    def _read_line(self):
        """One line from the child's stdout, or None on EOF or timeout
        (reason in the second value)."""
        fd = self.child.stdout.fileno()
        buffer = self.pending
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while b"\n" not in buffer:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([fd], [], [], wait)
            if not ready:
                return None, "timeout"
            chunk = os.read(fd, 65536)
            if not chunk:
                return None, "exit"
            buffer += chunk
        line, self.pending = buffer.split(b"\n", 1)
        return line, None

    def invoke(self, event, request_id):
        """Runs the handler on `event`; returns (answer object, failed?)."""
        line = json.dumps(event, separators=(",", ":")).encode("utf-8") + b"\n"
        with self.lock:
            if self.child is None or self.child.poll() is not None:
                self._start()
            try:
                self.child.stdin.write(line)
                self.child.stdin.flush()
                answer, problem = self._read_line()
            except (BrokenPipeError, OSError):
                answer, problem = None, "exit"
            if answer is None:
                if problem == "timeout":
                    log("handler timed out after {} s; restarting it".format(self.timeout))
                    self._kill()
                    return {
                        "errorType": "Sandbox.Timedout",
                        "errorMessage": "RequestId: {} Error: Task timed out after {:.2f} seconds".format(
                            request_id, self.timeout
                        ),
                    }, True
                self._kill()
                status = self.child.poll()
                log("handler process exited ({}); it will be restarted".format(status))
                return {
                    "errorType": "Runtime.ExitError",
                    "errorMessage": "RequestId: {} Error: Runtime exited with error: exit status {}".format(
                        request_id, status
                    ),
                }, True
        try:
            value = json.loads(answer)
        except ValueError:
            return {"errorType": "Runtime.InvalidResponse", "errorMessage": "adapter answered: {!r}".format(answer[:200])}, True
        failed = isinstance(value, dict) and "errorMessage" in value and "errorType" in value
        return value, failed

    def close(self):
        """Stops the child: closing its stdin ends the adapter; killed if it
        does not end within 2 s. Not under the lock: an invocation may be
        running, and is abandoned."""
        child = self.child
        if child is not None and child.poll() is None:
            try:
                child.stdin.close()
            except OSError:
                pass
            try:
                child.wait(timeout=2)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def function_name_of(raw):
    """(name, qualifier) from the path's FunctionName: `name`, `name:q`,
    `arn:aws:lambda:region:account:function:name[:q]` or
    `account:function:name[:q]`."""
    parts = unquote(raw).split(":")
    if parts[0] == "arn" and len(parts) >= 7:
        return parts[6], (parts[7] if len(parts) > 7 else None)
    if len(parts) >= 3 and parts[1] == "function":
        return parts[2], (parts[3] if len(parts) > 3 else None)
    return parts[0], (parts[1] if len(parts) > 1 else None)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDKs expect
    server_version = "lambda-local"

    # Set on the class by main().
    runner = None
    function = None
    region = "us-east-1"

    def log_message(self, format, *args):
        log("{} {}".format(self.address_string(), format % args))

    def send(self, status, body=b"", headers=()):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        if body:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def user_error(self, status, error_type, message, request_id):
        body = json.dumps({"Type": "User", "message": message}).encode("utf-8")
        self.send(status, body, [("x-amzn-RequestId", request_id), ("x-amzn-ErrorType", error_type)])

    def read_body(self):
        """The request body (Content-Length or chunked), or None if too large."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            body = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return body if len(body) <= MAX_PAYLOAD else None
                body += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        return body if length <= MAX_PAYLOAD else None

    def do_POST(self):
        request_id = str(uuid.uuid4())
        url = urlsplit(self.path)
        body = self.read_body()
        match = INVOKE_PATH.match(url.path)
        if not match:
            return self.user_error(404, "UnknownOperationException", "Unknown operation POST " + url.path, request_id)
        name, qualifier = function_name_of(match.group(1))
        qualifier = (parse_qs(url.query).get("Qualifier") or [qualifier])[0]
        if self.function is not None and name != self.function:
            arn = "arn:aws:lambda:{}:000000000000:function:{}".format(self.region, name)
            if qualifier:
                arn += ":" + qualifier
            return self.user_error(404, "ResourceNotFoundException", "Function not found: " + arn, request_id)
        if body is None:
            return self.user_error(
                413,
                "RequestTooLargeException",
                "Request must be smaller than {} bytes for the InvokeFunction operation".format(MAX_PAYLOAD),
                request_id,
            )
        try:
            # An empty payload is an empty event, as in Lambda.
            event = json.loads(body.decode("utf-8")) if body.strip() else {}
        except (ValueError, UnicodeDecodeError) as error:
            return self.user_error(
                400, "InvalidRequestContentException", "Could not parse request body into json: {}".format(error), request_id
            )

        kind = self.headers.get("X-Amz-Invocation-Type", "RequestResponse")
        common = [("x-amzn-RequestId", request_id), ("X-Amz-Executed-Version", "$LATEST")]
        if kind == "DryRun":
            return self.send(204, b"", common)
        if kind == "Event":
            threading.Thread(target=self.run_in_background, args=(event, request_id), daemon=True).start()
            return self.send(202, b"", common)
        if kind != "RequestResponse":
            return self.user_error(
                400, "InvalidParameterValueException", "Unsupported invocation type " + kind, request_id
            )
        answer, failed = self.runner.invoke(event, request_id)
        headers = list(common)
        if failed:
            headers.append(("X-Amz-Function-Error", "Unhandled"))
            log("invocation {} failed: {}: {}".format(request_id, answer.get("errorType"), answer.get("errorMessage")))
        self.send(200, json.dumps(answer, separators=(",", ":")).encode("utf-8"), headers)

    def run_in_background(self, event, request_id):
        answer, failed = self.runner.invoke(event, request_id)
        if failed:
            log("asynchronous invocation {} failed: {}".format(request_id, answer.get("errorMessage")))

    def do_GET(self):
        self.read_body()
        self.user_error(404, "UnknownOperationException", "Unknown operation GET " + self.path, str(uuid.uuid4()))

    do_PUT = do_DELETE = do_HEAD = do_GET


def main():
    parser = argparse.ArgumentParser(description="A local AWS Lambda Invoke endpoint running one Python handler")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--handler", required=True, help="module.function, as in Lambda's handler setting")
    parser.add_argument("--path", action="append", default=[], metavar="DIR", help="also import from DIR (repeatable)")
    parser.add_argument("--function", metavar="NAME", help="the only function name to answer (default: any)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds a handler may run (default 60)")
    parser.add_argument("--adapter", default=DEFAULT_ADAPTER, help=argparse.SUPPRESS)
    args = parser.parse_args()

    command = [sys.executable, args.adapter, args.handler]
    for path in args.path:
        command += ["--path", os.path.abspath(path)]
    command += ["--function-name", args.function or os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "dynastream")]

    Handler.runner = Runner(command, args.timeout if args.timeout > 0 else None)
    Handler.function = args.function
    Handler.region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True

    def stop(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # Start the handler now, so that an import error shows in the log at once.
    Handler.runner.ensure_started()
    sys.stdout.write(json.dumps({"endpoint": "http://127.0.0.1:{}".format(server.server_address[1])}, separators=(",", ":")) + "\n")
    sys.stdout.flush()
    try:
        server.serve_forever()
    finally:
        server.server_close()
        Handler.runner.close()


if __name__ == "__main__":
    main()
