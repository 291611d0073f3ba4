//! Per-pipeline settings: `DYNASTREAM_PIPELINE_<NAME>_<SETTING>` over the
//! unprefixed defaults.
//!
//! Each pipeline's [`Processing`] is parsed by the same clap arguments as the
//! defaults, so a pipeline's value gets the same parser, range and message.
//! The pipeline's overrides go in as flags; the defaults given as flags are
//! passed on; defaults given as variables are read by clap from the
//! environment as for the main configuration.

use std::collections::BTreeMap;
use std::ffi::OsString;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, Command, FromArgMatches};

use super::{describe_clap_error, Config, ConfigError, Processing, StartingPosition};

/// The setting that is not a processing setting but may be given per pipeline.
const STARTING_POSITION: &str = "STARTING_POSITION";

/// The prefix of every per-pipeline variable.
const PREFIX: &str = "DYNASTREAM_PIPELINE_";

/// One named pipeline, its settings resolved.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// The name from `DYNASTREAM_PIPELINES`: the key of its checkpoints in
    /// the lease table and its `pipeline` metric label.
    pub name: String,
    /// Its processing settings, its own where given, else the defaults.
    pub settings: Processing,
    /// Where it starts on a shard that other pipelines already read: the
    /// shard's checkpoint (`LATEST`) or the oldest record held (`TRIM_HORIZON`).
    pub starting_position: StartingPosition,
}

impl PipelineConfig {
    /// The variable that sets `setting` (`BATCH_SIZE`) for this pipeline.
    pub fn variable(&self, setting: &str) -> String {
        setting_variable(Some(&self.name), setting)
    }
}

/// The variable that sets `setting` (`BATCH_SIZE`) for the named pipeline,
/// or, for `None`, the application's default: what an error names.
pub fn setting_variable(pipeline: Option<&str>, setting: &str) -> String {
    match pipeline {
        Some(name) => format!("{PREFIX}{}_{setting}", name.to_ascii_uppercase()),
        None => format!("DYNASTREAM_{setting}"),
    }
}

/// Parses one entry of `DYNASTREAM_PIPELINES`.
pub(super) fn pipeline_name(value: &str) -> Result<String, String> {
    let name = value.trim();
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err("a pipeline name is 1 to 64 characters of a-z, 0-9 and '_'".into());
    }
    Ok(name.to_owned())
}

/// One processing argument: its flag and its setting's suffix.
struct Setting {
    id: String,
    long: String,
    suffix: String,
}

fn processing_settings() -> Vec<Setting> {
    Processing::augment_args(Command::new("pipeline"))
        .get_arguments()
        .filter_map(|arg| {
            let env = arg.get_env()?.to_string_lossy().into_owned();
            Some(Setting {
                id: arg.get_id().to_string(),
                long: arg.get_long()?.to_owned(),
                suffix: env.strip_prefix("DYNASTREAM_")?.to_owned(),
            })
        })
        .collect()
}

/// Resolves every declared pipeline's settings from `vars` (the process's
/// environment) over the defaults in `config` and `matches`. Empty when no
/// pipeline is declared; an error for a setting of an undeclared pipeline,
/// an unknown setting, a bad value, or a name declared twice.
pub(super) fn resolve(
    config: &Config,
    matches: &ArgMatches,
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<Vec<PipelineConfig>, ConfigError> {
    let names = &config.pipeline_names;
    if let Some(twice) = names
        .iter()
        .enumerate()
        .find_map(|(i, n)| names[..i].contains(n).then_some(n))
    {
        return Err(ConfigError(format!(
            "DYNASTREAM_PIPELINES names {twice:?} twice: each pipeline needs its own name"
        )));
    }
    let settings = processing_settings();
    let overrides = overrides(names, &settings, vars)?;
    names
        .iter()
        .map(|name| {
            let own = overrides.get(name.as_str()).cloned().unwrap_or_default();
            pipeline(name, &own, &settings, matches)
        })
        .collect()
}

/// Every `DYNASTREAM_PIPELINE_<NAME>_<SETTING>` in `vars`, by pipeline then suffix.
fn overrides(
    names: &[String],
    settings: &[Setting],
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<BTreeMap<String, BTreeMap<String, String>>, ConfigError> {
    let known = |suffix: &str| {
        suffix == STARTING_POSITION || settings.iter().any(|setting| setting.suffix == suffix)
    };
    // The longest name first, so `a_b` wins over `a` for `..._A_B_BATCH_SIZE`.
    let mut by_length: Vec<&String> = names.iter().collect();
    by_length.sort_by_key(|name| std::cmp::Reverse(name.len()));
    let mut found: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for (key, value) in vars {
        let Some(key) = key.to_str() else { continue };
        let Some(rest) = key.strip_prefix(PREFIX) else {
            continue;
        };
        if key == "DYNASTREAM_PIPELINE_BUFFER_RECORDS" {
            continue;
        }
        let value = value.to_string_lossy().into_owned();
        let owner = by_length.iter().find_map(|name| {
            let suffix = rest
                .strip_prefix(name.to_ascii_uppercase().as_str())?
                .strip_prefix('_')?;
            Some((name, suffix))
        });
        match owner {
            Some((name, suffix)) if known(suffix) => {
                found
                    .entry(name.to_string())
                    .or_default()
                    .insert(suffix.to_owned(), value);
            }
            Some((_, suffix)) => {
                let mut suffixes: Vec<&str> = settings.iter().map(|s| s.suffix.as_str()).collect();
                suffixes.push(STARTING_POSITION);
                return Err(ConfigError(format!(
                    "{key}: {suffix} is not a per-pipeline setting; one of: {}",
                    suffixes.join(", ")
                )));
            }
            None => {
                let declared = if names.is_empty() {
                    "none: DYNASTREAM_PIPELINES is not set".to_owned()
                } else {
                    names.join(", ")
                };
                return Err(ConfigError(format!(
                    "{key} is set but names no pipeline declared in DYNASTREAM_PIPELINES \
                     (declared: {declared})"
                )));
            }
        }
    }
    Ok(found)
}

/// One pipeline's settings: its own values as flags, the defaults' flags
/// passed on, the defaults' variables read again by clap.
fn pipeline(
    name: &str,
    own: &BTreeMap<String, String>,
    settings: &[Setting],
    matches: &ArgMatches,
) -> Result<PipelineConfig, ConfigError> {
    let mut argv: Vec<OsString> = vec!["dynastream".into()];
    for setting in settings {
        if let Some(value) = own.get(&setting.suffix) {
            argv.push(format!("--{}={value}", setting.long).into());
        } else if matches.value_source(&setting.id) == Some(ValueSource::CommandLine) {
            let raw: Vec<String> = matches
                .get_raw(&setting.id)
                .into_iter()
                .flatten()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            argv.push(format!("--{}={}", setting.long, raw.join(",")).into());
        }
    }
    let name_of = |arg_text: &str| {
        let flag = arg_text.split_whitespace().next().unwrap_or(arg_text);
        let long = flag
            .trim_start_matches('-')
            .split('=')
            .next()
            .unwrap_or(flag);
        match settings.iter().find(|s| s.long == long) {
            Some(s) if own.contains_key(&s.suffix) => setting_variable(Some(name), &s.suffix),
            Some(s) => format!("DYNASTREAM_{} (--{})", s.suffix, s.long),
            None => flag.to_owned(),
        }
    };
    let parsed = Processing::augment_args(Command::new("dynastream"))
        .try_get_matches_from(argv)
        .and_then(|m| Processing::from_arg_matches(&m))
        .map_err(|err| ConfigError(describe_clap_error(&err, name_of)))?;
    let starting_position = match own.get(STARTING_POSITION) {
        None => StartingPosition::Latest,
        Some(value) => <StartingPosition as clap::ValueEnum>::from_str(value.trim(), true)
            .map_err(|_| {
                ConfigError(format!(
                    "invalid {} value {value:?}: expected one of: LATEST, TRIM_HORIZON",
                    setting_variable(Some(name), STARTING_POSITION)
                ))
            })?,
    };
    Ok(PipelineConfig {
        name: name.to_owned(),
        settings: parsed,
        starting_position,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Invocation, ProcessorSpec};

    fn resolve_with(args: &[&str], vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut argv = vec!["dynastream", "--tables", "orders"];
        argv.extend_from_slice(args);
        let matches = Config::command().try_get_matches_from(argv).unwrap();
        let mut config = Config::from_arg_matches(&matches).unwrap();
        let vars = vars
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        config.pipelines = resolve(&config, &matches, vars)?;
        config.validate()?;
        Ok(config)
    }

    use clap::CommandFactory;

    #[test]
    fn without_pipelines_nothing_is_resolved() {
        let config = resolve_with(&[], &[]).unwrap();
        assert!(config.pipelines.is_empty());
    }

    #[test]
    fn each_pipeline_takes_its_own_value_or_the_default() {
        let config = resolve_with(
            &["--pipelines", "search,audit_log,cache", "--batch-size", "7"],
            &[
                ("DYNASTREAM_PIPELINE_SEARCH_BATCH_SIZE", "50"),
                ("DYNASTREAM_PIPELINE_AUDIT_LOG_PROCESSOR", "count,stdout"),
                (
                    "DYNASTREAM_PIPELINE_AUDIT_LOG_STARTING_POSITION",
                    "trim_horizon",
                ),
                ("DYNASTREAM_PIPELINE_BUFFER_RECORDS", "5000"),
            ],
        )
        .unwrap();
        let names: Vec<&str> = config.pipelines.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["search", "audit_log", "cache"]);
        let [search, audit, cache] = &config.pipelines[..] else {
            unreachable!()
        };
        assert_eq!(search.settings.batch_size.get(), 50);
        assert_eq!(audit.settings.batch_size.get(), 7);
        assert_eq!(cache.settings.batch_size.get(), 7);
        assert_eq!(
            audit.settings.processor,
            [ProcessorSpec::Count, ProcessorSpec::Stdout]
        );
        assert_eq!(search.settings.processor, [ProcessorSpec::Stdout]);
        assert_eq!(audit.starting_position, StartingPosition::TrimHorizon);
        assert_eq!(cache.starting_position, StartingPosition::Latest);
    }

    #[test]
    fn a_setting_for_an_undeclared_pipeline_is_an_error_naming_it() {
        let err = resolve_with(
            &["--pipelines", "search"],
            &[("DYNASTREAM_PIPELINE_AUDIT_BATCH_SIZE", "5")],
        )
        .unwrap_err();
        assert!(
            err.0.contains("DYNASTREAM_PIPELINE_AUDIT_BATCH_SIZE"),
            "{err}"
        );
        assert!(err.0.contains("declared: search"), "{err}");
        let err = resolve_with(&[], &[("DYNASTREAM_PIPELINE_SEARCH_FILTER", "{}")]).unwrap_err();
        assert!(err.0.contains("DYNASTREAM_PIPELINES is not set"), "{err}");
    }

    #[test]
    fn a_bad_value_names_the_pipeline_variable() {
        let err = resolve_with(
            &["--pipelines", "search"],
            &[("DYNASTREAM_PIPELINE_SEARCH_BATCH_SIZE", "0")],
        )
        .unwrap_err();
        assert!(
            err.0
                .starts_with("invalid DYNASTREAM_PIPELINE_SEARCH_BATCH_SIZE value \"0\""),
            "{err}"
        );
        assert!(err.0.contains("from 1 to 10000"), "{err}");
        let err = resolve_with(
            &["--pipelines", "search"],
            &[("DYNASTREAM_PIPELINE_SEARCH_STARTING_POSITION", "NOW")],
        )
        .unwrap_err();
        assert!(
            err.0
                .contains("DYNASTREAM_PIPELINE_SEARCH_STARTING_POSITION"),
            "{err}"
        );
        let err = resolve_with(
            &["--pipelines", "search"],
            &[("DYNASTREAM_PIPELINE_SEARCH_PROCESSOR", "http")],
        )
        .unwrap_err();
        assert!(
            err.0.contains("DYNASTREAM_PIPELINE_SEARCH_PROCESSOR includes http but DYNASTREAM_PIPELINE_SEARCH_HTTP_URL is not set"),
            "{err}"
        );
    }

    #[test]
    fn unknown_settings_and_names_are_refused() {
        let err = resolve_with(
            &["--pipelines", "search"],
            &[("DYNASTREAM_PIPELINE_SEARCH_LEASE_DURATION_MS", "5000")],
        )
        .unwrap_err();
        assert!(
            err.0
                .contains("LEASE_DURATION_MS is not a per-pipeline setting"),
            "{err}"
        );
        assert!(err.0.contains("BATCH_SIZE"), "{err}");
        let err = resolve_with(&["--pipelines", "search,search"], &[]).unwrap_err();
        assert!(err.0.contains("twice"), "{err}");
        for bad in ["Search", "a-b", ""] {
            let argv = ["dynastream", "--tables", "orders", "--pipelines", bad];
            match Config::from_args(argv) {
                Err(err) => assert!(err.0.contains("DYNASTREAM_PIPELINES"), "{bad}: {err}"),
                Ok(Invocation::Run(c)) => {
                    assert!(bad.is_empty() && c.pipelines.is_empty(), "{bad} accepted")
                }
                Ok(Invocation::Print(_)) => panic!("printed"),
            }
        }
    }

    #[test]
    fn the_longest_declared_name_owns_a_variable() {
        let config = resolve_with(
            &["--pipelines", "a,a_batch"],
            &[("DYNASTREAM_PIPELINE_A_BATCH_BATCH_SIZE", "9")],
        )
        .unwrap();
        assert_eq!(config.pipelines[1].settings.batch_size.get(), 9);
        assert_eq!(config.pipelines[0].settings.batch_size.get(), 100);
    }
}
