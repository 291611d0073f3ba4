#!/usr/bin/env python3
"""Checks, through real boto3 calls, what dynastream's delivery-target tests
rely on in a running tools/aws_local/server.py (moto + fault injection).

    EP=$(scripts/aws-local start)
    ~/.cache/dynastream/moto-5.2.5/bin/python tools/aws_local/selfcheck.py "$EP" [-v]
    scripts/aws-local stop --port "${EP##*:}"

Run with the moto venv's python (it has boto3). Prints one line per check
(`ok` or `FAIL`) and, with -v, the shapes of what was delivered; exits 1 if
any check failed. Every name it creates is unique, so it can run against a
server that is in use, but it arms and disarms the fault rule: don't run it
while tests use the same server.
"""

import json
import sys
import time
import urllib.parse
import urllib.request
import uuid

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

ENDPOINT = None
VERBOSE = False
FAILURES = []
ACCOUNT = "123456789012"  # moto's default account


def check(condition, what, detail=None):
    if condition:
        print("ok    " + what)
    else:
        FAILURES.append(what)
        print("FAIL  " + what + ("" if detail is None else ": " + str(detail)))


def show(label, value):
    if VERBOSE:
        text = value if isinstance(value, str) else json.dumps(value, indent=2, sort_keys=True, default=str)
        print("      {}:\n{}".format(label, "\n".join("        " + line for line in text.splitlines())))


def client(service, **config):
    return boto3.client(
        service,
        endpoint_url=ENDPOINT,
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
        config=Config(retries={"max_attempts": 1}, **config),
    )


def unique(prefix):
    return "{}-{}".format(prefix, uuid.uuid4().hex[:8])


def control(method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(ENDPOINT + path, data=data, method=method)
    with urllib.request.urlopen(request) as answer:
        text = answer.read()
    return json.loads(text) if text else None


def drain(sqs, queue_url, expect=None, wait=5.0):
    """All messages in the queue (deleting them); waits up to `wait` seconds
    for `expect` messages if given."""
    messages = []
    deadline = time.monotonic() + wait
    while True:
        got = sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, MessageAttributeNames=["All"], AttributeNames=["All"]
        ).get("Messages", [])
        for message in got:
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
        messages.extend(got)
        if not got and (expect is None or len(messages) >= expect or time.monotonic() > deadline):
            return messages
        if not got:
            time.sleep(0.1)


def queue(sqs, name, fifo=False):
    attributes = {"FifoQueue": "true"} if fifo else {}
    url = sqs.create_queue(QueueName=name + (".fifo" if fifo else ""), Attributes=attributes)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return url, arn


# ---------------------------------------------------------------------------
# Item 3: what moto does


def check_sns_to_sqs():
    sqs, sns = client("sqs"), client("sns")
    url, arn = queue(sqs, unique("sns-std"))
    topic = sns.create_topic(Name=unique("topic"))["TopicArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)
    answer = sns.publish_batch(
        TopicArn=topic,
        PublishBatchRequestEntries=[
            {
                "Id": "a",
                "Message": '{"n":1}',
                "MessageAttributes": {"kind": {"DataType": "String", "StringValue": "INSERT"}},
            },
            {"Id": "b", "Message": '{"n":2}'},
        ],
    )
    check(len(answer["Successful"]) == 2 and not answer["Failed"], "SNS PublishBatch (standard topic) accepted")
    messages = drain(sqs, url, expect=2)
    check(len(messages) == 2, "SNS -> SQS (standard): both messages in the subscribed queue", len(messages))
    if messages:
        envelope = json.loads(messages[0]["Body"])
        show("SQS body of an SNS message (standard topic)", envelope)
        check(
            envelope.get("Type") == "Notification" and "Message" in envelope,
            "SNS -> SQS body is the SNS envelope JSON with Type=Notification and Message",
        )
        with_attrs = [json.loads(m["Body"]) for m in messages if "MessageAttributes" in json.loads(m["Body"])]
        if with_attrs:
            show("envelope MessageAttributes", with_attrs[0]["MessageAttributes"])
        check(
            bool(with_attrs) and with_attrs[0]["MessageAttributes"]["kind"] == {"Type": "String", "Value": "INSERT"},
            "SNS envelope carries MessageAttributes as {name: {Type, Value}}",
        )

    # Raw message delivery: the body is the message itself.
    raw_url, raw_arn = queue(sqs, unique("sns-raw"))
    sub = sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=raw_arn, ReturnSubscriptionArn=True)
    sns.set_subscription_attributes(
        SubscriptionArn=sub["SubscriptionArn"], AttributeName="RawMessageDelivery", AttributeValue="true"
    )
    sns.publish_batch(TopicArn=topic, PublishBatchRequestEntries=[{"Id": "r", "Message": "raw-body"}])
    raw = drain(sqs, raw_url, expect=1)
    check(len(raw) == 1 and raw[0]["Body"] == "raw-body", "SNS -> SQS with RawMessageDelivery: body is the message")


def check_sns_fifo():
    sqs, sns = client("sqs"), client("sns")
    url, arn = queue(sqs, unique("sns-fifo"), fifo=True)
    topic = sns.create_topic(
        Name=unique("topic") + ".fifo", Attributes={"FifoTopic": "true", "ContentBasedDeduplication": "false"}
    )["TopicArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)
    entries = [
        {"Id": "a", "Message": "m1", "MessageGroupId": "g1", "MessageDeduplicationId": "d1"},
        {"Id": "b", "Message": "m2", "MessageGroupId": "g1", "MessageDeduplicationId": "d2"},
    ]
    answer = sns.publish_batch(TopicArn=topic, PublishBatchRequestEntries=entries)
    show("PublishBatch answer (FIFO topic)", {k: answer[k] for k in ("Successful", "Failed")})
    check(len(answer["Successful"]) == 2, "SNS PublishBatch (FIFO topic, MessageGroupId/MessageDeduplicationId) accepted")
    messages = drain(sqs, url, expect=2)
    check(len(messages) == 2, "SNS FIFO -> SQS FIFO: both messages in the queue", len(messages))
    if messages:
        show("SQS body of an SNS FIFO message", json.loads(messages[0]["Body"]))
        show("its SQS attributes", messages[0]["Attributes"])
        check(
            messages[0]["Attributes"].get("MessageGroupId") == "g1",
            "SNS FIFO -> SQS FIFO keeps MessageGroupId",
            messages[0]["Attributes"],
        )
    # The same deduplication ids again, within the 5-minute window, after the
    # first messages were received and deleted.
    sns.publish_batch(TopicArn=topic, PublishBatchRequestEntries=entries)
    again = drain(sqs, url, expect=2, wait=1.0)
    print(
        "info  SNS FIFO: the same 2 MessageDeduplicationIds again, after the queue was drained:"
        " {} of 2 message(s) in the queue".format(len(again))
    )
    # ... and twice in a row, the queue still holding the first ones.
    sns.publish_batch(TopicArn=topic, PublishBatchRequestEntries=entries)
    sns.publish_batch(TopicArn=topic, PublishBatchRequestEntries=entries)
    twice = drain(sqs, url, expect=2, wait=1.0)
    print(
        "info  SNS FIFO: the same 2 MessageDeduplicationIds published twice, queue not drained in between:"
        " {} of 4 message(s) in the queue".format(len(twice))
    )
    answer = sns.publish_batch(TopicArn=topic, PublishBatchRequestEntries=[{"Id": "n", "Message": "m", "MessageGroupId": "g"}])
    print("info  SNS FIFO without MessageDeduplicationId (no content-based dedup): Failed {}".format(answer["Failed"]))


def check_eventbridge_to_sqs():
    sqs, events = client("sqs"), client("events")
    url, arn = queue(sqs, unique("eb"))
    bus = unique("bus")
    events.create_event_bus(Name=bus)
    rule = unique("rule")
    events.put_rule(Name=rule, EventBusName=bus, EventPattern=json.dumps({"source": ["dynastream"]}))
    events.put_targets(Rule=rule, EventBusName=bus, Targets=[{"Id": "q", "Arn": arn}])
    answer = events.put_events(
        Entries=[
            {"Source": "dynastream", "DetailType": "INSERT", "Detail": '{"n":1}', "EventBusName": bus},
            {"Source": "other", "DetailType": "INSERT", "Detail": '{"n":2}', "EventBusName": bus},
        ]
    )
    check(answer["FailedEntryCount"] == 0 and len(answer["Entries"]) == 2, "EventBridge PutEvents on a custom bus accepted")
    messages = drain(sqs, url, expect=1, wait=2.0)
    check(len(messages) == 1, "EventBridge rule (source pattern) -> SQS target: only the matching event delivered", len(messages))
    if messages:
        body = json.loads(messages[0]["Body"])
        show("SQS body of an EventBridge event", body)
        check(
            body.get("detail") == {"n": 1} and body.get("detail-type") == "INSERT" and body.get("source") == "dynastream",
            "EventBridge -> SQS body is the event envelope, detail parsed as JSON",
        )


def check_kinesis():
    kinesis = client("kinesis")
    stream = unique("stream")
    kinesis.create_stream(StreamName=stream, ShardCount=1)
    answer = kinesis.put_records(
        StreamName=stream,
        Records=[{"Data": b"one", "PartitionKey": "k1"}, {"Data": b"two", "PartitionKey": "k2"}],
    )
    check(answer["FailedRecordCount"] == 0, "Kinesis PutRecords accepted")
    show("PutRecords answer", {k: answer[k] for k in answer if k != "ResponseMetadata"})
    shard = kinesis.describe_stream(StreamName=stream)["StreamDescription"]["Shards"][0]["ShardId"]
    iterator = kinesis.get_shard_iterator(StreamName=stream, ShardId=shard, ShardIteratorType="TRIM_HORIZON")[
        "ShardIterator"
    ]
    records = kinesis.get_records(ShardIterator=iterator)["Records"]
    check([r["Data"] for r in records] == [b"one", b"two"], "Kinesis GetShardIterator + GetRecords reads them back")
    if records:
        show("a record", records[0])


def firehose_stream(s3, firehose, buffering=None):
    bucket = unique("fh-bucket")
    s3.create_bucket(Bucket=bucket)
    stream = unique("fh")
    destination = {
        "RoleARN": "arn:aws:iam::{}:role/firehose".format(ACCOUNT),
        "BucketARN": "arn:aws:s3:::" + bucket,
        "Prefix": "dynastream/",
    }
    if buffering:
        destination["BufferingHints"] = buffering
    firehose.create_delivery_stream(
        DeliveryStreamName=stream, DeliveryStreamType="DirectPut", ExtendedS3DestinationConfiguration=destination
    )
    return bucket, stream


def s3_objects(s3, bucket):
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    return {key: s3.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys}


def check_firehose():
    s3 = client("s3", s3={"addressing_style": "path"})
    firehose = client("firehose")
    bucket, stream = firehose_stream(s3, firehose, buffering={"IntervalInSeconds": 300, "SizeInMBs": 64})
    answer = firehose.put_record_batch(
        DeliveryStreamName=stream, Records=[{"Data": b'{"n":1}\n'}, {"Data": b'{"n":2}\n'}, {"Data": b"no-newline"}]
    )
    check(answer["FailedPutCount"] == 0, "Firehose PutRecordBatch accepted")
    show("PutRecordBatch answer", {k: answer[k] for k in answer if k != "ResponseMetadata"})
    objects = s3_objects(s3, bucket)  # right away: no waiting
    show("S3 objects right after PutRecordBatch (buffering hints 300 s / 64 MB)", {k: v.decode() for k, v in objects.items()})
    check(len(objects) == 1, "Firehose -> S3: one object per PutRecordBatch, written synchronously", list(objects))
    if objects:
        (key, body), = objects.items()
        check(body == b'{"n":1}\n{"n":2}\nno-newline', "Firehose -> S3: records concatenated raw (no separator added)", body)
        check(key.startswith("dynastream/"), "Firehose -> S3 key starts with the Prefix", key)
    firehose.put_record(DeliveryStreamName=stream, Record={"Data": b"single"})
    check(len(s3_objects(s3, bucket)) == 2, "Firehose PutRecord writes one more object")


def check_s3_path_style():
    s3 = client("s3", s3={"addressing_style": "path"})
    bucket = unique("bucket")
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="a/b/one.json", Body=b'{"x":1}', ContentType="application/json")
    s3.put_object(Bucket=bucket, Key="a/b/two.json", Body=b'{"x":2}')
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="a/")
    keys = [o["Key"] for o in listed.get("Contents", [])]
    check(keys == ["a/b/one.json", "a/b/two.json"], "S3 path-style PutObject + ListObjectsV2", keys)
    got = s3.get_object(Bucket=bucket, Key="a/b/one.json")
    check(got["Body"].read() == b'{"x":1}' and got["ContentType"] == "application/json", "S3 GetObject")


def check_step_functions():
    sfn = client("stepfunctions")
    definition = json.dumps({"StartAt": "Done", "States": {"Done": {"Type": "Pass", "End": True}}})
    machine = sfn.create_state_machine(
        name=unique("machine"), definition=definition, roleArn="arn:aws:iam::{}:role/sfn".format(ACCOUNT)
    )["stateMachineArn"]
    first = sfn.start_execution(stateMachineArn=machine, name="exec-1", input='{"n":1}')
    show("StartExecution answer", {k: first[k] for k in first if k != "ResponseMetadata"})
    try:
        second = sfn.start_execution(stateMachineArn=machine, name="exec-1", input='{"n":1}')
        outcome = "same executionArn" if second["executionArn"] == first["executionArn"] else "a new executionArn"
        print("info  Step Functions: StartExecution again, same name and input -> {}".format(outcome))
    except ClientError as error:
        outcome = "error " + error.response["Error"]["Code"]
        print("info  Step Functions: StartExecution again, same name and input -> {}".format(outcome))
    try:
        sfn.start_execution(stateMachineArn=machine, name="exec-1", input='{"n":2}')
        print("info  Step Functions: StartExecution again, same name, other input -> accepted")
    except ClientError as error:
        print("info  Step Functions: StartExecution again, same name, other input -> error " + error.response["Error"]["Code"])
    sfn.start_execution(stateMachineArn=machine, name="exec-2", input='{"n":3}')
    sfn.stop_execution(executionArn=first["executionArn"])
    try:
        sfn.start_execution(stateMachineArn=machine, name="exec-1", input='{"n":1}')
        print("info  Step Functions: same name and input after StopExecution -> accepted")
    except ClientError as error:
        print("info  Step Functions: same name and input after StopExecution -> error " + error.response["Error"]["Code"])
    executions = sfn.list_executions(stateMachineArn=machine)["executions"]
    show("ListExecutions", [{k: e[k] for k in ("name", "status")} for e in executions])
    check(len(executions) == 2, "Step Functions ListExecutions counts one execution per distinct name", len(executions))
    description = sfn.describe_execution(executionArn=first["executionArn"])
    print("info  Step Functions: DescribeExecution status {} input {}".format(description["status"], description["input"]))


def check_sqs_fifo_dedup():
    sqs = client("sqs")
    url, _ = queue(sqs, unique("fifo"), fifo=True)
    entries = [
        {"Id": "a", "MessageBody": "m1", "MessageGroupId": "g", "MessageDeduplicationId": "d1"},
        {"Id": "b", "MessageBody": "m2", "MessageGroupId": "g", "MessageDeduplicationId": "d2"},
    ]
    first = sqs.send_message_batch(QueueUrl=url, Entries=entries)
    second = sqs.send_message_batch(QueueUrl=url, Entries=entries)
    check(len(first["Successful"]) == 2 and len(second["Successful"]) == 2, "SQS FIFO SendMessageBatch: repeats also answer Successful")
    same_ids = [s["MessageId"] for s in first["Successful"]] == [s["MessageId"] for s in second["Successful"]]
    print("info  SQS FIFO: a deduplicated repeat returns {} MessageId".format("the same" if same_ids else "a new"))
    messages = drain(sqs, url, expect=2, wait=1.0)
    check(sorted(m["Body"] for m in messages) == ["m1", "m2"], "SQS FIFO dedups repeated MessageDeduplicationIds", [m["Body"] for m in messages])
    # moto compares with the messages still in the queue only: once deleted,
    # the same id is accepted again (AWS would dedup for 5 minutes).
    sqs.send_message_batch(QueueUrl=url, Entries=entries)
    after = drain(sqs, url, expect=2, wait=1.0)
    print("info  SQS FIFO: the same 2 MessageDeduplicationIds after the first were deleted: {} of 2 message(s) stored".format(len(after)))


# ---------------------------------------------------------------------------
# The fault injection


def check_faults_sqs():
    sqs = client("sqs")
    url, _ = queue(sqs, unique("fault-sqs"))
    control("DELETE", "/_faults/requests")
    control("POST", "/_faults", {"marker": "boom", "times": 1})
    entries = [{"Id": "1", "MessageBody": "fine-1"}, {"Id": "2", "MessageBody": "a boom here"}, {"Id": "3", "MessageBody": "fine-3"}]
    answer = sqs.send_message_batch(QueueUrl=url, Entries=entries)
    show("SendMessageBatch answer with a failed entry", {k: answer[k] for k in ("Successful", "Failed")})
    check(
        [s["Id"] for s in answer["Successful"]] == ["1", "3"]
        and answer["Failed"] == [{"Id": "2", "SenderFault": False, "Code": "InternalError", "Message": answer["Failed"][0]["Message"]}],
        "fault: SQS SendMessageBatch (JSON) reports the marked entry in Failed",
        answer,
    )
    check(sorted(m["Body"] for m in drain(sqs, url, expect=2)) == ["fine-1", "fine-3"], "fault: SQS the failed entry is not stored")
    again = sqs.send_message_batch(QueueUrl=url, Entries=entries)
    check(len(again["Successful"]) == 3 and not again.get("Failed"), "fault: times=1 -> the retry goes through")
    drain(sqs, url, expect=3)

    # All entries failing: answered without moto.
    control("POST", "/_faults", {"marker": "boom", "times": -1, "code": "ServiceUnavailable"})
    answer = sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": "x", "MessageBody": "boom"}, {"Id": "y", "MessageBody": "boom!"}])
    check(
        answer["Successful"] == [] and [f["Code"] for f in answer["Failed"]] == ["ServiceUnavailable"] * 2,
        "fault: SQS all entries failed (times -1, custom code)",
        answer,
    )
    answer = sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": "x", "MessageBody": "boom"}])
    check(len(answer["Failed"]) == 1, "fault: times -1 fails every time")
    check(drain(sqs, url, wait=0.5) == [], "fault: SQS nothing stored when all failed")

    # The old query protocol, with a hand-made (unchecked) SigV4 header so that
    # moto routes it to SQS.
    control("POST", "/_faults", {"marker": "boom", "times": 1})
    form = {
        "Action": "SendMessageBatch",
        "Version": "2012-11-05",
        "QueueUrl": url,
        "SendMessageBatchRequestEntry.1.Id": "q1",
        "SendMessageBatchRequestEntry.1.MessageBody": "boom query",
        "SendMessageBatchRequestEntry.2.Id": "q2",
        "SendMessageBatchRequestEntry.2.MessageBody": "fine query",
    }
    request = urllib.request.Request(
        ENDPOINT + "/",
        data=urllib.parse.urlencode(form).encode(),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Authorization": "AWS4-HMAC-SHA256 Credential=local/20250101/us-east-1/sqs/aws4_request, "
            "SignedHeaders=host, Signature=0",
        },
    )
    with urllib.request.urlopen(request) as response:
        xml = response.read().decode()
    show("SendMessageBatch (query protocol) answer", xml)
    check(
        "<BatchResultErrorEntry><Id>q1</Id>" in xml and "<Id>q2</Id>" in xml,
        "fault: SQS SendMessageBatch (query protocol) reports the marked entry",
        xml,
    )
    check([m["Body"] for m in drain(sqs, url, expect=1)] == ["fine query"], "fault: SQS (query) only the other entry stored")
    control("DELETE", "/_faults")
    seen = control("GET", "/_faults/requests")
    show("GET /_faults/requests", seen)
    check(
        seen
        == [
            {"api": "SendMessageBatch", "entries": 3, "failed": 1},
            {"api": "SendMessageBatch", "entries": 3, "failed": 0},
            {"api": "SendMessageBatch", "entries": 2, "failed": 2},
            {"api": "SendMessageBatch", "entries": 1, "failed": 1},
            {"api": "SendMessageBatch", "entries": 2, "failed": 1},
        ],
        "fault: GET /_faults/requests lists the batch requests",
        seen,
    )


def check_faults_sns():
    sqs, sns = client("sqs"), client("sns")
    url, arn = queue(sqs, unique("fault-sns"))
    topic = sns.create_topic(Name=unique("fault-topic"))["TopicArn"]
    sub = sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn, ReturnSubscriptionArn=True)
    sns.set_subscription_attributes(SubscriptionArn=sub["SubscriptionArn"], AttributeName="RawMessageDelivery", AttributeValue="true")
    control("POST", "/_faults", {"marker": "boom", "times": 1})
    entries = [
        {"Id": "1", "Message": "fine-1"},
        {"Id": "2", "Message": "boom"},
        {"Id": "3", "Message": "fine-3", "MessageAttributes": {"k": {"DataType": "String", "StringValue": "v"}}},
    ]
    answer = sns.publish_batch(TopicArn=topic, PublishBatchRequestEntries=entries)
    show("PublishBatch answer with a failed entry", {k: answer[k] for k in ("Successful", "Failed")})
    check(
        [s["Id"] for s in answer["Successful"]] == ["1", "3"]
        and [(f["Id"], f["Code"], f["SenderFault"]) for f in answer["Failed"]] == [("2", "InternalError", False)],
        "fault: SNS PublishBatch reports the marked entry in Failed",
        answer,
    )
    delivered = drain(sqs, url, expect=2)
    check(sorted(m["Body"] for m in delivered) == ["fine-1", "fine-3"], "fault: SNS the failed entry is not published")
    check(
        any(m.get("MessageAttributes", {}).get("k", {}).get("StringValue") == "v" for m in delivered),
        "fault: SNS renumbered members keep their attributes",
    )
    control("POST", "/_faults", {"marker": "boom", "times": -1})
    answer = sns.publish_batch(TopicArn=topic, PublishBatchRequestEntries=[{"Id": "only", "Message": "boom"}])
    check(answer["Successful"] == [] and [f["Id"] for f in answer["Failed"]] == ["only"], "fault: SNS all entries failed", answer)
    control("DELETE", "/_faults")
    check(drain(sqs, url, wait=0.5) == [], "fault: SNS nothing published when all failed")


def check_faults_eventbridge():
    sqs, events = client("sqs"), client("events")
    url, arn = queue(sqs, unique("fault-eb"))
    bus = unique("fault-bus")
    events.create_event_bus(Name=bus)
    events.put_rule(Name="all", EventBusName=bus, EventPattern=json.dumps({"source": ["dynastream"]}))
    events.put_targets(Rule="all", EventBusName=bus, Targets=[{"Id": "q", "Arn": arn}])
    control("POST", "/_faults", {"marker": "boom", "times": 1, "code": "ThrottlingException"})

    def entry(detail):
        return {"Source": "dynastream", "DetailType": "t", "Detail": json.dumps(detail), "EventBusName": bus}

    answer = events.put_events(Entries=[entry({"n": 1}), entry({"n": "boom"}), entry({"n": 3})])
    show("PutEvents answer with a failed entry", {k: answer[k] for k in ("FailedEntryCount", "Entries")})
    results = answer["Entries"]
    check(
        answer["FailedEntryCount"] == 1
        and "EventId" in results[0]
        and results[1].get("ErrorCode") == "ThrottlingException"
        and "EventId" in results[2],
        "fault: EventBridge PutEvents reports the marked entry in its slot",
        answer,
    )
    delivered = sorted(json.loads(m["Body"])["detail"]["n"] for m in drain(sqs, url, expect=2))
    check(delivered == [1, 3], "fault: EventBridge the failed entry is not delivered", delivered)
    control("POST", "/_faults", {"marker": "boom", "times": -1})
    answer = events.put_events(Entries=[entry("boom"), entry("boom2")])
    check(answer["FailedEntryCount"] == 2 and all("ErrorCode" in e for e in answer["Entries"]), "fault: EventBridge all entries failed")
    control("DELETE", "/_faults")


def check_faults_kinesis():
    kinesis, stream = client("kinesis"), unique("fault-stream")
    kinesis.create_stream(StreamName=stream, ShardCount=1)
    shard = kinesis.describe_stream(StreamName=stream)["StreamDescription"]["Shards"][0]["ShardId"]
    control("POST", "/_faults", {"marker": "boom", "times": 2})
    records = [{"Data": b"boom-1", "PartitionKey": "a"}, {"Data": b"fine", "PartitionKey": "b"}, {"Data": b"boom-2", "PartitionKey": "c"}]
    answer = kinesis.put_records(StreamName=stream, Records=records)
    show("PutRecords answer with failed records", {k: answer[k] for k in ("FailedRecordCount", "Records")})
    slots = answer["Records"]
    check(
        answer["FailedRecordCount"] == 2
        and slots[0].get("ErrorCode") == "InternalError"
        and "SequenceNumber" in slots[1]
        and slots[2].get("ErrorCode") == "InternalError",
        "fault: Kinesis PutRecords reports the marked records in their slots",
        answer,
    )
    check(kinesis.put_records(StreamName=stream, Records=records)["FailedRecordCount"] == 2, "fault: times=2 fails twice")
    check(kinesis.put_records(StreamName=stream, Records=records)["FailedRecordCount"] == 0, "fault: ... then not")
    iterator = kinesis.get_shard_iterator(StreamName=stream, ShardId=shard, ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    data = [r["Data"] for r in kinesis.get_records(ShardIterator=iterator)["Records"]]
    check(data == [b"fine", b"fine", b"boom-1", b"fine", b"boom-2"], "fault: Kinesis failed records are not stored", data)
    control("DELETE", "/_faults")


def check_faults_firehose():
    s3 = client("s3", s3={"addressing_style": "path"})
    firehose = client("firehose")
    bucket, stream = firehose_stream(s3, firehose)
    control("POST", "/_faults", {"marker": "boom", "times": 1})
    answer = firehose.put_record_batch(DeliveryStreamName=stream, Records=[{"Data": b"a\n"}, {"Data": b"boom\n"}, {"Data": b"c\n"}])
    show("PutRecordBatch answer with a failed record", {k: answer[k] for k in ("FailedPutCount", "Encrypted", "RequestResponses")})
    slots = answer["RequestResponses"]
    check(
        answer["FailedPutCount"] == 1 and "RecordId" in slots[0] and slots[1].get("ErrorCode") == "InternalError" and "RecordId" in slots[2],
        "fault: Firehose PutRecordBatch reports the marked record in its slot",
        answer,
    )
    check(list(s3_objects(s3, bucket).values()) == [b"a\nc\n"], "fault: Firehose the failed record is not written")
    control("POST", "/_faults", {"marker": "boom", "times": -1})
    answer = firehose.put_record_batch(DeliveryStreamName=stream, Records=[{"Data": b"boom"}])
    check(answer["FailedPutCount"] == 1 and answer["RequestResponses"][0]["ErrorCode"] == "InternalError", "fault: Firehose all records failed")
    check(len(s3_objects(s3, bucket)) == 1, "fault: Firehose nothing written when all failed")
    control("DELETE", "/_faults")


def main():
    global ENDPOINT, VERBOSE
    args = [a for a in sys.argv[1:] if a != "-v"]
    VERBOSE = "-v" in sys.argv[1:]
    if len(args) != 1:
        sys.exit("usage: selfcheck.py http://127.0.0.1:PORT [-v]")
    ENDPOINT = args[0].rstrip("/")
    for step in (
        check_sns_to_sqs,
        check_sns_fifo,
        check_eventbridge_to_sqs,
        check_kinesis,
        check_firehose,
        check_s3_path_style,
        check_step_functions,
        check_sqs_fifo_dedup,
        check_faults_sqs,
        check_faults_sns,
        check_faults_eventbridge,
        check_faults_kinesis,
        check_faults_firehose,
    ):
        print("== " + step.__name__)
        try:
            step()
        except Exception as error:  # report and go on with the next step
            FAILURES.append(step.__name__)
            print("FAIL  {} raised {}: {}".format(step.__name__, type(error).__name__, error))
    try:
        control("DELETE", "/_faults")
    except Exception:
        pass
    print("{} failure(s)".format(len(FAILURES)))
    sys.exit(1 if FAILURES else 0)


if __name__ == "__main__":
    main()
