//! Fault rules, how a request picks one, and the proxy's counters.
//!
//! A rule names an API pattern, a fault kind, a probability and an optional
//! count limit. For each request the rules are tried in the order they were
//! added; the first rule whose pattern matches the request's API, whose count
//! is not used up and whose dice roll succeeds fires, and only that one: a
//! request gets at most one fault.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::watch;

/// The API name of a request without an `X-Amz-Target` header.
pub const NO_TARGET: &str = "(none)";

/// What a rule does to a request it fires on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultKind {
    /// Answer 400 with a throttling error (`code`, or the API's usual one).
    Throttle,
    /// Answer 500 `InternalServerError` (or `code`).
    #[serde(rename = "error500")]
    Error500,
    /// Wait `ms`, then forward.
    Latency,
    /// Hold the request `ms` (or, without `ms`, until the rule is removed),
    /// then close the connection without answering.
    Stall,
    /// Close the connection at once with a TCP reset, without answering.
    Reset,
    /// Never answer: hold the request until the rule is removed, then close
    /// the connection.
    Blackhole,
    /// Forward, and turn a 2xx answer into a 400 error `code`.
    Rewrite,
}

impl FaultKind {
    /// The kind's name, as in rules and statistics.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Throttle => "throttle",
            FaultKind::Error500 => "error500",
            FaultKind::Latency => "latency",
            FaultKind::Stall => "stall",
            FaultKind::Reset => "reset",
            FaultKind::Blackhole => "blackhole",
            FaultKind::Rewrite => "rewrite",
        }
    }
}

/// A rule as `POST /rules` receives it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// `*` (every request), a prefix ending in `*`
    /// (`DynamoDBStreams_20120810.*`), or an exact `X-Amz-Target` value.
    pub api: String,
    /// What to do.
    pub fault: FaultKind,
    /// The AWS error code of `throttle`, `error500` and `rewrite`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Chance that a matching request gets the fault, 0 to 1 (default 1).
    #[serde(default = "always")]
    pub probability: f64,
    /// Most times the rule fires (default: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Milliseconds of `latency` (required) or `stall` (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ms: Option<u64>,
}

fn always() -> f64 {
    1.0
}

impl RuleSpec {
    /// Checks the fields that go together; the error names what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.api.is_empty() {
            return Err("api must not be empty".into());
        }
        if !(0.0..=1.0).contains(&self.probability) {
            return Err("probability must be between 0 and 1".into());
        }
        if let Some(code) = &self.code {
            if code.is_empty() || !code.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err("code must be an AWS error code such as LimitExceededException".into());
            }
        }
        let takes_code = matches!(
            self.fault,
            FaultKind::Throttle | FaultKind::Error500 | FaultKind::Rewrite
        );
        if self.code.is_some() && !takes_code {
            return Err(format!("fault {} takes no code", self.fault.name()));
        }
        if self.fault == FaultKind::Rewrite && self.code.is_none() {
            return Err(
                "fault rewrite needs a code (ExpiredIteratorException, TrimmedDataAccessException, ResourceNotFoundException, ...)"
                    .into(),
            );
        }
        let takes_ms = matches!(self.fault, FaultKind::Latency | FaultKind::Stall);
        if self.ms.is_some() && !takes_ms {
            return Err(format!("fault {} takes no ms", self.fault.name()));
        }
        if self.fault == FaultKind::Latency && self.ms.is_none() {
            return Err("fault latency needs ms".into());
        }
        Ok(())
    }

    fn matches(&self, api: &str) -> bool {
        match self.api.strip_suffix('*') {
            Some(prefix) => api.starts_with(prefix),
            None => self.api == api,
        }
    }
}

/// The error code a `throttle` rule without `code` answers: what the service
/// behind the API sends when it throttles.
pub fn default_throttle_code(api: &str) -> &'static str {
    if api.starts_with("DynamoDBStreams_") {
        "LimitExceededException"
    } else {
        "ProvisionedThroughputExceededException"
    }
}

#[derive(Debug)]
struct Rule {
    id: u64,
    spec: RuleSpec,
    fired: u64,
}

/// A rule that fired on a request.
#[derive(Debug, Clone)]
pub struct Fired {
    /// The rule's id, to wait for its removal.
    pub id: u64,
    /// What to do.
    pub kind: FaultKind,
    /// The rule's error code, if it named one.
    pub code: Option<String>,
    /// The rule's milliseconds, if any.
    pub ms: Option<u64>,
}

#[derive(Debug, Default)]
struct ApiStats {
    forwarded: u64,
    upstream_errors: u64,
    injected: BTreeMap<&'static str, u64>,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    rules: Vec<Rule>,
    stats: BTreeMap<String, ApiStats>,
}

/// The rules and counters, shared by the proxy and the control endpoint.
#[derive(Debug)]
pub struct State {
    inner: Mutex<Inner>,
    /// Bumped on every rule removal, to wake requests held until then.
    removals: watch::Sender<u64>,
}

impl Default for State {
    fn default() -> Self {
        State {
            inner: Mutex::default(),
            removals: watch::Sender::new(0),
        }
    }
}

impl State {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a validated rule and returns its id.
    pub fn add(&self, spec: RuleSpec) -> u64 {
        let mut inner = self.lock();
        inner.next_id += 1;
        let id = inner.next_id;
        inner.rules.push(Rule { id, spec, fired: 0 });
        id
    }

    /// Removes one rule; false if there was none with this id.
    pub fn remove(&self, id: u64) -> bool {
        let removed = {
            let mut inner = self.lock();
            let before = inner.rules.len();
            inner.rules.retain(|r| r.id != id);
            inner.rules.len() != before
        };
        if removed {
            self.removals.send_modify(|n| *n += 1);
        }
        removed
    }

    /// Removes every rule.
    pub fn clear(&self) {
        self.lock().rules.clear();
        self.removals.send_modify(|n| *n += 1);
    }

    /// The rules, with how often each fired and how many firings are left.
    pub fn rules_json(&self) -> Value {
        let inner = self.lock();
        let rules: Vec<Value> = inner
            .rules
            .iter()
            .map(|r| {
                let mut value = serde_json::to_value(&r.spec).expect("a rule serializes");
                value["id"] = json!(r.id);
                value["fired"] = json!(r.fired);
                value
            })
            .collect();
        Value::Array(rules)
    }

    /// Per API: requests forwarded upstream, upstream failures, and faults
    /// injected by kind.
    pub fn stats_json(&self) -> Value {
        let inner = self.lock();
        let stats: serde_json::Map<String, Value> = inner
            .stats
            .iter()
            .map(|(api, s)| {
                (
                    api.clone(),
                    json!({
                        "forwarded": s.forwarded,
                        "upstream_errors": s.upstream_errors,
                        "injected": s.injected,
                    }),
                )
            })
            .collect();
        Value::Object(stats)
    }

    /// Forgets every counter.
    pub fn reset_stats(&self) {
        self.lock().stats.clear();
    }

    /// The rule that fires on a request to `api`, if one does.
    pub fn pick(&self, api: &str) -> Option<Fired> {
        let mut inner = self.lock();
        let rule = inner.rules.iter_mut().find(|r| {
            r.spec.matches(api)
                && r.spec.count.is_none_or(|limit| r.fired < limit)
                && rand::random::<f64>() < r.spec.probability
        })?;
        rule.fired += 1;
        Some(Fired {
            id: rule.id,
            kind: rule.spec.fault,
            code: rule.spec.code.clone(),
            ms: rule.spec.ms,
        })
    }

    /// Counts a request sent upstream.
    pub fn count_forwarded(&self, api: &str) {
        self.api_stats(api, |s| s.forwarded += 1);
    }

    /// Counts a request whose upstream call failed (no answer).
    pub fn count_upstream_error(&self, api: &str) {
        self.api_stats(api, |s| s.upstream_errors += 1);
    }

    /// Counts an injected fault.
    pub fn count_injected(&self, api: &str, kind: FaultKind) {
        self.api_stats(api, |s| *s.injected.entry(kind.name()).or_default() += 1);
    }

    fn api_stats(&self, api: &str, update: impl FnOnce(&mut ApiStats)) {
        let mut inner = self.lock();
        match inner.stats.get_mut(api) {
            Some(stats) => update(stats),
            None => update(inner.stats.entry(api.to_owned()).or_default()),
        }
    }

    /// Resolves once the rule `id` is gone.
    pub async fn removed(&self, id: u64) {
        // Subscribed before looking, so a removal in between is not missed.
        let mut removals = self.removals.subscribe();
        while self.lock().rules.iter().any(|r| r.id == id) {
            if removals.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}
