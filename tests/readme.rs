//! The README's configuration table is checked against the configuration
//! code, so neither can drift from the other.

use std::collections::HashMap;

fn readme_rows() -> HashMap<String, Vec<String>> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("read README.md");
    readme
        .lines()
        .filter(|line| line.starts_with("| `DYNASTREAM_"))
        .map(|line| {
            let cells: Vec<String> = line
                .trim_matches('|')
                .split(" | ")
                .map(|cell| cell.trim().to_owned())
                .collect();
            (cells[0].trim_matches('`').to_owned(), cells)
        })
        .collect()
}

#[test]
fn every_variable_is_in_the_readme_table_with_its_default() {
    let rows = readme_rows();
    for (variable, default) in dynastream::config::Config::variables() {
        let row = rows
            .get(&variable)
            .unwrap_or_else(|| panic!("{variable} is missing from the README's table"));
        assert_eq!(
            row.len(),
            4,
            "{variable}: variable | default | values | meaning"
        );
        if let Some(default) = default {
            assert!(
                row[1].contains(&format!("`{default}`")),
                "{variable}: README default {:?}, code default {default:?}",
                row[1]
            );
        }
    }
}

#[test]
fn the_readme_documents_no_variable_the_code_does_not_read() {
    let known: Vec<String> = dynastream::config::Config::variables()
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    for variable in readme_rows().keys() {
        assert!(
            known.contains(variable),
            "README documents unknown {variable}"
        );
    }
}
