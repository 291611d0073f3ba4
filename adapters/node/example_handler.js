// An ordinary Lambda handler for a DynamoDB stream, unchanged for dynastream.
//
//   DYNASTREAM_PROCESSOR=exec
//   DYNASTREAM_EXEC_COMMAND='node adapters/node/dynastream-lambda.js --path adapters/node example_handler.handler'
//
// It logs one line per record. Under Lambda that goes to CloudWatch Logs;
// under dynastream the adapter sends it to stderr, next to dynastream's logs.

'use strict';

// DynamoDB JSON ({"S": "x"}, {"N": "1"}) to plain values, for printing.
function plain(image) {
  const out = {};
  for (const [name, value] of Object.entries(image || {})) {
    const [[kind, raw]] = Object.entries(value);
    if (kind === 'N') out[name] = Number(raw);
    else if (kind === 'M') out[name] = plain(raw);
    else out[name] = raw;
  }
  return out;
}

// Keys in a fixed order, so a line reads the same every time.
function sorted(value) {
  if (Array.isArray(value)) return value.map(sorted);
  if (value !== null && typeof value === 'object') {
    return Object.fromEntries(Object.keys(value).sort().map((key) => [key, sorted(value[key])]));
  }
  return value;
}

function show(value) {
  return JSON.stringify(sorted(value));
}

exports.handler = async (event, context) => {
  for (const record of event.Records) {
    const change = record.dynamodb;
    const keys = show(plain(change.Keys));
    switch (record.eventName) {
      case 'INSERT':
        console.log(`INSERT ${keys} new=${show(plain(change.NewImage))}`);
        break;
      case 'MODIFY':
        console.log(`MODIFY ${keys} old=${show(plain(change.OldImage))} new=${show(plain(change.NewImage))}`);
        break;
      case 'REMOVE':
        console.log(`REMOVE ${keys} old=${show(plain(change.OldImage))}`);
        break;
      default:
        console.log(`unexpected event ${record.eventName}`);
    }
  }
  console.log(`${event.Records.length} record(s) in request ${context.awsRequestId}`);
  return { batchItemFailures: [] };
};
