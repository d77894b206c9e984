//! SQLite migrations, embedded in the binary and applied in order inside one `IMMEDIATE`
//! transaction each. The bookkeeping table is `_sqlx_migrations` with sqlx's layout and
//! checksums (SHA-384 of the SQL text), so databases created before the SQLite store left sqlx
//! open and migrate unchanged; an applied migration whose text changed is refused.
//!
//! Owns: the schema's history. Must never: run a migration twice, or run on a database that
//! holds a migration this binary does not know.

use sha2::{Digest, Sha384};

use crate::store::StoreError;

/// (version, description, SQL), in order. `migrations_match_the_directory` checks the list
/// against `migrations/sqlite/`.
pub(super) const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "customers", include_str!("../../../migrations/sqlite/0001_customers.sql")),
    (2, "grants", include_str!("../../../migrations/sqlite/0002_grants.sql")),
    (3, "blind index", include_str!("../../../migrations/sqlite/0003_blind_index.sql")),
    (4, "audit", include_str!("../../../migrations/sqlite/0004_audit.sql")),
    (5, "erasure", include_str!("../../../migrations/sqlite/0005_erasure.sql")),
    (6, "gate", include_str!("../../../migrations/sqlite/0006_gate.sql")),
    (7, "audit links by seq", include_str!("../../../migrations/sqlite/0007_audit_links_by_seq.sql")),
    (8, "idempotency", include_str!("../../../migrations/sqlite/0008_idempotency.sql")),
    (9, "stale key versions", include_str!("../../../migrations/sqlite/0009_stale_key_versions.sql")),
    (10, "audit customer index", include_str!("../../../migrations/sqlite/0010_audit_customer_index.sql")),
    (11, "audit index file", include_str!("../../../migrations/sqlite/0011_audit_index_file.sql")),
];

const BOOKKEEPING: &str = "CREATE TABLE IF NOT EXISTS _sqlx_migrations (
    version BIGINT PRIMARY KEY,
    description TEXT NOT NULL,
    installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    success BOOLEAN NOT NULL,
    checksum BLOB NOT NULL,
    execution_time BIGINT NOT NULL
)";

/// Applies the pending migrations on `c` (the caller holds the migration lock file).
pub(super) fn run(c: &mut rusqlite::Connection) -> Result<(), StoreError> {
    c.execute_batch(BOOKKEEPING)?;
    let applied: Vec<(i64, bool, Vec<u8>)> = {
        let mut stmt = c.prepare("SELECT version, success, checksum FROM _sqlx_migrations ORDER BY version")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    for (version, success, checksum) in &applied {
        let Some((_, _, sql)) = MIGRATIONS.iter().find(|(v, ..)| v == version) else {
            return Err(StoreError::Config(format!(
                "the database has migration {version}, which this binary does not know (is it older than the database?)"
            )));
        };
        if !success {
            return Err(StoreError::Config(format!(
                "migration {version} is recorded as failed; restore from a backup"
            )));
        }
        if checksum.as_slice() != Sha384::digest(sql.as_bytes()).as_slice() {
            return Err(StoreError::Config(format!("migration {version} was modified after it was applied")));
        }
    }
    for (version, description, sql) in MIGRATIONS {
        if applied.iter().any(|(v, ..)| v == version) {
            continue;
        }
        let started = std::time::Instant::now();
        let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute_batch(sql)?;
        tx.execute(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (?1, ?2, TRUE, ?3, ?4)",
            rusqlite::params![
                version,
                description,
                Sha384::digest(sql.as_bytes()).as_slice(),
                i64::try_from(started.elapsed().as_nanos()).unwrap_or(i64::MAX)
            ],
        )?;
        tx.commit()?;
        tracing::info!(version, description, "migration applied");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_match_the_directory() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        assert_eq!(files.len(), MIGRATIONS.len(), "a migration file is not in MIGRATIONS: {files:?}");
        for (file, (version, description, sql)) in files.iter().zip(MIGRATIONS) {
            let (v, rest) = file.trim_end_matches(".sql").split_once('_').unwrap();
            assert_eq!(v.parse::<i64>().unwrap(), *version, "{file}");
            assert_eq!(rest.replace('_', " "), *description, "{file}");
            assert_eq!(std::fs::read_to_string(format!("{dir}/{file}")).unwrap(), *sql, "{file}");
        }
    }

    #[test]
    fn applies_once_and_refuses_a_changed_or_unknown_migration() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = rusqlite::Connection::open(dir.path().join("m.db")).unwrap();
        run(&mut c).unwrap();
        run(&mut c).unwrap();
        let n: i64 = c.query_row("SELECT count(*) FROM _sqlx_migrations", [], |r| r.get(0)).unwrap();
        assert_eq!(n, MIGRATIONS.len() as i64);
        c.execute("UPDATE _sqlx_migrations SET checksum = x'00' WHERE version = 2", []).unwrap();
        assert!(matches!(run(&mut c), Err(StoreError::Config(m)) if m.contains("migration 2 was modified")));
        c.execute("DELETE FROM _sqlx_migrations WHERE version = 2", []).unwrap();
        c.execute(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) VALUES (99, 'x', TRUE, x'00', 0)",
            [],
        )
        .unwrap();
        assert!(matches!(run(&mut c), Err(StoreError::Config(m)) if m.contains("migration 99")));
    }
}
