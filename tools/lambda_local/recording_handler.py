"""A Lambda handler for dynastream's Lambda target tests: it records what it
is given, and fails on demand.

    RECORDS_FILE=/tmp/records.jsonl \\
        python3 tools/lambda_local/server.py --port 0 --path tools/lambda_local --handler recording_handler.handler

For each invocation (a DynamoDB stream event, `{"Records": [...]}`):

- if any record's NewImage has `fail` = {"S": "always"}, it raises, and
  writes nothing: the whole batch fails (Lambda: X-Amz-Function-Error);
- otherwise it appends each record, as one line of JSON, to the file named
  by the environment variable RECORDS_FILE, except the records whose
  NewImage has `fail` = {"S": "item"}: those it reports as
  `{"batchItemFailures": [{"itemIdentifier": <dynamodb.SequenceNumber>}]}`;
- it returns `{}` when nothing failed.
"""

import json
import os


def fail_mark(record):
    """The record's NewImage `fail` attribute, e.g. {"S": "item"}, or None."""
    return ((record.get("dynamodb") or {}).get("NewImage") or {}).get("fail")


def handler(event, context):
    records = event.get("Records") or []
    for record in records:
        if fail_mark(record) == {"S": "always"}:
            raise RuntimeError(
                "record {} asks to fail the batch".format((record.get("dynamodb") or {}).get("SequenceNumber"))
            )

    path = os.environ.get("RECORDS_FILE")
    if not path:
        raise RuntimeError("RECORDS_FILE is not set")

    failures = []
    lines = []
    for record in records:
        if fail_mark(record) == {"S": "item"}:
            failures.append({"itemIdentifier": record["dynamodb"]["SequenceNumber"]})
        else:
            lines.append(json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n")
    # One write per invocation, so that a reader never sees half a batch.
    with open(path, "a", encoding="utf-8") as out:
        out.write("".join(lines))
    if failures:
        return {"batchItemFailures": failures}
    return {}
