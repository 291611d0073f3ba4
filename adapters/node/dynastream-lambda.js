#!/usr/bin/env node
// Runs an unmodified AWS Lambda handler under dynastream's `exec` processor.
//
//   DYNASTREAM_PROCESSOR=exec \
//   DYNASTREAM_EXEC_COMMAND='node adapters/node/dynastream-lambda.js index.handler' \
//   dynastream
//
// The handler is named as in Lambda: `index.handler` is the export `handler`
// of ./index.js, ./index.mjs or ./index.cjs (CommonJS or ES module), and
// `src/app.handlers.orders` the export `handlers.orders` of ./src/app.js.
// Files are resolved from the current directory, or from `--path DIR`.
//
// Protocol (one line each way, see dynastream's README):
//
// - dynastream writes each batch as one line of JSON on stdin: Lambda's
//   event, `{"Records": [...]}`;
// - this adapter calls `handler(event, context)` (async, promise-returning,
//   or the callback style `handler(event, context, callback)`) with a
//   Lambda-like context, and writes ONE line of JSON to stdout:
//   `{"batchItemFailures": [...]}` when the handler's result holds
//   `batchItemFailures`, `{}` otherwise, and `{"errorMessage": ...,
//   "errorType": ...}` when the handler threw or rejected (the whole batch
//   fails and is retried, as in Lambda).
//
// Stdout is the protocol channel, so before the handler is loaded
// process.stdout.write (and so console.log, console.info, ...) is pointed at
// stderr, which is dynastream's. Output a child process writes straight to
// the inherited file descriptor 1 cannot be moved from Node: give such
// children `stdio: ['pipe', process.stderr, 'inherit']` or similar.
// Node 18+, no dependencies. The adapter exits when stdin closes.

'use strict';

const fs = require('fs');
const path = require('path');
const readline = require('readline');
const { randomUUID } = require('crypto');
const { pathToFileURL } = require('url');
const { createRequire } = require('module');

const DEFAULT_TIMEOUT_MS = 60000;

// Keep the real stdout for answers; everything else written to it goes to stderr.
const writeAnswerRaw = process.stdout.write.bind(process.stdout);
process.stdout.write = function writeToStderr(chunk, encoding, callback) {
  return process.stderr.write(chunk, encoding, callback);
};

function usage(message) {
  process.stderr.write(
    `dynastream-lambda: ${message}\n` +
      'usage: node dynastream-lambda.js [--path DIR] [--function-name NAME] file.handler\n',
  );
  process.exit(2);
}

function parseArgs(argv) {
  const options = {
    root: process.cwd(),
    functionName: process.env.AWS_LAMBDA_FUNCTION_NAME || 'dynastream',
    handler: null,
  };
  for (let i = 0; i < argv.length; i += 1) {
    const arg = argv[i];
    if (arg === '--path' || arg === '--function-name') {
      const value = argv[i + 1];
      if (value === undefined) usage(`${arg} needs a value`);
      i += 1;
      if (arg === '--path') options.root = path.resolve(value);
      else options.functionName = value;
    } else if (arg === '-h' || arg === '--help') {
      usage('runs a Lambda handler for dynastream');
    } else if (options.handler === null) {
      options.handler = arg;
    } else {
      usage(`unexpected argument ${JSON.stringify(arg)}`);
    }
  }
  if (!options.handler) usage('name the handler, e.g. index.handler');
  return options;
}

// `dir/module.export.path` -> { modulePath: 'dir/module', exportPath: ['export', 'path'] }
function splitHandler(spec) {
  const base = path.basename(spec);
  const match = base.match(/^([^.]+)\.(.+)$/);
  if (!match) usage(`bad handler ${JSON.stringify(spec)}: expected file.function`);
  return {
    modulePath: path.join(path.dirname(spec), match[1]),
    exportPath: match[2].split('.'),
  };
}

function isEsmPackage(file) {
  let dir = path.dirname(file);
  for (;;) {
    const manifest = path.join(dir, 'package.json');
    if (fs.existsSync(manifest)) {
      try {
        return JSON.parse(fs.readFileSync(manifest, 'utf8')).type === 'module';
      } catch {
        return false;
      }
    }
    const parent = path.dirname(dir);
    if (parent === dir) return false;
    dir = parent;
  }
}

async function loadModule(root, modulePath) {
  const base = path.resolve(root, modulePath);
  const file = ['.js', '.mjs', '.cjs'].map((ext) => base + ext).find((f) => fs.existsSync(f));
  const requireFromRoot = createRequire(path.join(root, 'noop.js'));
  if (!file) {
    // Not a file: a package, as Lambda allows (`node_modules/<name>`).
    try {
      return requireFromRoot(modulePath);
    } catch (error) {
      if (error && error.code === 'MODULE_NOT_FOUND') {
        usage(`no ${base}.js, .mjs or .cjs, and no package ${JSON.stringify(modulePath)} in ${root}`);
      }
      throw error;
    }
  }
  if (file.endsWith('.mjs') || (file.endsWith('.js') && isEsmPackage(file))) {
    return import(pathToFileURL(file).href);
  }
  try {
    return requireFromRoot(file);
  } catch (error) {
    if (error && error.code === 'ERR_REQUIRE_ESM') return import(pathToFileURL(file).href);
    throw error;
  }
}

function lookup(moduleValue, exportPath) {
  const find = (start) => exportPath.reduce((value, key) => (value == null ? undefined : value[key]), start);
  const found = find(moduleValue);
  if (typeof found === 'function') return found;
  const fromDefault = moduleValue && moduleValue.default ? find(moduleValue.default) : undefined;
  return typeof fromDefault === 'function' ? fromDefault : undefined;
}

function makeContext(functionName, timeoutMs) {
  const deadline = performance.now() + timeoutMs;
  const region = process.env.AWS_REGION || process.env.AWS_DEFAULT_REGION || 'us-east-1';
  return {
    callbackWaitsForEmptyEventLoop: true,
    functionName,
    functionVersion: process.env.AWS_LAMBDA_FUNCTION_VERSION || '$LATEST',
    invokedFunctionArn: `arn:aws:lambda:${region}:000000000000:function:${functionName}`,
    memoryLimitInMB: process.env.AWS_LAMBDA_FUNCTION_MEMORY_SIZE || '128',
    awsRequestId: randomUUID(),
    logGroupName: `/aws/lambda/${functionName}`,
    logStreamName: process.env.AWS_LAMBDA_LOG_STREAM_NAME || 'dynastream',
    identity: undefined,
    clientContext: undefined,
    getRemainingTimeInMillis() {
      return Math.max(0, Math.round(deadline - performance.now()));
    },
  };
}

// Calls the handler in any of Lambda's styles; settles with its result.
function invoke(handler, event, context) {
  return new Promise((resolve, reject) => {
    let settled = false;
    const finish = (error, result) => {
      if (settled) return;
      settled = true;
      if (error !== null && error !== undefined) reject(error);
      else resolve(result);
    };
    context.done = finish;
    context.succeed = (result) => finish(null, result);
    context.fail = (error) => finish(error === undefined || error === null ? new Error('failed') : error);
    const usesCallback = handler.length >= 3;
    let returned;
    try {
      returned = usesCallback ? handler(event, context, finish) : handler(event, context);
    } catch (error) {
      finish(error);
      return;
    }
    if (returned && typeof returned.then === 'function') {
      returned.then((result) => finish(null, result), (error) => finish(error === undefined ? new Error('rejected') : error));
    } else if (!usesCallback) {
      finish(null, returned);
    }
  });
}

function answerOf(result) {
  if (result !== null && typeof result === 'object' && 'batchItemFailures' in result) {
    return { batchItemFailures: result.batchItemFailures };
  }
  return {};
}

function errorAnswer(error) {
  if (error instanceof Error) {
    return {
      errorType: error.name || 'Error',
      errorMessage: error.message,
      trace: String(error.stack || '').split('\n'),
    };
  }
  return { errorType: typeof error, errorMessage: String(error), trace: [] };
}

function writeAnswer(text) {
  return new Promise((resolve, reject) => {
    writeAnswerRaw(`${text}\n`, (error) => (error ? reject(error) : resolve()));
  });
}

async function main() {
  const options = parseArgs(process.argv.slice(2));
  const { modulePath, exportPath } = splitHandler(options.handler);
  const moduleValue = await loadModule(options.root, modulePath);
  const handler = lookup(moduleValue, exportPath);
  if (!handler) {
    usage(`${modulePath} does not export a function ${exportPath.join('.')}`);
  }
  const timeoutMs = Number(process.env.DYNASTREAM_EXEC_TIMEOUT_MS) || DEFAULT_TIMEOUT_MS;

  const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity, terminal: false });
  for await (const line of lines) {
    if (!line.trim()) continue;
    const context = makeContext(options.functionName, timeoutMs);
    let answer;
    try {
      const event = JSON.parse(line);
      answer = answerOf(await invoke(handler, event, context));
    } catch (error) {
      console.error(error);
      answer = { ...errorAnswer(error), requestId: context.awsRequestId };
    }
    let text;
    try {
      text = JSON.stringify(answer);
    } catch (error) {
      text = JSON.stringify(errorAnswer(error));
    }
    await writeAnswer(text);
  }
  process.exit(0);
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
