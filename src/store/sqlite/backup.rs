//! Online backup of a SQLite vault: a consistent copy of the file taken while the vault serves.
//!
//! The copy is made by `VACUUM INTO` on a read-only connection: one read transaction, so the
//! copy is the database as of one commit (WAL readers never block the writer, and the writer
//! never blocks them), compacted, with every committed frame of the WAL folded in. It is written
//! beside the target under a temporary name, checked (`PRAGMA quick_check`), synced, then
//! linked into place (a link, unlike a rename, never replaces a file created meanwhile), so a target that exists is always a whole, checked backup.
//!
//! Owns: copying the file. Must never: write to the source database, overwrite an existing
//! file, or hold key material (the copy holds only sealed fields and wrapped data keys).

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use super::file_of;
use crate::store::StoreError;

/// What a backup holds, read back from the copy itself.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BackupReport {
    pub path: PathBuf,
    pub bytes: u64,
    /// The audit chain's head in the copy: events up to this sequence number are in it.
    pub audit_seq: i64,
    pub customers: i64,
}

/// Copies the vault at `url` (`sqlite://PATH`) to `to`, which must not exist.
pub fn backup(url: &str, to: &Path) -> Result<BackupReport, StoreError> {
    let source = file_of(url)?;
    if !source.is_file() {
        return Err(StoreError::Backup(format!("no SQLite database at {}", source.display())));
    }
    if to.exists() {
        return Err(StoreError::Backup(format!("{} exists; a backup never overwrites a file", to.display())));
    }
    let name = to.file_name().ok_or_else(|| StoreError::Backup("--to must name a file".into()))?;
    let dir = match to.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let partial = dir.join(format!(".{}.partial-{}", name.to_string_lossy(), std::process::id()));
    let result = copy_checked(&source, &partial, to, &dir);
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

fn copy_checked(source: &Path, partial: &Path, to: &Path, dir: &Path) -> Result<BackupReport, StoreError> {
    let io = |what: &str, e: std::io::Error| StoreError::Backup(format!("{what}: {e}"));
    let _ = std::fs::remove_file(partial); // a leftover of this process id's earlier attempt
    {
        let src =
            Connection::open_with_flags(source, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
        src.busy_timeout(std::time::Duration::from_secs(30))?;
        let target = partial.to_str().ok_or_else(|| StoreError::Backup("--to must be a UTF-8 path".into()))?;
        src.execute("VACUUM INTO ?1", [target])?;
    }
    let (audit_seq, customers) = {
        let copy = Connection::open_with_flags(partial, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        let check: String = copy.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
        if check != "ok" {
            return Err(StoreError::Backup("the copy failed SQLite's quick_check".into()));
        }
        let seq: i64 = copy.query_row("SELECT seq FROM audit_head WHERE id = 1", [], |r| r.get(0))?;
        let customers: i64 = copy.query_row("SELECT count(*) FROM customers", [], |r| r.get(0))?;
        (seq, customers)
    };
    let file = std::fs::File::open(partial).map_err(|e| io("cannot open the copy", e))?;
    file.sync_all().map_err(|e| io("cannot sync the copy", e))?;
    let bytes = file.metadata().map_err(|e| io("cannot stat the copy", e))?.len();
    std::fs::hard_link(partial, to).map_err(|e| io(&format!("cannot create {}", to.display()), e))?;
    std::fs::remove_file(partial).map_err(|e| io("cannot remove the temporary copy", e))?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io("cannot sync the directory", e))?;
    Ok(BackupReport { path: to.to_path_buf(), bytes, audit_seq, customers })
}
