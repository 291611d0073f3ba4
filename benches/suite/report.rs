//! Figures: what a scenario measured, for dynastream and the ceiling side by
//! side, and how the suite prints them.

use serde::{Deserialize, Serialize};

/// The prefix of a figure's line on a scenario process's standard output.
pub const FIGURE_PREFIX: &str = "FIGURE ";

/// One measured quantity.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Figure {
    /// The scenario that measured it.
    pub scenario: String,
    /// What was measured, with its unit.
    pub name: String,
    /// dynastream's value.
    pub dynastream: f64,
    /// The ceiling's value on the same data in the same run, or the
    /// reference the figure is read against when the raw loop has no
    /// counterpart (written in `reference`).
    pub ceiling: Option<f64>,
    /// What the ceiling column means when it is not the raw SDK loop.
    pub reference: Option<String>,
    /// Another baseline in the ceiling column, named here, that the ratio
    /// is still taken against (the plain Node SDK v3 loop).
    #[serde(default)]
    pub baseline: Option<String>,
    /// The target, in words.
    pub target: Option<String>,
    /// Whether the target was met.
    pub met: Option<bool>,
}

impl Figure {
    /// A figure with nothing beside it yet.
    pub fn new(scenario: &str, name: &str, dynastream: f64) -> Figure {
        Figure {
            scenario: scenario.to_owned(),
            name: name.to_owned(),
            dynastream,
            ceiling: None,
            reference: None,
            baseline: None,
            target: None,
            met: None,
        }
    }

    /// The raw SDK loop's value for the same quantity.
    pub fn ceiling(mut self, value: f64) -> Figure {
        self.ceiling = Some(value);
        self
    }

    /// A reference value that is not the raw loop's, and what it is.
    pub fn reference(mut self, value: f64, what: &str) -> Figure {
        self.ceiling = Some(value);
        self.reference = Some(what.to_owned());
        self
    }

    /// Another baseline's value for the same quantity, and which baseline:
    /// printed in the ceiling column with its name, the ratio taken against it.
    pub fn baseline(mut self, value: f64, what: &str) -> Figure {
        self.ceiling = Some(value);
        self.baseline = Some(what.to_owned());
        self
    }

    /// The target and whether this run met it.
    pub fn target(mut self, text: &str, met: bool) -> Figure {
        self.target = Some(text.to_owned());
        self.met = Some(met);
        self
    }

    /// dynastream's value over the ceiling's.
    pub fn ratio(&self) -> Option<f64> {
        self.ceiling
            .filter(|c| *c != 0.0 && self.reference.is_none())
            .map(|c| self.dynastream / c)
    }

    /// Prints the figure for the suite to collect.
    pub fn emit(&self) {
        println!(
            "{FIGURE_PREFIX}{}",
            serde_json::to_string(self).expect("a figure serializes")
        );
    }
}

fn number(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude >= 1000.0 {
        format!("{value:.0}")
    } else if magnitude >= 10.0 {
        format!("{value:.1}")
    } else if magnitude >= 0.1 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}

/// The figures as a Markdown table.
pub fn table(figures: &[Figure]) -> String {
    let mut out = String::from(
        "| scenario | figure | dynastream | ceiling (raw SDK loop) | ratio | target | met |\n\
         |---|---|---:|---:|---:|---|---|\n",
    );
    for f in figures {
        let ceiling = match (&f.ceiling, f.reference.as_ref().or(f.baseline.as_ref())) {
            (Some(value), Some(what)) => format!("{} ({what})", number(*value)),
            (Some(value), None) => number(*value),
            (None, _) => "—".to_owned(),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            f.scenario,
            f.name,
            number(f.dynastream),
            ceiling,
            f.ratio()
                .map(|r| format!("{r:.2}x"))
                .unwrap_or_else(|| "—".into()),
            f.target.as_deref().unwrap_or(""),
            match f.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "",
            },
        ));
    }
    out
}
