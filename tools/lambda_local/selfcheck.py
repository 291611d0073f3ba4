#!/usr/bin/env python3
"""Checks tools/lambda_local/server.py through boto3's Lambda client: starts
it with recording_handler.handler, invokes it the ways dynastream's Lambda
target does, and stops it with SIGTERM.

    ~/.cache/dynastream/moto-5.2.5/bin/python tools/lambda_local/selfcheck.py

Needs boto3 (the moto venv of scripts/aws-local has it); the server itself
runs with the system python3. Exits 1 if a check failed.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

HERE = os.path.dirname(os.path.abspath(__file__))
FAILURES = []


def check(condition, what, detail=None):
    print(("ok    " if condition else "FAIL  ") + what + ("" if condition or detail is None else ": " + str(detail)))
    if not condition:
        FAILURES.append(what)


def record(seq, fail=None):
    image = {"pk": {"S": "k" + seq}}
    if fail:
        image["fail"] = {"S": fail}
    return {
        "eventID": "e" + seq,
        "eventName": "INSERT",
        "eventSource": "aws:dynamodb",
        "dynamodb": {"Keys": {"pk": {"S": "k" + seq}}, "NewImage": image, "SequenceNumber": seq},
    }


def main():
    records_file = tempfile.NamedTemporaryFile(prefix="lambda-local-", suffix=".jsonl", delete=False).name
    env = dict(os.environ, RECORDS_FILE=records_file)
    server = subprocess.Popen(
        ["python3", os.path.join(HERE, "server.py"), "--port", "0", "--path", HERE,
         "--handler", "recording_handler.handler", "--function", "recorder"],
        stdout=subprocess.PIPE, env=env,
    )
    try:
        first = server.stdout.readline().decode()
        endpoint = json.loads(first)["endpoint"]
        check(first == json.dumps({"endpoint": endpoint}, separators=(",", ":")) + "\n", "one endpoint line on stdout", first)
        client = boto3.client(
            "lambda", endpoint_url=endpoint, region_name="us-east-1",
            aws_access_key_id="local", aws_secret_access_key="local",
            config=Config(retries={"max_attempts": 1}),
        )

        def invoke(records, name="recorder", **kwargs):
            answer = client.invoke(FunctionName=name, Payload=json.dumps({"Records": records}).encode(), **kwargs)
            payload = answer["Payload"].read()
            return answer, (json.loads(payload) if payload else None)

        answer, payload = invoke([record("1"), record("2")])
        check(answer["StatusCode"] == 200 and payload == {} and "FunctionError" not in answer, "RequestResponse: 200 {}", (answer, payload))
        check(answer.get("ExecutedVersion") == "$LATEST", "ExecutedVersion $LATEST")

        answer, payload = invoke([record("3"), record("4", fail="item"), record("5")])
        check(payload == {"batchItemFailures": [{"itemIdentifier": "4"}]}, "batchItemFailures for fail=item", payload)

        answer, payload = invoke([record("6"), record("7", fail="always")])
        check(
            answer["StatusCode"] == 200 and answer.get("FunctionError") == "Unhandled"
            and payload["errorType"] == "RuntimeError" and "errorMessage" in payload,
            "handler raised: 200, FunctionError Unhandled, errorType/errorMessage", (answer.get("FunctionError"), payload),
        )

        arn = "arn:aws:lambda:us-east-1:123456789012:function:recorder"
        answer, payload = invoke([record("8")], name=arn, Qualifier="$LATEST")
        check(answer["StatusCode"] == 200 and payload == {}, "FunctionName as an ARN, with Qualifier")

        try:
            invoke([record("9")], name="someone-else")
            check(False, "unknown function: ResourceNotFoundException")
        except ClientError as error:
            check(
                error.response["Error"]["Code"] == "ResourceNotFoundException"
                and error.response["ResponseMetadata"]["HTTPStatusCode"] == 404,
                "unknown function: 404 ResourceNotFoundException", error.response["Error"],
            )

        try:
            client.invoke(FunctionName="recorder", Payload=b'{"Records": [')
            check(False, "malformed JSON: InvalidRequestContentException")
        except ClientError as error:
            check(error.response["Error"]["Code"] == "InvalidRequestContentException", "malformed JSON: 400 InvalidRequestContentException", error.response["Error"])

        answer, payload = invoke([record("10")], InvocationType="DryRun")
        check(answer["StatusCode"] == 204 and payload is None, "DryRun: 204, nothing run")
        answer, payload = invoke([record("11")], InvocationType="Event")
        check(answer["StatusCode"] == 202 and payload is None, "Event: 202, empty")

        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with open(records_file) as f:
                seen = [json.loads(line)["dynamodb"]["SequenceNumber"] for line in f]
            if "11" in seen:
                break
            time.sleep(0.1)
        check(seen == ["1", "2", "3", "5", "8", "11"], "records written: all but the failed ones and the dry run", seen)
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=10)
        check(code == 0, "SIGTERM: exit 0", code)
        os.unlink(records_file)
    print("{} failure(s)".format(len(FAILURES)))
    sys.exit(1 if FAILURES else 0)


if __name__ == "__main__":
    main()
