//! `kindling nosql`: a function's NoSQL tables from outside, through the worker's admin API
//! (declare, list, drop; load and read items, as SeBS's harness does before a run).

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use kindling_api::client::Client;
use kindling_api::types::TableKeys;
use std::io::Read;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum NosqlCommand {
    /// List a function's tables with their keys and what they hold.
    Tables { function: String },
    /// Declare a function's table with its primary and secondary key names.
    Declare {
        function: String,
        table: String,
        #[arg(long)]
        primary_key: String,
        #[arg(long)]
        secondary_key: String,
    },
    /// Drop a function's table and its items.
    Drop { function: String, table: String },
    /// Store items (each a JSON object with both key attributes) from a file, or `-` for
    /// standard input: a JSON list, or one object per line. All are stored, or none.
    Load {
        function: String,
        table: String,
        file: PathBuf,
    },
    /// Print a table's items (those of one primary key value with --primary or
    /// --primary-int) as a JSON list.
    Items {
        function: String,
        table: String,
        /// A string primary key value.
        #[arg(long, conflicts_with = "primary_int")]
        primary: Option<String>,
        /// An integer primary key value.
        #[arg(long)]
        primary_int: Option<i64>,
    },
}

/// Items from a JSON list, or from JSON objects one per line.
fn parse_items(text: &str) -> Result<Vec<serde_json::Value>> {
    if text.trim_start().starts_with('[') {
        return serde_json::from_str(text).context("the items are not a JSON list");
    }
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("line {} is not a JSON object", i + 1))
        })
        .collect()
}

pub async fn run(c: &mut Client, command: NosqlCommand) -> Result<()> {
    match command {
        NosqlCommand::Tables { function } => {
            let t = c.nosql_tables(&function).await?;
            if t.tables.is_empty() {
                println!("{function} has no NoSQL tables");
            }
            for table in t.tables {
                println!(
                    "{}\tprimary {}\tsecondary {}\t{} items\t{} bytes",
                    table.table, table.primary_key, table.secondary_key, table.items, table.bytes
                );
            }
        }
        NosqlCommand::Declare {
            function,
            table,
            primary_key,
            secondary_key,
        } => {
            let keys = TableKeys {
                primary_key,
                secondary_key,
            };
            let d = c.nosql_declare(&function, &table, &keys).await?;
            println!("{function}/{table}: {:?}", d.declared);
        }
        NosqlCommand::Drop { function, table } => {
            let d = c.nosql_drop(&function, &table).await?;
            println!("{function}/{table}: dropped with {} items", d.items);
        }
        NosqlCommand::Load {
            function,
            table,
            file,
        } => {
            let mut text = String::new();
            if file.as_os_str() == "-" {
                std::io::stdin().read_to_string(&mut text)?;
            } else {
                text = std::fs::read_to_string(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?;
            }
            let items = parse_items(&text)?;
            let loaded = c.nosql_load(&function, &table, &items).await?;
            println!("{function}/{table}: {} items stored", loaded.loaded);
        }
        NosqlCommand::Items {
            function,
            table,
            primary,
            primary_int,
        } => {
            let primary = match (primary, primary_int) {
                (Some(s), None) => Some(serde_json::Value::from(s)),
                (None, Some(i)) => Some(serde_json::Value::from(i)),
                (None, None) => None,
                (Some(_), Some(_)) => bail!("give --primary or --primary-int, not both"),
            };
            let items = c.nosql_items(&function, &table, primary.as_ref()).await?;
            println!("{}", serde_json::to_string_pretty(&items.items)?);
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn items_come_as_a_list_or_one_object_per_line() {
        assert_eq!(parse_items(r#" [{"a": 1}, {"a": 2}]"#).unwrap().len(), 2);
        assert_eq!(parse_items("{\"a\": 1}\n\n{\"a\": 2}\n").unwrap().len(), 2);
        let e = parse_items("{\"a\": 1}\nnope\n").unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
    }
}
