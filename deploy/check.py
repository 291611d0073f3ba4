#!/usr/bin/env python3
"""Checks of dynastream's operations files that no off-the-shelf linter makes.

scripts/lint runs this with the interpreter of the lint tools' virtualenv
(scripts/lint-tools), after promtool, kubernetes-validate, cfn-lint and
hadolint. It checks that the files agree with the code and with each other:

- the dashboard (dashboards/dynastream.json) and the alert rules
  (deploy/prometheus/alerts.yaml) use only the metrics and labels dynastream
  exports (METRICS below, which src/telemetry/ must still export), every panel
  query filters by $stream (stream and table labels), $pipeline and $worker
  where the metric has those labels, and
  every query parses (promtool, with Grafana's variables substituted);
- every alert has a severity, a summary, a description and a runbook section
  in deploy/README.md;
- the IAM policy (deploy/iam/policy.json) grants every AWS operation src/
  calls outside the delivery targets, and each target's policy
  (deploy/iam/targets/<target>.json) the operations of its file
  (src/processor/<target>.rs), nothing wider than they must; the
  CloudFormation task role grants the base policy's statements and those of
  exactly the targets its DYNASTREAM_PROCESSOR names, and the JSON task
  definition delivers to the same targets;
- the Kubernetes objects (as kustomize renders them) and the ECS task
  definitions agree on the port, the probes, the worker id, the shutdown grace
  and non-root, read-only containers, and name only known processors and
  formats; the ServiceMonitor, which has no schema to validate against
  offline, points at the Service's metrics port.

Usage: check.py --rendered <kustomize output> [--promtool <path>]
"""

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent

# The metrics contract (src/telemetry/metrics.rs): name -> (type, labels).
# Prometheus adds instance and job; histograms add le to their _bucket series.
METRICS = {
    "dynastream_records_total": ("counter", {"stream", "pipeline", "event_name"}),
    "dynastream_records_filtered_total": ("counter", {"stream", "pipeline"}),
    "dynastream_iterator_age_seconds": ("gauge", {"stream", "pipeline"}),
    "dynastream_shard_iterator_age_seconds": ("gauge", {"stream", "shard", "pipeline"}),
    "dynastream_processing_lag_seconds": ("histogram", {"pipeline"}),
    "dynastream_batches_total": ("counter", {"stream", "pipeline", "outcome"}),
    "dynastream_processor_duration_seconds": ("histogram", {"processor"}),
    "dynastream_api_calls_total": ("counter", {"api", "outcome"}),
    "dynastream_api_call_duration_seconds": ("histogram", {"api"}),
    "dynastream_lease_writes_total": ("counter", {"item", "write"}),
    "dynastream_leases_held": ("gauge", {"stream"}),
    "dynastream_lease_events_total": ("counter", {"event"}),
    "dynastream_workers": ("gauge", set()),
    "dynastream_shards": ("gauge", {"state"}),
    "dynastream_shards_unowned": ("gauge", {"stream"}),
    "dynastream_shard_sync_pending": ("gauge", set()),
    "dynastream_records_failed_total": ("counter", {"destination", "pipeline"}),
    "dynastream_trimmed_data_total": ("counter", {"stream", "pipeline"}),
    "dynastream_target_requests_total": ("counter", {"target", "outcome"}),
    "dynastream_target_request_duration_seconds": ("histogram", {"target"}),
    "dynastream_target_records_total": ("counter", {"target", "outcome"}),
    "dynastream_pipeline_shards_halted": ("gauge", {"stream", "pipeline"}),
    # Snapshots (DYNASTREAM_SNAPSHOT): `table` is the table's name, the value
    # `stream` has for its stream. consumed_rcu is a gauge only ever
    # increased (a page can cost half a unit), read with rate() as a counter.
    "dynastream_snapshot_items_total": ("counter", {"table"}),
    "dynastream_snapshot_segments": ("gauge", {"table", "state"}),
    "dynastream_snapshot_consumed_rcu_total": ("gauge", {"table"}),
    "dynastream_snapshot_throttled_total": ("counter", {"table"}),
    "dynastream_snapshot_eta_seconds": ("gauge", {"table"}),
    "dynastream_snapshot_changes_skipped_total": ("counter", {"stream"}),
    "dynastream_build_info": ("gauge", {"version"}),
}
TARGET_LABELS = {"instance", "job"}

REQUIRED_ALERTS = {
    "DynastreamIteratorAgeHigh",
    "DynastreamTrimmedData",
    "DynastreamRecordsFailed",
    "DynastreamShardsWithoutOwner",
    "DynastreamThrottling",
    "DynastreamShardHalted",
    "DynastreamNoWorkers",
    "DynastreamTargetRejectingRecords",
    "DynastreamTargetFailing",
    "DynastreamPipelineHalted",
    "DynastreamPipelineLagging",
}

# AWS SDK for Rust operations (fluent builders, called with no arguments) and
# the IAM actions they need.
SDK_OPERATIONS = {
    "create_table": "dynamodb:CreateTable",
    "update_table": "dynamodb:UpdateTable",
    "describe_table": "dynamodb:DescribeTable",
    "scan": "dynamodb:Scan",
    "query": "dynamodb:Query",
    "get_item": "dynamodb:GetItem",
    "put_item": "dynamodb:PutItem",
    "update_item": "dynamodb:UpdateItem",
    "delete_item": "dynamodb:DeleteItem",
    "batch_get_item": "dynamodb:BatchGetItem",
    "batch_write_item": "dynamodb:BatchWriteItem",
    "transact_write_items": "dynamodb:PutItem",
    "update_time_to_live": "dynamodb:UpdateTimeToLive",
    "list_tables": "dynamodb:ListTables",
    "list_tags_of_resource": "dynamodb:ListTagsOfResource",
    "list_streams": "dynamodb:ListStreams",
    "describe_stream": "dynamodb:DescribeStream",
    "get_shard_iterator": "dynamodb:GetShardIterator",
    "get_records": "dynamodb:GetRecords",
    "send_message": "sqs:SendMessage",
    "send_message_batch": "sqs:SendMessage",
    "get_queue_url": "sqs:GetQueueUrl",
    "get_queue_attributes": "sqs:GetQueueAttributes",
}
# The delivery targets (DYNASTREAM_PROCESSOR=<target>://...): the operations
# of each one's file, src/processor/<target>.rs, and the IAM actions they
# need. Those are granted by deploy/iam/targets/<target>.json, which a
# worker's role gets only for the targets it uses, not by the base policy.
TARGETS = {
    "sqs": {"send_message_batch": "sqs:SendMessage"},
    "sns": {"publish_batch": "sns:Publish"},
    "eventbridge": {"put_events": "events:PutEvents"},
    "kinesis": {"put_records": "kinesis:PutRecords"},
    "firehose": {"put_record_batch": "firehose:PutRecordBatch"},
    "s3": {"put_object": "s3:PutObject"},
    "lambda": {"invoke": "lambda:InvokeFunction"},
    "states": {"start_execution": "states:StartExecution"},
}
# DYNASTREAM_PROCESSOR's values that are not target URIs.
BUILTIN_PROCESSORS = {"stdout", "http", "exec", "count"}
OPERATIONS = dict(SDK_OPERATIONS)
for _operations in TARGETS.values():
    for _op, _action in _operations.items():
        assert OPERATIONS.setdefault(_op, _action) == _action, f"{_op} maps to two actions"
# Actions that cannot be scoped to a resource.
RESOURCE_STAR_ACTIONS = {"dynamodb:ListStreams", "dynamodb:ListTables"}
POLICY = "deploy/iam/policy.json"

problems = []
notes = []


def problem(where, message):
    problems.append(f"{where}: {message}")


def note(message):
    notes.append(message)


# ---------------------------------------------------------------- PromQL ---

SELECTOR = re.compile(r"\b(dynastream_[a-z_]+)\b(\s*\{([^}]*)\})?")
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"')
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
RANGE = re.compile(r"\b(rate|irate|increase|delta|deriv)\s*\(([^\[]*)\[([^\]]+)\]")


def metric_of(series):
    """The exported metric a series name belongs to, and its suffix."""
    if series in METRICS:
        return series, ""
    for suffix in ("_bucket", "_sum", "_count"):
        base = series[: -len(suffix)]
        if series.endswith(suffix) and METRICS.get(base, ("",))[0] == "histogram":
            return base, suffix
    return None, None


def check_expr(where, expr, filters):
    """Checks one PromQL expression; returns the metrics it uses.

    filters: require `stream=~"$stream"`, `table=~"$stream"` and
    `pipeline=~"$pipeline"` (where the metric has those labels) and
    `instance=~"$worker"` on every selector, as dashboard panels do.
    """
    used = set()
    allowed_grouping = set(TARGET_LABELS)
    for match in SELECTOR.finditer(expr):
        series, _, matchers = match.group(1), match.group(2), match.group(3) or ""
        metric, suffix = metric_of(series)
        if metric is None:
            problem(where, f"{series} is not a metric dynastream exports (see METRICS in deploy/check.py)")
            continue
        used.add(metric)
        labels = METRICS[metric][1] | TARGET_LABELS | ({"le"} if suffix == "_bucket" else set())
        allowed_grouping |= labels
        given = {name: (op, value) for name, op, value in MATCHER.findall(matchers)}
        for name in given:
            if name not in labels:
                problem(where, f"{series} has no label {name!r} (it has {sorted(labels)})")
        if filters:
            if "stream" in labels and given.get("stream") != ("=~", "$stream"):
                problem(where, f'{series} is not filtered by stream=~"$stream"')
            if "pipeline" in labels and given.get("pipeline") != ("=~", "$pipeline"):
                problem(where, f'{series} is not filtered by pipeline=~"$pipeline"')
            # A snapshot's table label holds the table's name, as stream does.
            if "table" in labels and given.get("table") != ("=~", "$stream"):
                problem(where, f'{series} is not filtered by table=~"$stream"')
            if given.get("instance") != ("=~", "$worker"):
                problem(where, f'{series} is not filtered by instance=~"$worker"')
        if METRICS[metric][0] == "histogram" and suffix == "" and "histogram_quantile" in expr:
            problem(where, f"histogram_quantile needs {series}_bucket")
    for group in GROUPING.findall(expr):
        for label in filter(None, (g.strip() for g in group.split(","))):
            if label not in allowed_grouping:
                problem(where, f"groups by {label!r}, which none of its metrics has")
    if "histogram_quantile" in expr and not re.search(r"\bby\s*\([^)]*\ble\b", expr):
        problem(where, "histogram_quantile over a sum that does not keep le")
    for function, _, window in RANGE.findall(expr):
        if filters and function in ("rate", "irate") and window != "$__rate_interval":
            problem(where, f"{function}() over [{window}]: use [$__rate_interval]")
    return used


def promtool_parse(exprs, promtool, what):
    """Parses expressions with promtool, as recording rules of a scratch file."""
    if not promtool:
        note(f"{what}: promtool not given, PromQL syntax not checked")
        return
    rules = []
    for i, (where, expr) in enumerate(exprs):
        for variable, value in (("$__rate_interval", "5m"), ("$__interval", "1m"), ("$__range", "1h"),
                                ("$stream", ".*"), ("$worker", ".*")):
            expr = expr.replace(variable, value)
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as scratch:
        yaml.safe_dump({"groups": [{"name": what, "rules": rules}]}, scratch)
    result = subprocess.run([promtool, "check", "rules", scratch.name], capture_output=True, text=True)
    Path(scratch.name).unlink()
    if result.returncode != 0:
        problem(what, "promtool cannot parse a query:\n" + result.stdout + result.stderr)


# ------------------------------------------------------------- dashboard ---

def check_dashboard(promtool):
    path = "dashboards/dynastream.json"
    try:
        dashboard = json.loads((ROOT / path).read_text())
    except (OSError, ValueError) as err:
        problem(path, f"not valid JSON: {err}")
        return set()
    if not isinstance(dashboard.get("schemaVersion"), int) or dashboard["schemaVersion"] < 36:
        problem(path, "schemaVersion must be a number of at least 36 (Grafana 9+)")
    for key in ("uid", "title"):
        if not dashboard.get(key):
            problem(path, f"no {key}")

    variables = {v.get("name"): v for v in dashboard.get("templating", {}).get("list", [])}
    ds = variables.get("datasource", {})
    if ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        problem(path, "needs a datasource variable of type datasource, query prometheus")
    for name, label in (("stream", "stream"), ("pipeline", "pipeline"), ("worker", "instance")):
        var = variables.get(name)
        if not var:
            problem(path, f"no {name} variable")
            continue
        query = var.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        if not re.fullmatch(rf"label_values\((dynastream_[a-z_]+)(\{{[^}}]*\}})?,\s*{label}\)", query or ""):
            problem(path, f"variable {name} must be label_values(<dynastream metric>, {label}), is {query!r}")
        else:
            check_expr(f"{path} variable {name}", query, filters=False)
        if not (var.get("multi") and var.get("includeAll") and var.get("allValue") == ".*"):
            problem(path, f'variable {name} must be multi-value with "All" meaning .*')
        if var.get("datasource", {}).get("uid") != "${datasource}":
            problem(path, f"variable {name} must query ${{datasource}}")

    def flatten(panels):
        for panel in panels:
            yield panel
            yield from flatten(panel.get("panels", []))

    used, exprs, ids = set(), [], set()
    for panel in flatten(dashboard.get("panels", [])):
        where = f"{path} panel {panel.get('title')!r}"
        if panel.get("id") in ids:
            problem(where, f"duplicate panel id {panel.get('id')}")
        ids.add(panel.get("id"))
        if "gridPos" not in panel:
            problem(where, "no gridPos")
        if panel.get("type") in ("row", "text"):
            continue
        if panel.get("type") not in ("timeseries", "stat", "gauge", "bargauge", "table", "heatmap"):
            problem(where, f"unexpected panel type {panel.get('type')!r}")
        if panel.get("datasource", {}).get("uid") != "${datasource}":
            problem(where, "datasource must be ${datasource}")
        targets = panel.get("targets") or []
        if not targets:
            problem(where, "no queries")
        refs = [t.get("refId") for t in targets]
        if len(set(refs)) != len(refs) or None in refs:
            problem(where, "every query needs its own refId")
        for target in targets:
            expr = target.get("expr")
            if not expr:
                problem(where, f"query {target.get('refId')} has no expr")
                continue
            used |= check_expr(where, expr, filters=True)
            exprs.append((where, expr))
    promtool_parse(exprs, promtool, "dashboard")
    unused = set(METRICS) - used - {"dynastream_shard_iterator_age_seconds"}
    if unused:
        problem(path, f"no panel shows {sorted(unused)}")
    return used


# ---------------------------------------------------------------- alerts ---

def github_anchor(heading):
    anchor = heading.strip().lower()
    anchor = re.sub(r"[^\w\- ]", "", anchor)
    return anchor.replace(" ", "-")


def check_alerts():
    path = "deploy/prometheus/alerts.yaml"
    rules = yaml.safe_load((ROOT / path).read_text())
    readme = (ROOT / "deploy/README.md").read_text() if (ROOT / "deploy/README.md").exists() else ""
    anchors = {github_anchor(h) for h in re.findall(r"^#+\s+(.*)$", readme, re.M)}
    used, names = set(), set()
    for group in rules.get("groups", []):
        for rule in group.get("rules", []):
            name = rule.get("alert") or rule.get("record")
            where = f"{path} {name}"
            names.add(name)
            used |= check_expr(where, rule.get("expr", ""), filters=False)
            if "alert" not in rule:
                continue
            if rule.get("labels", {}).get("severity") not in ("warning", "critical"):
                problem(where, "severity must be warning or critical")
            annotations = rule.get("annotations", {})
            for key in ("summary", "description", "runbook"):
                if not annotations.get(key):
                    problem(where, f"no {key} annotation")
            runbook = annotations.get("runbook", "")
            if runbook.startswith("deploy/README.md#") and runbook.split("#", 1)[1] not in anchors:
                problem(where, f"runbook {runbook} names no heading of deploy/README.md")
    for missing in sorted(REQUIRED_ALERTS - names):
        problem(path, f"no alert {missing}")
    return used


# ------------------------------------------------------------------- IAM ---

def as_list(value):
    return value if isinstance(value, list) else [value]


class CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short-form intrinsic functions (!Ref, !Sub...)."""


def _intrinsic(loader, suffix, node):
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {("Ref" if suffix == "Ref" else f"Fn::{suffix}"): value}


CfnLoader.add_multi_constructor("!", _intrinsic)


def cfn_statements(statements):
    """The statements of a CloudFormation policy, with !If branches resolved
    to their 'true' side (the template's optional statements included)."""
    out = []
    for statement in statements:
        if isinstance(statement, dict) and "Fn::If" in statement:
            statement = statement["Fn::If"][1]
        out.append(statement)
    return out


def target_policy(target):
    return f"deploy/iam/targets/{target}.json"


def sdk_actions():
    """IAM actions of the AWS operations src/ calls (fluent builders: `.op()`),
    by the policy that must grant them: a target's file
    (src/processor/<target>.rs) by deploy/iam/targets/<target>.json, every
    other file by deploy/iam/policy.json. Returns {policy: {action: files}}."""
    actions = {}
    pattern = re.compile(r"\.(" + "|".join(OPERATIONS) + r")\(\)")
    for source in sorted((ROOT / "src").rglob("*.rs")):
        where = source.relative_to(ROOT)
        policy = POLICY
        if where.parent == Path("src/processor") and where.stem in TARGETS:
            policy = target_policy(where.stem)
        text = source.read_text(errors="replace")
        for op in pattern.findall(text):
            actions.setdefault(policy, {}).setdefault(OPERATIONS[op], set()).add(str(where))
    return actions


def load_policy(path):
    """Checks one IAM policy document; returns its statements' actions by Sid."""
    if not (ROOT / path).exists():
        problem(path, "missing")
        return {}
    try:
        policy = json.loads((ROOT / path).read_text())
    except (OSError, ValueError) as err:
        problem(path, f"not valid JSON: {err}")
        return {}
    if policy.get("Version") != "2012-10-17":
        problem(path, 'Version must be "2012-10-17"')
    by_sid = {}
    for statement in policy.get("Statement", []):
        sid = statement.get("Sid")
        where = f"{path} statement {sid}"
        if not sid:
            problem(path, "every statement needs a Sid (the template's task role matches them by Sid)")
        elif not re.fullmatch(r"[A-Za-z0-9]+", sid):
            problem(where, "a Sid is letters and digits only")
        if sid in by_sid:
            problem(where, "duplicate Sid")
        if statement.get("Effect") != "Allow" or "NotAction" in statement or "NotResource" in statement:
            problem(where, "Allow statements with Action and Resource only")
        actions = set(as_list(statement.get("Action", [])))
        resources = as_list(statement.get("Resource", []))
        by_sid[sid] = actions
        for action in actions:
            if "*" in action:
                problem(where, f"wildcard action {action}")
        if "*" in resources and actions - RESOURCE_STAR_ACTIONS:
            problem(where, f'Resource "*" for {sorted(actions - RESOURCE_STAR_ACTIONS)}: scope them to ARNs')
        for resource in resources:
            if resource != "*" and not resource.startswith("arn:aws:"):
                problem(where, f"resource {resource!r} is not an ARN")
    return by_sid


def cfn_strings(value):
    """The strings a template value can be: both sides of an !If, a !Sub's
    text; references (!Ref AWS::NoValue...) are none."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict) and "Fn::If" in value:
        for branch in value["Fn::If"][1:]:
            yield from cfn_strings(branch)
    elif isinstance(value, dict) and "Fn::Sub" in value:
        sub = value["Fn::Sub"]
        yield from cfn_strings(sub[0] if isinstance(sub, list) else sub)


def processor_targets(where, values):
    """The targets DYNASTREAM_PROCESSOR's possible values name; anything
    that is neither a built-in processor nor a known target is a problem."""
    targets = set()
    for value in values:
        for entry in filter(None, (e.strip() for e in str(value).split(","))):
            scheme = entry.split("://", 1)[0] if "://" in entry else None
            if scheme in TARGETS:
                targets.add(scheme)
            elif scheme is not None or entry not in BUILTIN_PROCESSORS:
                problem(where, f"DYNASTREAM_PROCESSOR names {entry!r}: neither {sorted(BUILTIN_PROCESSORS)} "
                               f"nor a target URI ({', '.join(t + '://' for t in TARGETS)})")
    return targets


def check_format(where, value):
    if value is not None and value not in ("lambda", "document"):
        problem(where, f"DYNASTREAM_FORMAT is {value!r}, not lambda or document")


def template_processor_targets(template):
    """The targets the template's task definition can deliver to."""
    where = "deploy/ecs/service.yaml"
    container = template["Resources"]["TaskDefinition"]["Properties"]["ContainerDefinitions"][0]
    values = []
    for item in cfn_statements(container.get("Environment", [])):
        if isinstance(item, dict) and item.get("Name") == "DYNASTREAM_PROCESSOR":
            values.extend(cfn_strings(item.get("Value")))
        if isinstance(item, dict) and item.get("Name") == "DYNASTREAM_FORMAT":
            for value in cfn_strings(item.get("Value")):
                check_format(where, value)
    return processor_targets(where, values or ["stdout"])


def check_policy():
    called = sdk_actions()
    policies = {POLICY: load_policy(POLICY)}
    for target in TARGETS:
        policies[target_policy(target)] = load_policy(target_policy(target))
    target_actions = {action for operations in TARGETS.values() for action in operations.values()}

    owner = {}
    for path, by_sid in policies.items():
        for sid in by_sid:
            if sid in owner and sid is not None:
                problem(path, f"statement {sid} is also in {owner[sid]}: Sids name one statement across the policies")
            owner.setdefault(sid, path)
        granted = set().union(*by_sid.values()) if by_sid else set()
        needed = called.get(path, {})
        for action, files in sorted(needed.items()):
            if action not in granted:
                problem(path, f"src calls {action} ({', '.join(sorted(files))}) but the policy does not grant it")
        unused = granted - set(needed)
        if path == POLICY and unused & target_actions:
            problem(path, f"grants {sorted(unused & target_actions)}, which only targets call: "
                          "grant them in deploy/iam/targets/<target>.json")
            unused -= target_actions
        if unused:
            note(f"{path}: granted but not called by src/ today: {sorted(unused)}")
    for target, operations in TARGETS.items():
        source = f"src/processor/{target}.rs"
        if not (ROOT / source).exists():
            problem(source, f"missing: the {target} target's file (see TARGETS in deploy/check.py)")
        elif not called.get(target_policy(target)):
            problem(source, f"calls none of {sorted(operations)}: update TARGETS in deploy/check.py")
    for extra in sorted((ROOT / "deploy/iam/targets").glob("*")):
        if extra.stem not in TARGETS or extra.suffix != ".json":
            problem(f"deploy/iam/targets/{extra.name}", "is no target's policy (see TARGETS in deploy/check.py)")

    # The template's task role: the base policy's statements, and those of
    # exactly the targets its task definition delivers to (a target's
    # Optional... statements may be left out).
    template_path = "deploy/ecs/service.yaml"
    template = yaml.load((ROOT / template_path).read_text(), Loader=CfnLoader)
    role = template.get("Resources", {}).get("TaskRole", {}).get("Properties", {})
    statements = [s for p in role.get("Policies", []) for s in cfn_statements(p["PolicyDocument"]["Statement"])]
    cfn_by_sid = {s.get("Sid"): set(as_list(s.get("Action", []))) for s in statements}
    used = template_processor_targets(template)
    expected = dict(policies[POLICY])
    for target in used:
        expected.update(policies[target_policy(target)])
    for target in set(TARGETS) - used:
        for sid in policies[target_policy(target)]:
            if sid in cfn_by_sid:
                problem(template_path, f"the TaskRole grants {target_policy(target)}'s statement {sid}, "
                                       f"but DYNASTREAM_PROCESSOR does not use {target}://")
                del cfn_by_sid[sid]
    for sid in sorted(set(cfn_by_sid) | set(expected), key=str):
        if sid not in cfn_by_sid and str(sid).startswith("Optional") and owner.get(sid) != POLICY:
            continue
        ours, theirs = cfn_by_sid.get(sid, set()), expected.get(sid, set())
        if sid not in owner:
            problem(template_path, f"the TaskRole's statement {sid} is in none of the policies "
                                   f"({POLICY}, deploy/iam/targets/): add it there too, with the same Sid")
        elif ours != theirs:
            problem(template_path, f"the TaskRole's statement {sid} differs from {owner[sid]}'s: "
                                   f"only in the template {sorted(ours - theirs)}, only in the policy {sorted(theirs - ours)}")
    return used


# ---------------------------------------------------------- Kubernetes -----

def env_value(env, name):
    for item in env or []:
        if item.get("name") == name:
            return item.get("value", item.get("valueFrom"))
    return None


def check_grace(where, stop_seconds, grace_ms):
    grace = int(grace_ms or 20000) / 1000
    # The batches in flight get DYNASTREAM_SHUTDOWN_GRACE_MS, then the leases
    # are released: leave at least 10 s for that and for the exit.
    if stop_seconds is None or stop_seconds < grace + 10:
        problem(where, f"stop timeout {stop_seconds}s must exceed DYNASTREAM_SHUTDOWN_GRACE_MS ({grace:g}s) by 10s")


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_kubernetes(rendered):
    where = "deploy/kubernetes"
    objects = [o for o in yaml.safe_load_all(Path(rendered).read_text()) if o]
    by_kind = {}
    for obj in objects:
        by_kind.setdefault(obj["kind"], []).append(obj)
    missing = False
    for kind in ("Deployment", "ConfigMap", "ServiceAccount", "Service", "ServiceMonitor", "PodDisruptionBudget"):
        if len(by_kind.get(kind, [])) != 1:
            problem(where, f"expected one {kind}, found {len(by_kind.get(kind, []))}")
            missing = True
    if missing:
        return
    deployment, configmap = by_kind["Deployment"][0], by_kind["ConfigMap"][0]
    service, monitor = by_kind["Service"][0], by_kind["ServiceMonitor"][0]
    pdb, account = by_kind["PodDisruptionBudget"][0], by_kind["ServiceAccount"][0]
    pod = deployment["spec"]["template"]
    pod_labels = pod["metadata"].get("labels", {})
    spec = pod["spec"]
    if not selects(deployment["spec"]["selector"].get("matchLabels"), pod_labels):
        problem(where, "the Deployment's selector does not match its pods")
    if spec.get("serviceAccountName") != account["metadata"]["name"]:
        problem(where, "the pods do not run as the ServiceAccount")
    if not account["metadata"].get("annotations", {}).get("eks.amazonaws.com/role-arn"):
        note(f"{where}: the ServiceAccount names no IAM role (fine with EKS Pod Identity)")
    if not spec.get("securityContext", {}).get("runAsNonRoot"):
        problem(where, "the pod must set runAsNonRoot")
    check_grace(f"{where} Deployment", spec.get("terminationGracePeriodSeconds"),
                configmap.get("data", {}).get("DYNASTREAM_SHUTDOWN_GRACE_MS"))
    container = next((c for c in spec["containers"] if c["name"] == "dynastream"), None)
    if container is None:
        problem(where, "no container named dynastream")
        return
    context = container.get("securityContext", {})
    if not context.get("readOnlyRootFilesystem") or context.get("allowPrivilegeEscalation") is not False \
            or "ALL" not in context.get("capabilities", {}).get("drop", []):
        problem(where, "the container must be read-only, without privilege escalation, with every capability dropped")
    ports = {p.get("name"): p.get("containerPort") for p in container.get("ports", [])}
    if ports.get("metrics") != 9464:
        problem(where, "the container must expose 9464 as the port named metrics")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = container.get(probe, {}).get("httpGet", {})
        if get.get("path") != path or get.get("port") not in ("metrics", 9464):
            problem(where, f"{probe} must GET {path} on the metrics port")
    worker_id = env_value(container.get("env"), "DYNASTREAM_WORKER_ID")
    if not isinstance(worker_id, dict) or worker_id.get("fieldRef", {}).get("fieldPath") != "metadata.name":
        problem(where, "DYNASTREAM_WORKER_ID must come from the pod's name")
    refs = [e.get("configMapRef", {}).get("name") for e in container.get("envFrom", [])]
    if configmap["metadata"]["name"] not in refs:
        problem(where, "the container does not read the ConfigMap")
    if not (configmap.get("data", {}).get("DYNASTREAM_TABLES") or configmap.get("data", {}).get("DYNASTREAM_STREAM_ARNS")):
        problem(where, "the ConfigMap sets neither DYNASTREAM_TABLES nor DYNASTREAM_STREAM_ARNS")
    data = configmap.get("data", {})
    targets = processor_targets(f"{where} ConfigMap", [data.get("DYNASTREAM_PROCESSOR") or "stdout"])
    check_format(f"{where} ConfigMap", data.get("DYNASTREAM_FORMAT"))
    if targets:
        note(f"{where}: the ServiceAccount's role needs {POLICY} and "
             f"{', '.join(target_policy(t) for t in sorted(targets))}")
    if not selects(service["spec"].get("selector"), pod_labels):
        problem(where, "the Service does not select the pods")
    service_ports = {p.get("name") for p in service["spec"].get("ports", [])}
    if "metrics" not in service_ports:
        problem(where, "the Service has no port named metrics")
    if not selects(pdb["spec"].get("selector", {}).get("matchLabels"), pod_labels):
        problem(where, "the PodDisruptionBudget does not select the pods")
    # The ServiceMonitor is a CRD that kubernetes-validate has no schema for.
    if monitor.get("apiVersion") != "monitoring.coreos.com/v1":
        problem(where, "the ServiceMonitor must be monitoring.coreos.com/v1")
    if not selects(monitor["spec"].get("selector", {}).get("matchLabels"), service["metadata"].get("labels", {})):
        problem(where, "the ServiceMonitor does not select the Service")
    for endpoint in monitor["spec"].get("endpoints", []):
        if endpoint.get("port") not in service_ports or endpoint.get("path", "/metrics") != "/metrics":
            problem(where, "a ServiceMonitor endpoint must scrape the Service's metrics port at /metrics")


# ------------------------------------------------------------------ ECS ----

def check_ecs(template_targets):
    path = "deploy/ecs/task-definition.json"
    try:
        task = json.loads((ROOT / path).read_text())
    except (OSError, ValueError) as err:
        problem(path, f"not valid JSON: {err}")
        return
    template = yaml.load((ROOT / "deploy/ecs/service.yaml").read_text(), Loader=CfnLoader)
    cfn_task = template["Resources"]["TaskDefinition"]["Properties"]
    # The same checks on the JSON task definition and on the template's,
    # whose keys are capitalised.
    for where, container, mode in (
        (path, task["containerDefinitions"][0], task.get("networkMode")),
        ("deploy/ecs/service.yaml", {k[0].lower() + k[1:]: v for k, v in cfn_task["ContainerDefinitions"][0].items()},
         cfn_task.get("NetworkMode")),
    ):
        def get(obj, key):
            return obj.get(key, obj.get(key[0].upper() + key[1:])) if isinstance(obj, dict) else None

        if mode != "awsvpc":
            problem(where, "networkMode must be awsvpc (Fargate)")
        user = str(get(container, "user") or "")
        if not user or user.split(":")[0] in ("0", "root"):
            problem(where, "the container must run as a non-root user (65532, distroless' nonroot)")
        if get(container, "readonlyRootFilesystem") is not True:
            problem(where, "the root filesystem must be read-only")
        ports = [get(p, "containerPort") for p in get(container, "portMappings") or []]
        if 9464 not in ports:
            problem(where, "no port mapping for 9464 (/metrics, /healthz, /readyz)")
        env = [{"name": get(e, "name"), "value": get(e, "value")} for e in get(container, "environment") or []]
        check_grace(where, get(container, "stopTimeout"), env_value(env, "DYNASTREAM_SHUTDOWN_GRACE_MS"))
        if get(container, "stopTimeout") and get(container, "stopTimeout") > 120:
            problem(where, "Fargate's stopTimeout is at most 120 s")
        if get(get(container, "logConfiguration"), "logDriver") != "awslogs":
            problem(where, "logs must go to awslogs")
        if env_value(env, "DYNASTREAM_TABLES") is None:
            problem(where, "DYNASTREAM_TABLES is not set")
    # The JSON task definition is the template's, with the placeholders
    # filled in: it delivers to the same targets, which the task role the
    # template builds (and deploy/iam/targets/) grants.
    env = task["containerDefinitions"][0].get("environment", [])
    targets = processor_targets(path, [env_value(env, "DYNASTREAM_PROCESSOR") or "stdout"])
    check_format(path, env_value(env, "DYNASTREAM_FORMAT"))
    if targets != template_targets:
        problem(path, f"DYNASTREAM_PROCESSOR delivers to {sorted(targets)}, the template's task definition "
                      f"to {sorted(template_targets)}: keep the two examples the same")


# ------------------------------------------------------------------ main ---

def check_exported(used):
    """Every metric the dashboard and alerts use must still be in src/."""
    source = "\n".join(p.read_text(errors="replace") for p in (ROOT / "src").rglob("*.rs"))
    exported = set(re.findall(r'"(dynastream_[a-z_]+)"', source))
    if not exported:
        note("src/ names no dynastream_ metric yet: the metric names were checked against METRICS only")
        return
    for metric in sorted(used - exported):
        problem("src/", f"{metric} is used by the dashboard or the alerts but src/ does not export it")
    for metric in sorted(exported - set(METRICS)):
        problem("deploy/check.py", f"src/ exports {metric}, which METRICS does not list: add it (and show it)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rendered", required=True, help="kustomize's output for deploy/kubernetes")
    parser.add_argument("--promtool", help="promtool, to parse the dashboard's queries")
    args = parser.parse_args()

    used = check_dashboard(args.promtool) | check_alerts()
    check_exported(used)
    template_targets = check_policy()
    check_kubernetes(args.rendered)
    check_ecs(template_targets)
    for line in notes:
        print(f"check: note: {line}")
    for line in problems:
        print(f"check: {line}", file=sys.stderr)
    if problems:
        print(f"check: {len(problems)} problems", file=sys.stderr)
        return 1
    print("check: dashboard, alerts, IAM policies, Kubernetes and ECS manifests agree")
    return 0


if __name__ == "__main__":
    sys.exit(main())
