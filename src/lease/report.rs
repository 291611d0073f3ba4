//! The operator's view of a lease table (`dynastream status`).
//!
//! Rows are built from one scan. "Seconds since update" compares the item's
//! informational wall-clock stamp with this host's clock: good enough for a
//! person reading a table, which is why the engine itself never uses it.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;

use serde::Serialize;

use super::{Checkpoint, ItemKind, Lease, LeaseScan};

/// One shard lease, as an operator reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShardRow {
    /// The stream ARN, or `-` for leases written without one (KCL tables).
    pub stream: String,
    /// The shard id.
    pub shard: String,
    /// The parent shard ids.
    pub parents: Vec<String>,
    /// The owning worker, if any.
    pub owner: Option<String>,
    /// The checkpoint as stored (with several pipelines, the least advanced of theirs).
    pub checkpoint: String,
    /// Each named pipeline's checkpoint; empty for an application with one pipeline.
    pub pipelines: BTreeMap<String, String>,
    /// `active`, `unowned`, `waiting_for_parent` or `ended`.
    pub state: &'static str,
    /// Seconds since the item was last written, by this host's clock.
    pub seconds_since_update: Option<u64>,
    /// The lease counter.
    pub counter: u64,
    /// With `--lag`: how old the oldest record not yet processed is, in
    /// seconds (0 when none is waiting), by pipeline (`-` for the
    /// application's one pipeline); `None` where it could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag_seconds: Option<BTreeMap<String, Option<u64>>>,
}

impl ShardRow {
    /// Where each pipeline (or, with none named, the application) goes on
    /// reading this shard, for measuring its lag; none once it ended.
    pub fn positions(&self) -> Vec<(String, Checkpoint)> {
        let positions: Vec<(String, &String)> = if self.pipelines.is_empty() {
            vec![("-".to_owned(), &self.checkpoint)]
        } else {
            self.pipelines.iter().map(|(n, c)| (n.clone(), c)).collect()
        };
        positions
            .into_iter()
            .filter_map(|(name, stored)| Some((name, Checkpoint::parse(stored)?)))
            .filter(|(_, checkpoint)| !checkpoint.is_shard_end())
            .collect()
    }
}

/// A worker seen in the table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkerRow {
    /// The worker id.
    pub worker: String,
    /// How many shard leases it holds.
    pub leases: usize,
    /// Seconds since its presence item was last renewed, by this host's clock.
    pub seconds_since_update: Option<u64>,
    /// Whether it holds the shard-sync leadership.
    pub leader: bool,
    /// The pipelines it runs (`DYNASTREAM_PIPELINES`); empty for one.
    pub pipelines: Vec<String>,
}

/// A table's snapshot, as an operator reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotRow {
    /// The table scanned.
    pub table: String,
    /// Its segments.
    pub segments: u32,
    /// Segments scanned to their end.
    pub complete: u32,
    /// Segments a worker holds now.
    pub scanning: u32,
    /// Items delivered so far.
    pub items: u64,
    /// Seconds since the snapshot began, by this host's clock.
    pub elapsed_seconds: u64,
    /// Seconds until it completes at the pace kept so far (0 once
    /// complete); `None` when it cannot be told yet.
    pub eta_seconds: Option<u64>,
}

/// The whole report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The lease table's name.
    pub table: String,
    /// One row per shard lease, by stream then shard.
    pub shards: Vec<ShardRow>,
    /// One row per worker.
    pub workers: Vec<WorkerRow>,
    /// Items that are not leases, described.
    pub malformed: Vec<String>,
    /// One row per table snapshot recorded in the table.
    pub snapshots: Vec<SnapshotRow>,
}

fn age(lease: &Lease, now_millis: u64) -> Option<u64> {
    lease
        .updated_at_millis
        .map(|at| now_millis.saturating_sub(at) / 1000)
}

/// Builds the report from a scan, at wall-clock time `now_millis`.
pub fn build(table: &str, scan: &LeaseScan, now_millis: u64) -> Report {
    let shard_leases: Vec<&Lease> = scan
        .leases
        .iter()
        .filter(|l| l.kind() == ItemKind::Shard)
        .collect();
    let by_shard: HashMap<(&str, &str), &Lease> = shard_leases
        .iter()
        .map(|l| {
            (
                (l.stream_arn.as_deref().unwrap_or("-"), l.shard_id.as_str()),
                *l,
            )
        })
        .collect();
    let mut shards: Vec<ShardRow> = shard_leases
        .iter()
        .map(|lease| {
            let stream = lease.stream_arn.as_deref().unwrap_or("-");
            let waiting = lease.parent_shard_ids.iter().any(|parent| {
                by_shard
                    .get(&(stream, parent.as_str()))
                    .is_some_and(|p| !p.checkpoint.is_shard_end())
            });
            let state = match (&lease.checkpoint, &lease.owner) {
                (Checkpoint::ShardEnd, _) => "ended",
                _ if waiting => "waiting_for_parent",
                (_, None) => "unowned",
                (_, Some(_)) => "active",
            };
            ShardRow {
                stream: stream.to_owned(),
                shard: lease.shard_id.clone(),
                parents: lease.parent_shard_ids.clone(),
                owner: lease.owner.clone(),
                checkpoint: lease.checkpoint.as_stored().to_owned(),
                pipelines: lease
                    .pipeline_checkpoints
                    .iter()
                    .map(|(name, checkpoint)| (name.clone(), checkpoint.as_stored().to_owned()))
                    .collect(),
                state,
                seconds_since_update: age(lease, now_millis),
                counter: lease.counter,
                lag_seconds: None,
            }
        })
        .collect();
    shards.sort_by(|a, b| (&a.stream, &a.shard).cmp(&(&b.stream, &b.shard)));
    let leader = scan
        .leases
        .iter()
        .find(|l| l.kind() == ItemKind::Leader)
        .and_then(|l| l.owner.clone());
    let mut workers: Vec<WorkerRow> = scan
        .leases
        .iter()
        .filter(|l| l.kind() == ItemKind::Worker)
        .filter_map(|presence| {
            let worker = presence.owner.clone()?;
            Some(WorkerRow {
                leases: shard_leases
                    .iter()
                    .filter(|l| l.owner.as_deref() == Some(worker.as_str()))
                    .count(),
                seconds_since_update: age(presence, now_millis),
                leader: leader.as_deref() == Some(worker.as_str()),
                pipelines: presence.pipeline_checkpoints.keys().cloned().collect(),
                worker,
            })
        })
        .collect();
    workers.sort_by(|a, b| a.worker.cmp(&b.worker));
    let mut snapshots: Vec<SnapshotRow> = scan
        .leases
        .iter()
        .filter(|l| l.kind() == ItemKind::Table)
        .filter_map(|item| {
            let state = item.snapshot.as_ref()?;
            let segments: Vec<&Lease> = scan
                .leases
                .iter()
                .filter(|l| l.kind() == ItemKind::Segment)
                .filter(|l| l.snapshot.as_ref().is_some_and(|s| s.table == state.table))
                .collect();
            let done = |l: &Lease| l.snapshot.as_ref().is_some_and(|s| s.complete);
            let complete = segments.iter().filter(|l| done(l)).count() as u32;
            Some(SnapshotRow {
                table: state.table.clone(),
                segments: state.total_segments,
                complete,
                scanning: segments
                    .iter()
                    .filter(|l| !done(l) && l.owner.is_some())
                    .count() as u32,
                items: segments
                    .iter()
                    .filter_map(|l| l.snapshot.as_ref().map(|s| s.items))
                    .sum(),
                elapsed_seconds: now_millis.saturating_sub(state.started_at_millis) / 1000,
                eta_seconds: (complete == state.total_segments).then_some(0),
            })
        })
        .collect();
    snapshots.sort_by(|a, b| a.table.cmp(&b.table));
    Report {
        table: table.to_owned(),
        shards,
        workers,
        malformed: scan.malformed.iter().map(|e| e.to_string()).collect(),
        snapshots,
    }
}

/// Renders the report as aligned text columns.
pub fn render_text(report: &Report) -> String {
    let mut out = String::new();
    let with_lag = report.shards.iter().any(|row| row.lag_seconds.is_some());
    let shard_rows: Vec<Vec<String>> = report
        .shards
        .iter()
        .map(|row| {
            let mut cells = vec![
                short_stream(&row.stream),
                row.shard.clone(),
                if row.parents.is_empty() {
                    "-".into()
                } else {
                    row.parents.join(",")
                },
                row.owner.clone().unwrap_or_else(|| "-".into()),
                checkpoint_cell(row),
                row.state.to_owned(),
                row.seconds_since_update
                    .map_or("-".into(), |s| s.to_string()),
            ];
            if with_lag {
                cells.push(lag_cell(row));
            }
            cells
        })
        .collect();
    let _ = writeln!(
        out,
        "lease table {}: {} shard leases",
        report.table,
        report.shards.len()
    );
    let mut header = vec![
        "STREAM",
        "SHARD",
        "PARENT",
        "OWNER",
        "CHECKPOINT",
        "STATE",
        "SECONDS_SINCE_UPDATE",
    ];
    if with_lag {
        header.push("LAG_SECONDS");
    }
    out.push_str(&columns(&header, &shard_rows));
    let worker_rows: Vec<Vec<String>> = report
        .workers
        .iter()
        .map(|w| {
            vec![
                w.worker.clone(),
                w.leases.to_string(),
                w.seconds_since_update.map_or("-".into(), |s| s.to_string()),
                if w.leader { "yes".into() } else { "-".into() },
                if w.pipelines.is_empty() {
                    "-".into()
                } else {
                    w.pipelines.join(",")
                },
            ]
        })
        .collect();
    let _ = writeln!(out, "\nworkers: {}", report.workers.len());
    out.push_str(&columns(
        &[
            "WORKER",
            "LEASES",
            "SECONDS_SINCE_UPDATE",
            "LEADER",
            "PIPELINES",
        ],
        &worker_rows,
    ));
    if !report.snapshots.is_empty() {
        let rows: Vec<Vec<String>> = report
            .snapshots
            .iter()
            .map(|s| {
                vec![
                    s.table.clone(),
                    format!("{}/{}", s.complete, s.segments),
                    s.scanning.to_string(),
                    s.items.to_string(),
                    s.elapsed_seconds.to_string(),
                    s.eta_seconds.map_or("-".into(), |eta| eta.to_string()),
                ]
            })
            .collect();
        let _ = writeln!(
            out,
            "
snapshots: {}",
            report.snapshots.len()
        );
        out.push_str(&columns(
            &[
                "TABLE",
                "COMPLETE",
                "SCANNING",
                "ITEMS",
                "ELAPSED_SECONDS",
                "ETA_SECONDS",
            ],
            &rows,
        ));
    }
    for item in &report.malformed {
        let _ = writeln!(out, "malformed item: {item}");
    }
    out
}

/// The shard's checkpoint, then each pipeline's: `300 (audit=300 search=SHARD_END)`.
fn checkpoint_cell(row: &ShardRow) -> String {
    if row.pipelines.is_empty() {
        return row.checkpoint.clone();
    }
    let each: Vec<String> = row
        .pipelines
        .iter()
        .map(|(name, checkpoint)| format!("{name}={checkpoint}"))
        .collect();
    format!("{} ({})", row.checkpoint, each.join(" "))
}

/// Each pipeline's lag (`audit=3600 search=0`), or the application's; `?`
/// where it could not be read, `-` where nothing is left to read.
fn lag_cell(row: &ShardRow) -> String {
    let Some(lags) = row.lag_seconds.as_ref().filter(|lags| !lags.is_empty()) else {
        return "-".into();
    };
    let shown = |lag: &Option<u64>| lag.map_or("?".into(), |s| s.to_string());
    match lags.get("-") {
        Some(lag) if lags.len() == 1 => shown(lag),
        _ => lags
            .iter()
            .map(|(name, lag)| format!("{name}={}", shown(lag)))
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// `arn:aws:dynamodb:r:a:table/orders/stream/2024-...` reads as `orders/2024-...`.
fn short_stream(arn: &str) -> String {
    match arn.split_once(":table/") {
        Some((_, rest)) => rest.replacen("/stream/", "/", 1),
        None => arn.to_owned(),
    }
}

fn columns(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let text: Vec<String> = cells
            .iter()
            .zip(widths.iter())
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        let _ = writeln!(out, "{}", text.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_follow_checkpoints_owners_and_parents() {
        let mut parent = Lease::new(
            "arn:aws:dynamodb:r:1:table/t/stream/l",
            "p",
            None,
            Checkpoint::Sequence("5".into()),
        );
        parent.owner = Some("w1".into());
        parent.updated_at_millis = Some(10_000);
        parent
            .pipeline_checkpoints
            .insert("search".into(), Checkpoint::Sequence("7".into()));
        parent
            .pipeline_checkpoints
            .insert("audit".into(), Checkpoint::Sequence("5".into()));
        let child = Lease::new(
            "arn:aws:dynamodb:r:1:table/t/stream/l",
            "c",
            Some("p"),
            Checkpoint::TrimHorizon,
        );
        let mut ended = Lease::new(
            "arn:aws:dynamodb:r:1:table/t/stream/l",
            "e",
            None,
            Checkpoint::ShardEnd,
        );
        ended.owner = None;
        let mut presence = Lease::worker_presence("w1");
        presence.owner = Some("w1".into());
        let scan = LeaseScan {
            leases: vec![parent, child, ended, presence],
            malformed: Vec::new(),
        };
        let report = build("app-leases", &scan, 13_500);
        let states: Vec<(&str, &str)> = report
            .shards
            .iter()
            .map(|r| (r.shard.as_str(), r.state))
            .collect();
        assert_eq!(
            states,
            [("c", "waiting_for_parent"), ("e", "ended"), ("p", "active")]
        );
        assert_eq!(report.shards[2].seconds_since_update, Some(3));
        assert_eq!(report.workers.len(), 1);
        assert_eq!(report.workers[0].leases, 1);
        let text = render_text(&report);
        assert!(text.contains("t/l"), "{text}");
        assert!(text.contains("waiting_for_parent"));
        assert!(text.contains("5 (audit=5 search=7)"), "{text}");
        assert!(!text.contains("LAG_SECONDS"), "only with --lag: {text}");
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["shards"][2]["owner"], "w1");
        assert_eq!(json["shards"][2]["pipelines"]["search"], "7");

        // With --lag: each pipeline's, where it is measured; none in an ended shard.
        let mut report = report;
        let positions: Vec<Vec<String>> = report
            .shards
            .iter()
            .map(|r| r.positions().into_iter().map(|(name, _)| name).collect())
            .collect();
        assert_eq!(positions, [vec!["-"], vec![], vec!["audit", "search"]]);
        report.shards[2].lag_seconds =
            Some([("audit".into(), Some(3600)), ("search".into(), None)].into());
        report.shards[0].lag_seconds = Some([("-".into(), Some(0))].into());
        let text = render_text(&report);
        assert!(text.contains("LAG_SECONDS"), "{text}");
        assert!(text.contains("audit=3600 search=?"), "{text}");
        assert!(
            text.lines().nth(2).is_some_and(|l| l.ends_with(" 0")),
            "{text}"
        );
    }
}
