//! `tagstorm-sim policies`: every policy field, each policy's value and what the field does, or one policy as a complete TOML file to edit.

use std::fmt::Write as _;
use std::io::Write;

use tagstorm_core::Policy;
use tagstorm_core::config::POLICY_FIELDS;

use crate::cli::{CliError, Outcome, PoliciesArgs, load_policy, write_line};

/// `policies --help`'s examples and notes.
pub const POLICIES_HELP: &str = "\
Examples:
  tagstorm-sim policies                        # the three presets side by side
  tagstorm-sim policies tagstorm scenarios/policies/cost-first.toml
  tagstorm-sim policies --toml tagstorm > my-policy.toml
  tagstorm-sim compare scenarios/workday.toml --policies tagstorm,my-policy.toml

The table has one row per field: its name (the key for --set policy.NAME=VALUE and for a policy
file), each policy's value as TOML writes it (\"-\": not set), and what it does. Units are in
the name (_ms, _percent, per_hour) or the line.

--toml prints one policy as a complete policy file: every field with its value and a comment
saying what it does, the unset ones commented out, named `my-` and the policy's name. A
policy file may also start from a preset with `extends = \"tagstorm\"` and set only what
differs; such a file without a `name` is called after itself.

Exit codes: 0 ok; 2 an unknown preset or an unreadable or invalid policy file; 3 stdout could
not be written.";

/// The fields of `policy` as TOML values, by name; `None` for an unset optional field.
fn values(policy: &Policy) -> Vec<Option<String>> {
    let table = toml::Table::try_from(policy).unwrap_or_default();
    POLICY_FIELDS
        .iter()
        .map(|(name, _)| table.get(*name).map(|v| v.to_string()))
        .collect()
}

/// The side-by-side table of `policies`' fields.
pub fn table(policies: &[Policy]) -> String {
    let columns: Vec<Vec<String>> = policies
        .iter()
        .map(|p| {
            values(p)
                .into_iter()
                .map(|v| v.unwrap_or_else(|| "-".into()))
                .collect()
        })
        .collect();
    let name_w = POLICY_FIELDS
        .iter()
        .map(|(n, _)| n.len())
        .max()
        .unwrap_or(0)
        .max("field".len());
    let widths: Vec<usize> = policies
        .iter()
        .zip(&columns)
        .map(|(p, col)| {
            col.iter()
                .map(|v| v.chars().count())
                .chain([p.name.chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let _ = write!(out, "{:name_w$}", "field");
    for (p, w) in policies.iter().zip(&widths) {
        let _ = write!(out, "  {:w$}", p.name);
    }
    out.push_str("  what it does\n");
    for (i, (name, what)) in POLICY_FIELDS.iter().enumerate() {
        let _ = write!(out, "{name:name_w$}");
        for (col, w) in columns.iter().zip(&widths) {
            let _ = write!(out, "  {:w$}", col[i]);
        }
        let _ = writeln!(out, "  {what}");
    }
    out
}

/// `policy` as a complete policy file, each field under a comment saying what it does.
pub fn toml_file(policy: &Policy) -> String {
    let mut out = format!(
        "# Every field of the policy `{}` (tagstorm-sim policies --toml {}).\n\
         # Edit the values and pass the file with --policy FILE.toml. Units are in the names\n\
         # (_ms, _percent, per_hour).\n",
        policy.name, policy.name
    );
    for ((name, what), value) in POLICY_FIELDS.iter().zip(values(policy)) {
        let _ = writeln!(out, "\n# {what}");
        match value {
            // A preset's name is the preset's: results and baselines are keyed by it.
            _ if *name == "name" => {
                let mine = format!("my-{}", policy.name);
                let _ = writeln!(out, "name = {}", toml::Value::from(mine));
            }
            Some(v) => {
                let _ = writeln!(out, "{name} = {v}");
            }
            None => {
                let _ = writeln!(out, "# {name} = (not set: remove the # and give a value)");
            }
        }
    }
    out
}

/// `policies`.
pub fn cmd_policies(a: &PoliciesArgs, out: &mut dyn Write) -> Result<Outcome, CliError> {
    let specs: Vec<&str> = if a.policies.is_empty() {
        tagstorm_core::config::PRESETS.to_vec()
    } else {
        a.policies.iter().map(String::as_str).collect()
    };
    let policies = specs
        .iter()
        .map(|s| load_policy(s))
        .collect::<Result<Vec<_>, _>>()?;
    let text = if a.toml {
        match policies.as_slice() {
            [one] => toml_file(one),
            // None named: the default list is all three presets, which is not a choice.
            _ if a.policies.is_empty() => {
                return Err(CliError::Policy(
                    "--toml prints one policy: name it, e.g. policies --toml tagstorm".into(),
                ));
            }
            _ => {
                return Err(CliError::Policy(format!(
                    "--toml prints one policy; {} were given",
                    policies.len()
                )));
            }
        }
    } else {
        table(&policies)
    };
    write_line(out, &text)?;
    Ok(Outcome::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_a_row_per_field_and_a_column_per_policy() {
        let t = table(&[Policy::seed_current(), Policy::tagstorm()]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 1 + POLICY_FIELDS.len());
        assert!(lines[0].starts_with("field"), "{t}");
        assert!(
            lines[0].contains("seed-current") && lines[0].contains("tagstorm"),
            "{t}"
        );
        let row = |name: &str| {
            lines
                .iter()
                .find(|l| l.split_whitespace().next() == Some(name))
                .unwrap_or_else(|| panic!("no row {name}: {t}"))
                .split_whitespace()
                .collect::<Vec<_>>()
        };
        assert_eq!(row("routing")[1..3], ["\"threshold\"", "\"adaptive\""]);
        assert_eq!(row("max_images_per_batch")[1..3], ["50000", "200"]);
        // seed-current gives up polling after an hour; tagstorm never does.
        assert_eq!(row("poll_give_up_ms")[1..3], ["3600000", "-"]);
    }

    /// The file `--toml` prints is a policy file that loads back as the same policy (named
    /// after the file), for every preset.
    #[test]
    fn the_toml_file_loads_back_as_the_same_policy() {
        for preset in tagstorm_core::config::PRESETS {
            let p = Policy::preset(preset).unwrap();
            let text = toml_file(&p);
            let back = crate::scenario::policy_file("mine.toml", &text)
                .unwrap_or_else(|e| panic!("{preset}: {e}\n{text}"));
            assert_eq!(back.name, format!("my-{preset}"));
            assert_eq!(
                Policy {
                    name: p.name.clone(),
                    ..back
                },
                p,
                "{text}"
            );
        }
    }
}
