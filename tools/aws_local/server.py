#!/usr/bin/env python3
"""Local AWS services for dynastream's delivery-target tests: moto's server,
all services on one port, behind a small fault-injection layer.

    <moto venv>/bin/python tools/aws_local/server.py --port N

Started by scripts/aws-local, which installs moto into its own virtual
environment and runs this file with that environment's python. It serves what
`moto_server` serves (SQS, SNS, EventBridge, Kinesis, Firehose, S3, Step
Functions, ... and moto's own `/moto-api/`), threaded, on 127.0.0.1:N.

In front of moto sits a WSGI middleware that can fail chosen entries of batch
requests, so that the tests can check how dynastream handles partial failures.
It is driven over HTTP on the same port:

    POST   /_faults           {"marker": "boom", "times": 1, "code": "InternalError"}
                              arms the rule (replacing the previous one)
    GET    /_faults           the rule and its failure counts, or null
    DELETE /_faults           disarms
    GET    /_faults/requests  [{"api": "SendMessageBatch", "entries": 3, "failed": 1,
                                "marked": 1}, ...]
                              one object per batch request seen (armed or not);
                              "marked" counts its entries holding the armed marker
    DELETE /_faults/requests  forgets them

While a rule is armed, an entry of a batch request (SQS SendMessageBatch, SNS
PublishBatch, EventBridge PutEvents, Kinesis PutRecords, Firehose
PutRecordBatch) whose content holds the marker is taken out of the request
before moto sees it, and reported as failed in the answer, in the shape the
service documents. Content is the decoded `Data` for Kinesis and Firehose,
`MessageBody` for SQS, `Message` for SNS, `Detail` for EventBridge. Each
distinct content fails `times` times, then goes through (`-1`: always fails).

See tools/aws_local/README.md.
"""

import argparse
import base64
import binascii
import io
import json
import os
import re
import signal
import sys
import threading
import uuid
from urllib.parse import parse_qsl, urlencode
from xml.sax.saxutils import escape

DEFAULT_CODE = "InternalError"
DEFAULT_MESSAGE = "Injected failure (aws-local fault rule)"
SNS_NAMESPACE = "http://sns.amazonaws.com/doc/2010-03-31/"
SQS_NAMESPACE = "http://queue.amazonaws.com/doc/2012-11-05/"


def log(message):
    sys.stderr.write("aws-local server: {}\n".format(message))
    sys.stderr.flush()


# ---------------------------------------------------------------------------
# The fault rule and the record of batch requests


class Faults:
    """The armed rule (at most one), its per-content failure counts, and the
    list of batch requests seen. Shared by the server's threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.rule = None  # {"marker": bytes, "times": int, "code": str, "message": str}
        self.failures = {}  # (api, content bytes) -> how many times it was failed
        self.requests = []

    def arm(self, marker, times, code, message):
        with self.lock:
            self.rule = {"marker": marker.encode("utf-8"), "times": times, "code": code, "message": message}
            self.failures = {}

    def disarm(self):
        with self.lock:
            self.rule = None
            self.failures = {}

    def describe(self):
        with self.lock:
            if self.rule is None:
                return None
            return {
                "marker": self.rule["marker"].decode("utf-8"),
                "times": self.rule["times"],
                "code": self.rule["code"],
                "message": self.rule["message"],
                "failed": sum(self.failures.values()),
            }

    def decide(self, api, contents):
        """Which entries of one batch request to fail, as a list of booleans
        (one per entry, in order), plus the error code and message to report.
        Also records the request."""
        with self.lock:
            verdicts = []
            rule = self.rule
            for content in contents:
                fail = False
                if rule is not None and content is not None and rule["marker"] in content:
                    key = (api, content)
                    done = self.failures.get(key, 0)
                    if rule["times"] < 0 or done < rule["times"]:
                        self.failures[key] = done + 1
                        fail = True
                verdicts.append(fail)
            marked = 0
            if rule is not None:
                marked = sum(1 for c in contents if c is not None and rule["marker"] in c)
            self.requests.append(
                {"api": api, "entries": len(contents), "failed": sum(verdicts), "marked": marked}
            )
            code = rule["code"] if rule else DEFAULT_CODE
            message = rule["message"] if rule else DEFAULT_MESSAGE
            return verdicts, code, message

    def seen(self):
        with self.lock:
            return list(self.requests)

    def forget(self):
        with self.lock:
            self.requests = []


# ---------------------------------------------------------------------------
# What each batch operation looks like


def utf8(text):
    return text.encode("utf-8") if isinstance(text, str) else None


def b64_data(entry):
    """The decoded `Data` of a Kinesis or Firehose record (None if unreadable)."""
    data = entry.get("Data") if isinstance(entry, dict) else None
    if not isinstance(data, str):
        return None
    try:
        return base64.b64decode(data, validate=False)
    except (binascii.Error, ValueError):
        return None


def positional_merge(list_key, count_key, extra=None):
    """Answer merger for services that answer one result per entry, in request
    order (EventBridge, Kinesis, Firehose): the injected failures go back into
    their original slots, moto's results fill the others in order."""

    def merge(answer, entries, verdicts, code, message):
        answer = dict(answer) if answer else dict(extra or {})
        moto_results = iter(answer.get(list_key) or [])
        results = []
        for failed in verdicts:
            if failed:
                results.append({"ErrorCode": code, "ErrorMessage": message})
            else:
                results.append(next(moto_results, {}))
        answer[list_key] = results
        answer[count_key] = int(answer.get(count_key) or 0) + sum(verdicts)
        return answer

    return merge


def sqs_merge(answer, entries, verdicts, code, message):
    """SQS SendMessageBatch (JSON): failures are listed by Id in `Failed`."""
    answer = dict(answer) if answer else {}
    answer.setdefault("Successful", [])
    failed = list(answer.get("Failed") or [])
    for entry, fail in zip(entries, verdicts):
        if fail:
            failed.append({"Id": entry.get("Id"), "SenderFault": False, "Code": code, "Message": message})
    answer["Failed"] = failed
    return answer


# X-Amz-Target -> (api name, list of entries in the request, content of one
# entry, answer merger). All answers here are AWS JSON.
JSON_OPERATIONS = {
    "AmazonSQS.SendMessageBatch": (
        "SendMessageBatch",
        "Entries",
        lambda e: utf8(e.get("MessageBody")),
        sqs_merge,
    ),
    "AWSEvents.PutEvents": (
        "PutEvents",
        "Entries",
        lambda e: utf8(e.get("Detail")),
        positional_merge("Entries", "FailedEntryCount"),
    ),
    "Kinesis_20131202.PutRecords": (
        "PutRecords",
        "Records",
        b64_data,
        positional_merge("Records", "FailedRecordCount"),
    ),
    "Firehose_20150804.PutRecordBatch": (
        "PutRecordBatch",
        "Records",
        b64_data,
        positional_merge("RequestResponses", "FailedPutCount", extra={"Encrypted": False}),
    ),
}


def sns_failed_xml(entry_id, code, message):
    return (
        "<member><Id>{}</Id><Code>{}</Code><SenderFault>false</SenderFault>"
        "<Message>{}</Message></member>".format(escape(entry_id), escape(code), escape(message))
    )


def sns_merge_xml(xml, failures):
    """Adds `failures` (XML members) to the <Failed> list of a PublishBatch answer."""
    empty = re.search(r"<Failed\s*/>", xml)
    if empty:
        return xml[: empty.start()] + "<Failed>" + failures + "</Failed>" + xml[empty.end():]
    if "</Failed>" in xml:
        return xml.replace("</Failed>", failures + "</Failed>", 1)
    return xml.replace("</PublishBatchResult>", "<Failed>" + failures + "</Failed></PublishBatchResult>", 1)


def sns_whole_answer(failures):
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<PublishBatchResponse xmlns="{ns}"><PublishBatchResult><Successful/>'
        "<Failed>{failures}</Failed></PublishBatchResult>"
        "<ResponseMetadata><RequestId>{rid}</RequestId></ResponseMetadata>"
        "</PublishBatchResponse>".format(ns=SNS_NAMESPACE, failures=failures, rid=uuid.uuid4())
    )


def sqs_failed_xml(entry_id, code, message):
    return (
        "<BatchResultErrorEntry><Id>{}</Id><SenderFault>false</SenderFault><Code>{}</Code>"
        "<Message>{}</Message></BatchResultErrorEntry>".format(escape(entry_id), escape(code), escape(message))
    )


def sqs_merge_xml(xml, failures):
    """Adds `failures` to the (flattened) entries of a query-protocol
    SendMessageBatch answer."""
    empty = re.search(r"<SendMessageBatchResult\s*/>", xml)
    if empty:
        return (
            xml[: empty.start()]
            + "<SendMessageBatchResult>"
            + failures
            + "</SendMessageBatchResult>"
            + xml[empty.end():]
        )
    return xml.replace("</SendMessageBatchResult>", failures + "</SendMessageBatchResult>", 1)


def sqs_whole_answer(failures):
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<SendMessageBatchResponse xmlns="{ns}"><SendMessageBatchResult>{failures}</SendMessageBatchResult>'
        "<ResponseMetadata><RequestId>{rid}</RequestId></ResponseMetadata>"
        "</SendMessageBatchResponse>".format(ns=SQS_NAMESPACE, failures=failures, rid=uuid.uuid4())
    )


# Action (query protocol, form-encoded body) -> (api name, prefix of an
# entry's parameters, name of its content parameter, failed entry as XML,
# merger into moto's XML answer, whole answer when moto is not called).
QUERY_OPERATIONS = {
    "PublishBatch": (
        "PublishBatch",
        "PublishBatchRequestEntries.member.",
        "Message",
        sns_failed_xml,
        sns_merge_xml,
        sns_whole_answer,
    ),
    "SendMessageBatch": (
        "SendMessageBatch",
        "SendMessageBatchRequestEntry.",
        "MessageBody",
        sqs_failed_xml,
        sqs_merge_xml,
        sqs_whole_answer,
    ),
}


# ---------------------------------------------------------------------------
# The middleware


def read_body(environ):
    """Reads the request body and puts it back as a fresh stream."""
    length = environ.get("CONTENT_LENGTH") or ""
    stream = environ["wsgi.input"]
    if length.strip():
        body = stream.read(int(length)) if int(length) > 0 else b""
    elif environ.get("wsgi.input_terminated"):  # chunked upload, already de-chunked
        body = stream.read()
    else:
        body = b""
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    return body


def with_body(environ, body):
    """A copy of `environ` whose request body is `body` (Content-Length fixed)."""
    env = dict(environ)
    env["wsgi.input"] = io.BytesIO(body)
    env["CONTENT_LENGTH"] = str(len(body))
    env.pop("HTTP_CONTENT_MD5", None)
    return env


# Headers of moto's answer that no longer hold once the body is rewritten.
STALE_HEADERS = {"content-length", "content-md5", "x-amz-crc32", "transfer-encoding"}


class FaultInjector:
    def __init__(self, app, faults):
        self.app = app
        self.faults = faults

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path == "/_faults" or path.startswith("/_faults/"):
            return self.control(environ, start_response, path)
        if environ.get("REQUEST_METHOD") == "POST":
            target = environ.get("HTTP_X_AMZ_TARGET", "")
            if target in JSON_OPERATIONS:
                return self.json_batch(environ, start_response, target)
            if environ.get("CONTENT_TYPE", "").startswith("application/x-www-form-urlencoded") and not target:
                return self.query_batch(environ, start_response)
        return self.app(environ, start_response)

    # -- calling moto ------------------------------------------------------

    def call_moto(self, environ):
        """Runs moto on `environ`; returns (status, headers, body bytes)."""
        captured = {}
        chunks = []

        def capture(status, headers, exc_info=None):
            captured["status"] = status
            captured["headers"] = headers
            return chunks.append

        result = self.app(environ, capture)
        try:
            for chunk in result:
                chunks.append(chunk)
        finally:
            if hasattr(result, "close"):
                result.close()
        return captured["status"], captured["headers"], b"".join(chunks)

    @staticmethod
    def respond(start_response, status, headers, body):
        headers = [(k, v) for k, v in headers if k.lower() not in STALE_HEADERS]
        headers.append(("Content-Length", str(len(body))))
        start_response(status, headers)
        return [body]

    # -- AWS JSON protocol: SQS, EventBridge, Kinesis, Firehose --------------

    def json_batch(self, environ, start_response, target):
        api, list_key, content_of, merge = JSON_OPERATIONS[target]
        body = read_body(environ)
        try:
            request = json.loads(body or b"{}")
            entries = request.get(list_key)
        except (ValueError, AttributeError):
            return self.app(environ, start_response)  # let moto reject it
        if not isinstance(entries, list):
            return self.app(environ, start_response)
        contents = [content_of(e) if isinstance(e, dict) else None for e in entries]
        verdicts, code, message = self.faults.decide(api, contents)
        if not any(verdicts):
            return self.app(environ, start_response)

        kept = [e for e, failed in zip(entries, verdicts) if not failed]
        content_type = environ.get("CONTENT_TYPE") or "application/x-amz-json-1.1"
        if kept:
            request[list_key] = kept
            status, headers, answer_body = self.call_moto(with_body(environ, json.dumps(request).encode("utf-8")))
            if not status.startswith("200"):
                # moto refused what was left (no such queue, ...): pass that on.
                return self.respond(start_response, status, headers, answer_body)
            answer = json.loads(answer_body or b"{}")
        else:
            # Nothing left for moto: answer ourselves.
            status = "200 OK"
            headers = [("Content-Type", content_type), ("x-amzn-RequestId", str(uuid.uuid4()))]
            answer = None
        merged = merge(answer, entries, verdicts, code, message)
        log("{}: failed {} of {} entries".format(api, sum(verdicts), len(entries)))
        return self.respond(start_response, status, headers, json.dumps(merged).encode("utf-8"))

    # -- AWS query protocol: SNS PublishBatch (and SQS's old protocol) -------

    def query_batch(self, environ, start_response):
        body = read_body(environ)
        try:
            params = parse_qsl(body.decode("utf-8"), keep_blank_values=True)
        except UnicodeDecodeError:
            return self.app(environ, start_response)
        action = next((v for k, v in params if k == "Action"), None)
        if action not in QUERY_OPERATIONS:
            return self.app(environ, start_response)
        api, prefix, content_key, failed_xml, merge_xml, whole_answer = QUERY_OPERATIONS[action]

        # Group the entries' parameters by member number:
        # PublishBatchRequestEntries.member.2.Message -> members["2"]["Message"].
        member_re = re.compile(re.escape(prefix) + r"(\d+)\.(.+)$")
        members = {}
        for key, value in params:
            match = member_re.match(key)
            if match:
                members.setdefault(match.group(1), {})[match.group(2)] = value
        numbers = sorted(members, key=int)
        contents = [utf8(members[n].get(content_key)) for n in numbers]
        verdicts, code, message = self.faults.decide(api, contents)
        if not any(verdicts):
            return self.app(environ, start_response)

        failed_numbers = {n for n, failed in zip(numbers, verdicts) if failed}
        failures = "".join(
            failed_xml(members[n].get("Id", ""), code, message) for n in numbers if n in failed_numbers
        )
        log("{}: failed {} of {} entries".format(api, len(failed_numbers), len(numbers)))
        # Renumber the remaining members 1..k, in their original order.
        renumber = {}
        for n in numbers:
            if n not in failed_numbers:
                renumber[n] = str(len(renumber) + 1)
        if not renumber:
            answer = whole_answer(failures).encode("utf-8")
            headers = [("Content-Type", "text/xml"), ("x-amzn-RequestId", str(uuid.uuid4()))]
            return self.respond(start_response, "200 OK", headers, answer)

        new_params = []
        for key, value in params:
            match = member_re.match(key)
            if not match:
                new_params.append((key, value))
            elif match.group(1) in renumber:
                new_params.append((prefix + renumber[match.group(1)] + "." + match.group(2), value))
        new_body = urlencode(new_params).encode("utf-8")
        status, headers, answer_body = self.call_moto(with_body(environ, new_body))
        if not status.startswith("200"):
            return self.respond(start_response, status, headers, answer_body)
        answer = merge_xml(answer_body.decode("utf-8"), failures).encode("utf-8")
        return self.respond(start_response, status, headers, answer)

    # -- the control API ---------------------------------------------------

    def control(self, environ, start_response, path):
        method = environ.get("REQUEST_METHOD")

        def answer(status, value):
            body = json.dumps(value).encode("utf-8") if value is not None or status.startswith("200") else b""
            headers = [("Content-Type", "application/json")]
            return self.respond(start_response, status, headers, body)

        if path == "/_faults":
            if method == "GET":
                return answer("200 OK", self.faults.describe())
            if method == "DELETE":
                self.faults.disarm()
                return answer("204 No Content", None)
            if method == "POST":
                try:
                    rule = json.loads(read_body(environ) or b"null")
                    marker, times, code, message = parse_rule(rule)
                except ValueError as error:
                    return answer("400 Bad Request", {"error": str(error)})
                self.faults.arm(marker, times, code, message)
                log("armed: marker {!r}, times {}, code {}".format(marker, times, code))
                return answer("200 OK", self.faults.describe())
        elif path == "/_faults/requests":
            if method == "GET":
                return answer("200 OK", self.faults.seen())
            if method == "DELETE":
                self.faults.forget()
                return answer("204 No Content", None)
        else:
            return answer("404 Not Found", {"error": "no such path " + path})
        return answer("405 Method Not Allowed", {"error": "method {} not allowed on {}".format(method, path)})


def parse_rule(rule):
    """Checks a POST /_faults body; returns (marker, times, code, message)."""
    if not isinstance(rule, dict):
        raise ValueError("expected a JSON object")
    unknown = set(rule) - {"marker", "times", "code", "message"}
    if unknown:
        raise ValueError("unknown field(s): " + ", ".join(sorted(unknown)))
    marker = rule.get("marker")
    if not isinstance(marker, str) or not marker:
        raise ValueError("marker must be a non-empty string")
    times = rule.get("times", 1)
    if isinstance(times, bool) or not isinstance(times, int) or (times < 1 and times != -1):
        raise ValueError("times must be a positive integer, or -1 for always")
    code = rule.get("code", DEFAULT_CODE)
    message = rule.get("message", DEFAULT_MESSAGE)
    if not isinstance(code, str) or not code or not isinstance(message, str):
        raise ValueError("code and message must be strings")
    return marker, times, code, message


# ---------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description="moto's AWS services with fault injection, on 127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="port to listen on (0: any free port)")
    parser.add_argument("--host", default="127.0.0.1", help=argparse.SUPPRESS)
    args = parser.parse_args()

    # moto builds some URLs from MOTO_PORT; set it before moto is imported.
    if args.port:
        os.environ.setdefault("MOTO_PORT", str(args.port))

    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    app = FaultInjector(DomainDispatcherApplication(create_backend_app), Faults())
    server = make_server(args.host, args.port, app, threaded=True, request_handler=MotoRequestHandler)

    def stop(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log("listening on http://{}:{}".format(args.host, server.server_port))
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
