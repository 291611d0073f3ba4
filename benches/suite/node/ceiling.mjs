// The plain loop a Node consumer writes with the AWS SDK for JavaScript v3:
// what ../ceiling.rs does with the SDK for Rust, and nothing more.
// DescribeStream for the shards, GetShardIterator (TRIM_HORIZON) per shard,
// then GetRecords until the shard ends, sleeping the poll interval after an
// empty page; the records are counted and dropped. It prints `done <count>`
// once --expected records have arrived (or `reading` at once without it),
// then keeps polling until killed, as ceiling.rs does, so the suite reads
// its CPU time from /proc the same way.
//
//   node ceiling.mjs --sdk <dir> [--expected N] [--poll-ms MS] <stream ARN>...
//
// <dir> holds node_modules/@aws-sdk/client-dynamodb-streams (scripts/bench
// installs the version pinned in package.json there). The endpoint, region
// and credentials come from the environment (AWS_ENDPOINT_URL, AWS_REGION,
// AWS_ACCESS_KEY_ID, ...), as for the Rust loop; the SDK's defaults
// otherwise.
import { createRequire } from "node:module";
import path from "node:path";

const args = process.argv.slice(2);
let sdkDir = null;
let expected = null;
let pollMs = 250;
const arns = [];
for (let i = 0; i < args.length; i++) {
  switch (args[i]) {
    case "--sdk":
      sdkDir = args[++i];
      break;
    case "--expected":
      expected = Number(args[++i]);
      break;
    case "--poll-ms":
      pollMs = Number(args[++i]);
      break;
    default:
      arns.push(args[i]);
  }
}
if (sdkDir === null) {
  console.error("ceiling.mjs: --sdk <dir> is required");
  process.exit(2);
}

const require = createRequire(path.join(path.resolve(sdkDir), "node_modules", "index.js"));
const {
  DynamoDBStreamsClient,
  DescribeStreamCommand,
  GetShardIteratorCommand,
  GetRecordsCommand,
} = require("@aws-sdk/client-dynamodb-streams");

const client = new DynamoDBStreamsClient({});
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
let received = 0;
let announced = false;

async function shardIds(streamArn) {
  const ids = [];
  let start;
  for (;;) {
    const page = await client.send(
      new DescribeStreamCommand({ StreamArn: streamArn, ExclusiveStartShardId: start }),
    );
    const description = page.StreamDescription;
    for (const shard of description.Shards ?? []) ids.push(shard.ShardId);
    start = description.LastEvaluatedShardId;
    if (!start) return ids;
  }
}

// An iterator at the shard's oldest record, or just after `after`.
async function iteratorAt(streamArn, shardId, after) {
  const request = { StreamArn: streamArn, ShardId: shardId };
  if (after) {
    request.ShardIteratorType = "AFTER_SEQUENCE_NUMBER";
    request.SequenceNumber = after;
  } else {
    request.ShardIteratorType = "TRIM_HORIZON";
  }
  const answer = await client.send(new GetShardIteratorCommand(request));
  return answer.ShardIterator;
}

async function readShard(streamArn, shardId) {
  let after = null;
  let iterator = await iteratorAt(streamArn, shardId, null);
  while (iterator) {
    let page;
    try {
      page = await client.send(new GetRecordsCommand({ ShardIterator: iterator, Limit: 1000 }));
    } catch (err) {
      // DynamoDB Local refuses an iterator issued on an empty shard once
      // records arrive: ask again from where reading stands (as ceiling.rs).
      if (err.name === "TrimmedDataAccessException") {
        iterator = await iteratorAt(streamArn, shardId, after);
        continue;
      }
      throw err;
    }
    const records = page.Records ?? [];
    if (records.length === 0) {
      await sleep(pollMs);
    } else {
      after = records[records.length - 1].dynamodb?.SequenceNumber ?? after;
      received += records.length;
      if (expected !== null && !announced && received >= expected) {
        announced = true;
        process.stdout.write(`done ${received}\n`);
      }
    }
    iterator = page.NextShardIterator;
  }
}

const readers = [];
for (const arn of arns) {
  for (const id of await shardIds(arn)) readers.push(readShard(arn, id));
}
if (expected === null) process.stdout.write("reading\n");
await Promise.all(readers);
