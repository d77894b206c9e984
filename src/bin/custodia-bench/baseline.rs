//! The do-it-yourself baseline `custodia bench --baseline` compares against: writes the
//! benchmark's synthetic customers (the same generator and seed the vault was seeded with) to
//! a private file, runs `bench/baseline.sh` (PostgreSQL with pgcrypto AES columns, row-level
//! security per province, a masking view and pgaudit; then a durable audit row per read)
//! and reads back its pgbench figures.
//!
//! Owns: the hand-over to the script. Must never: touch a database it did not create (the
//! script runs a throwaway cluster of its own) or leave the plaintext file behind.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use super::Row;
use custodia::domain::region::Regions;
use custodia::domain::synthetic::Synthetic;
use custodia::domain::CustomerKind;

/// The baseline's scenario names.
pub const PGAUDIT: &str = "baseline: pgcrypto+RLS+mask view+pgaudit";
pub const DURABLE: &str = "baseline: same + durable audit row";

/// The fields, in the script's column order after id, province, city and kind.
const FIELDS: [&str; 9] =
    ["name", "mobile", "resident_id", "email", "address", "birth_date", "bank_card", "company_name", "credit_code"];

/// Writes `count` synthetic customers from `seed` as the script's tab-separated input.
fn write_customers(path: &Path, count: usize, seed: u64) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut generator = Synthetic::new(Regions::builtin(), seed);
    for i in 1..=count {
        let c = generator.customer();
        let region = c.region.as_str();
        let kind = match c.kind {
            CustomerKind::Individual => "individual",
            CustomerKind::Enterprise => "enterprise",
        };
        write!(out, "{i}\t{}\t{region}\t{kind}", c.region.province().unwrap_or(region))?;
        for field in FIELDS {
            // Synthetic values never hold tabs, newlines or backslashes.
            match c.fields.get(field) {
                Some(v) => write!(out, "\t{}", v.expose())?,
                None => out.write_all(b"\t\\N")?,
            }
        }
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

/// Parses the script's `RESULT variant clients tps p50 p99 p999` lines.
fn parse(stdout: &str, seconds: f64) -> Vec<Row> {
    stdout
        .lines()
        .filter_map(|line| {
            let mut it = line.strip_prefix("RESULT ")?.split_whitespace();
            let scenario = match it.next()? {
                "pgaudit" => PGAUDIT,
                "durable-audit-row" => DURABLE,
                _ => return None,
            };
            let concurrency = it.next()?.parse().ok()?;
            let mut num = || it.next().and_then(|v| v.parse::<f64>().ok());
            let (per_second, p50_ms, p99_ms, p999_ms) = (num()?, num()?, num()?, num()?);
            Some(Row {
                scenario,
                concurrency,
                requests: (per_second * seconds) as usize,
                errors: 0,
                per_second,
                p50_ms,
                p99_ms,
                p999_ms,
                server: None,
            })
        })
        .collect()
}

/// Runs the baseline at the given concurrencies. Blocking: call from a blocking thread.
pub fn run(
    script: &Path,
    customers: usize,
    seed: u64,
    seconds: f64,
    concurrency: &[usize],
) -> anyhow::Result<Vec<Row>> {
    anyhow::ensure!(script.exists(), "the baseline script {} is missing", script.display());
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("customers.tsv");
    write_customers(&data, customers, seed)?;
    // The script's own cluster runs as the postgres user, which must be able to read nothing
    // of ours but this file; psql reads it on our side.
    let levels: Vec<String> = concurrency.iter().map(usize::to_string).collect();
    let output = Command::new("bash")
        .arg(script)
        .arg(&data)
        .arg(format!("{}", seconds.ceil().max(1.0) as u64))
        .arg(levels.join(","))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()?;
    anyhow::ensure!(output.status.success(), "the baseline script failed ({})", output.status);
    let rows = parse(&String::from_utf8_lossy(&output.stdout), seconds.ceil().max(1.0));
    anyhow::ensure!(!rows.is_empty(), "the baseline script printed no results");
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_results_and_ignores_the_rest() {
        let rows = parse("noise\nRESULT pgaudit 16 25402.6 0.57 1.30 3.65\nRESULT durable-audit-row 64 11755.7 4.23 18.09 63.92\nRESULT other 1 1 1 1 1\nRESULT pgaudit x\n", 2.0);
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].scenario, rows[0].concurrency), (PGAUDIT, 16));
        assert!((rows[0].per_second - 25402.6).abs() < 1e-6);
        assert_eq!((rows[1].scenario, rows[1].concurrency, rows[1].p99_ms), (DURABLE, 64, 18.09));
    }

    #[test]
    fn writes_the_seeded_customers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.tsv");
        write_customers(&path, 50, 1).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 50);
        for line in lines {
            let cols: Vec<&str> = line.split('\t').collect();
            assert_eq!(cols.len(), 13, "{}", cols.len());
            assert!(cols[2].starts_with(cols[1]), "city within province");
            assert_eq!(cols[5].len(), 11, "a mobile number");
        }
    }
}
