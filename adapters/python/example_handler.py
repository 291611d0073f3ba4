"""An ordinary Lambda handler for a DynamoDB stream, unchanged for dynastream.

    DYNASTREAM_PROCESSOR=exec
    DYNASTREAM_EXEC_COMMAND='python3 adapters/python/dynastream_lambda.py --path adapters/python example_handler.handler'

It prints one line per record. Under Lambda that goes to CloudWatch Logs;
under dynastream the adapter sends it to stderr, next to dynastream's logs.
"""

import json


def plain(image):
    """DynamoDB JSON ({"S": "x"}, {"N": "1"}) to plain values, for printing."""
    out = {}
    for name, value in (image or {}).items():
        (kind, raw), = value.items()
        if kind == "N":
            out[name] = float(raw) if any(c in raw for c in ".eE") else int(raw)
        elif kind == "M":
            out[name] = plain(raw)
        else:
            out[name] = raw
    return out


def handler(event, context):
    for record in event["Records"]:
        name = record["eventName"]
        change = record["dynamodb"]
        keys = json.dumps(plain(change["Keys"]), sort_keys=True, separators=(",", ":"))
        if name == "INSERT":
            print("INSERT {} new={}".format(keys, json.dumps(plain(change.get("NewImage")), sort_keys=True, separators=(",", ":"))))
        elif name == "MODIFY":
            print(
                "MODIFY {} old={} new={}".format(
                    keys,
                    json.dumps(plain(change.get("OldImage")), sort_keys=True, separators=(",", ":")),
                    json.dumps(plain(change.get("NewImage")), sort_keys=True, separators=(",", ":")),
                )
            )
        elif name == "REMOVE":
            print("REMOVE {} old={}".format(keys, json.dumps(plain(change.get("OldImage")), sort_keys=True, separators=(",", ":"))))
    print("{} record(s) in request {}".format(len(event["Records"]), context.aws_request_id))
    return {"batchItemFailures": []}
