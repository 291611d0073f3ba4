#!/usr/bin/env python3
"""Runs an unmodified AWS Lambda handler under dynastream's `exec` processor.

    DYNASTREAM_PROCESSOR=exec \\
    DYNASTREAM_EXEC_COMMAND='python3 adapters/python/dynastream_lambda.py app.handler' \\
    dynastream

The handler is named as in Lambda, `module.function` (`package.module.function`
and `dir/module.function` work too). The module is imported from the current
directory, the directories given with `--path DIR` (repeatable) and
PYTHONPATH.

Protocol (one line each way, see dynastream's README):

- dynastream writes each batch as one line of JSON on stdin: Lambda's event,
  `{"Records": [...]}`;
- this adapter calls `handler(event, context)` with a Lambda-like context, and
  writes ONE line of JSON to stdout: `{"batchItemFailures": [...]}` when the
  handler returned a value holding `batchItemFailures`, `{}` otherwise, and
  `{"errorMessage": ..., "errorType": ...}` when the handler raised (the whole
  batch fails and is retried, as in Lambda).

Stdout is the protocol channel, so the handler's own output is moved to
stderr at the file-descriptor level before the handler is imported: print(),
logging to sys.stdout, C extensions and subprocesses writing to fd 1 all land
on stderr, which is dynastream's. A handler that is a coroutine function, or
returns an awaitable, runs on one event loop kept for the adapter's life (like
a warm Lambda environment keeps its globals). Python 3.8+, standard library
only. The adapter exits when stdin closes.
"""

import argparse
import asyncio
import importlib
import inspect
import json
import os
import sys
import time
import traceback
import uuid

DEFAULT_TIMEOUT_MS = 60000


def take_over_stdout():
    """Keeps the real stdout for answers and sends everything else to stderr."""
    sys.stdout.flush()
    protocol = os.fdopen(os.dup(1), "w", encoding="utf-8", newline="\n")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return protocol


class LambdaContext:
    """The attributes and methods of Lambda's Python context object."""

    def __init__(self, function_name, timeout_ms, deadline):
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        self.function_name = function_name
        self.function_version = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        self.invoked_function_arn = "arn:aws:lambda:{}:000000000000:function:{}".format(region, function_name)
        self.memory_limit_in_mb = int(os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128"))
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = "/aws/lambda/" + function_name
        self.log_stream_name = os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME", "dynastream")
        self.identity = None
        self.client_context = None
        self.tenant_id = None
        self._deadline = deadline
        self._timeout_ms = timeout_ms

    def get_remaining_time_in_millis(self):
        return max(0, int((self._deadline - time.monotonic()) * 1000))

    def log(self, message):
        sys.stderr.write(str(message))
        sys.stderr.flush()

    def __repr__(self):
        return "LambdaContext(function_name={!r}, aws_request_id={!r})".format(
            self.function_name, self.aws_request_id
        )


def load_handler(spec, paths):
    """Imports `module.function` the way Lambda's Python runtime does."""
    if "." not in spec:
        raise SystemExit("dynastream_lambda: bad handler {!r}: expected module.function".format(spec))
    module_name, function_name = spec.rsplit(".", 1)
    module_name = module_name.replace("/", ".")
    for path in reversed([os.getcwd()] + paths):
        path = os.path.abspath(path)
        if path not in sys.path:
            sys.path.insert(0, path)
    module = importlib.import_module(module_name)
    handler = getattr(module, function_name, None)
    if handler is None or not callable(handler):
        raise SystemExit(
            "dynastream_lambda: module {!r} has no function {!r}".format(module_name, function_name)
        )
    return handler


def error_answer(error, request_id):
    return {
        "errorMessage": str(error),
        "errorType": type(error).__name__,
        "requestId": request_id,
        "stackTrace": traceback.format_tb(error.__traceback__),
    }


def answer_of(result):
    """Lambda's reading of a stream handler's return value."""
    if isinstance(result, dict) and "batchItemFailures" in result:
        return {"batchItemFailures": result["batchItemFailures"]}
    return {}


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="dynastream_lambda.py",
        description="Run an AWS Lambda handler for dynastream's exec processor.",
    )
    parser.add_argument("handler", help="module.function, as in Lambda's handler setting")
    parser.add_argument(
        "--path", action="append", default=[], metavar="DIR", help="also import from DIR (repeatable)"
    )
    parser.add_argument(
        "--function-name",
        default=os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "dynastream"),
        help="context.function_name (default: $AWS_LAMBDA_FUNCTION_NAME or dynastream)",
    )
    args = parser.parse_args(argv)

    protocol = take_over_stdout()
    handler = load_handler(args.handler, args.path)
    timeout_ms = int(os.environ.get("DYNASTREAM_EXEC_TIMEOUT_MS", DEFAULT_TIMEOUT_MS))
    loop = None

    for line in sys.stdin.buffer:
        if not line.strip():
            continue
        started = time.monotonic()
        context = LambdaContext(args.function_name, timeout_ms, started + timeout_ms / 1000.0)
        try:
            event = json.loads(line)
            result = handler(event, context)
            if inspect.isawaitable(result):
                if loop is None:
                    loop = asyncio.new_event_loop()
                    asyncio.set_event_loop(loop)
                result = loop.run_until_complete(result)
            answer = json.dumps(answer_of(result), default=str, separators=(",", ":"))
        except Exception as error:  # a handler's exception fails the batch, as in Lambda
            traceback.print_exc(file=sys.stderr)
            answer = json.dumps(error_answer(error, context.aws_request_id), default=str, separators=(",", ":"))
        sys.stderr.flush()
        protocol.write(answer + "\n")
        protocol.flush()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
