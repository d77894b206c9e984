//! The customer-keyed access-log index (migration 0010), filled behind the writer.
//!
//! An event's links (which customers it concerns) are written with the event, in its synced
//! commit, to `audit_event_customers`, keyed by sequence number: the rightmost pages of one
//! B-tree. Access reports and `?customer=` searches need them by customer; inserting them into a
//! customer-keyed B-tree in the same commit cost one random page per link, about half of the
//! pages every request waited for. This task copies them into `audit_customer_index` a short
//! transaction at a time, sorted by customer (several links to one customer share a page), and
//! moves `audit_customer_index_state.through` forward in the same transaction. Queries take
//! events up to `through` from the index and events after it from `audit_event_customers`
//! ([`CUSTOMER_EVENTS`]), so they see every link, indexed or not.
//!
//! The index's commits do not wait for the disk (`synchronous = NORMAL`): they are durable with
//! the next audit commit, and a crash before it loses an index turn and its mark together, which
//! the next turn redoes.
//!
//! Owns: the index and its mark. Must never: hold the writer for more than one short turn at a
//! time, or change the index without its mark (or the mark without the index).

use std::sync::{Arc, Weak};
use std::time::Duration;

use rusqlite::Connection;

use super::connections::{Readers, WriteKind, Writer};
use crate::store::StoreError;

/// How often the task looks for links to index. Queries scan at most the links written since
/// (by sequence number, a range of `audit_event_customers`' key).
const EVERY: Duration = Duration::from_millis(500);
/// Links per turn at most (an event's links are never split between turns).
const LINKS_PER_TURN: i64 = 2048;
/// Links per step of a turn: between steps, a turn ends early when another write is waiting for
/// the writer (an audit commit, which requests wait for), so it delays that write by one step
/// and the turn's commit, not by a whole turn. The next synced commit still syncs the turn's
/// pages. Steps of 256 took the answer-time p99 down by a third against whole turns, at ≈ 5 %
/// more CPU per read (docs/PERFORMANCE.md, 2026-12-05 evening); steps of 64 shortened the audit
/// commits' waits behind them again, with the tail of the requests' audit stage, at no CPU
/// per request that paired runs could tell (2026-12-06, late).
const LINKS_PER_STEP: i64 = 64;

/// The sequence numbers of a customer's events: the customer is bound after each part.
/// One statement: the index, its mark and the newer links come from one snapshot.
pub(super) const CUSTOMER_EVENTS: (&str, &str) = (
    "SELECT seq FROM audit_customer_index WHERE customer_id = ",
    " UNION ALL SELECT seq FROM audit_event_customers \
     WHERE seq > (SELECT through FROM audit_customer_index_state WHERE id = 1) AND customer_id = ",
);

/// The links of events `?1..=?2` as written with the events.
pub(super) const LINKS_BY_SEQ: &str =
    "SELECT seq, customer_id FROM audit_event_customers WHERE seq >= ?1 AND seq <= ?2 ORDER BY seq, customer_id";
/// The links of events `?1..=?2` as the customer index holds them.
pub(super) const INDEXED_LINKS: &str =
    "SELECT seq, customer_id FROM audit_customer_index WHERE seq >= ?1 AND seq <= ?2 ORDER BY seq, customer_id";
/// How far the index is complete.
pub(super) const THROUGH: &str = "SELECT through FROM audit_customer_index_state WHERE id = 1";
/// The last sequence number of the next turn: the event of the `LINKS_PER_TURN`-th link after
/// the mark, or the last link's.
const TURN_END: &str = "SELECT coalesce(\
     (SELECT seq FROM audit_event_customers WHERE seq > ?1 ORDER BY seq LIMIT 1 OFFSET ?2), \
     (SELECT max(seq) FROM audit_event_customers WHERE seq > ?1))";
const PENDING: &str = "SELECT EXISTS (SELECT 1 FROM audit_event_customers WHERE seq > \
     (SELECT through FROM audit_customer_index_state WHERE id = 1))";
const COPY: &str = "INSERT OR IGNORE INTO audit_customer_index (customer_id, seq) \
     SELECT customer_id, seq FROM audit_event_customers WHERE seq > ?1 AND seq <= ?2 ORDER BY customer_id, seq";
const MOVE_MARK: &str = "UPDATE audit_customer_index_state SET through = ?1 WHERE id = 1";

/// Starts the task on the current runtime; it stops when the store is dropped.
pub(super) fn spawn(writer: Weak<Writer>, readers: Weak<Readers>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::warn!("no async runtime: the access log is not indexed by customer; queries read the links unindexed");
        return;
    };
    runtime.spawn(async move {
        loop {
            tokio::time::sleep(EVERY).await;
            let (Some(writer), Some(readers)) = (writer.upgrade(), readers.upgrade()) else { return };
            if let Err(e) = catch_up(&writer, &readers).await {
                tracing::warn!(error = %e, "cannot index the access log by customer yet; queries read the newer links unindexed");
            }
        }
    });
}

/// Indexes every link written so far, one turn of the writer at a time.
pub(super) async fn catch_up(writer: &Arc<Writer>, readers: &Arc<Readers>) -> Result<(), StoreError> {
    // Asked of a reader first: an idle store never takes the writer's turn.
    while readers.read(|c| Ok(c.query_row(PENDING, [], |r| r.get::<_, bool>(0))?)).await? {
        let awaited = writer.clone();
        // A turn that ended early queues again at once, behind the writes waiting then (the
        // turn is first come, first served). Pausing here for 20 ms instead raised the median
        // wait further, growing over the run (docs/PERFORMANCE.md, 2026-12-05 evening).
        writer.write_behind(WriteKind::Index, move |c| turn(c, &|| awaited.is_awaited())).await?;
    }
    Ok(())
}

/// One turn: copies the next links in customer order, a step at a time until `awaited` says
/// that another write waits (or `LINKS_PER_TURN` are copied), and moves the mark past them.
/// Returns the steps taken, and whether it ended early for another write.
fn turn(c: &Connection, awaited: &dyn Fn() -> bool) -> Result<(usize, bool), StoreError> {
    let start: i64 = c.query_row(THROUGH, [], |r| r.get(0))?;
    let (mut through, mut steps, mut yielded) = (start, 0, false);
    while steps < (LINKS_PER_TURN / LINKS_PER_STEP) as usize {
        let Some(end) = c.query_row(TURN_END, (through, LINKS_PER_STEP - 1), |r| r.get::<_, Option<i64>>(0))? else {
            break;
        };
        c.prepare_cached(COPY)?.execute((through, end))?;
        (through, steps) = (end, steps + 1);
        if awaited() {
            yielded = true;
            break;
        }
    }
    if through > start {
        c.prepare_cached(MOVE_MARK)?.execute([through])?;
    }
    Ok((steps, yielded))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(c: &Connection, sql: &str) -> Vec<String> {
        let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let n = stmt.parameter_count();
        let params: Vec<i64> = vec![1; n];
        stmt.query_map(rusqlite::params_from_iter(params), |r| r.get(3)).unwrap().map(Result::unwrap).collect()
    }

    fn migrated() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Connection::open(dir.path().join("l.db")).unwrap();
        super::super::migrate::run(&mut c).unwrap();
        (dir, c)
    }

    /// Every statement here reads a range of a key, never a whole table: fails when an index of
    /// migration 0010 is dropped or a statement stops using its key.
    #[test]
    fn every_statement_reads_a_range_of_a_key() {
        let (_dir, c) = migrated();
        let customer = format!("{}?1{}?2", CUSTOMER_EVENTS.0, CUSTOMER_EVENTS.1);
        let copied = COPY.split_once(") ").map(|(_, select)| select).unwrap();
        for sql in [LINKS_BY_SEQ, INDEXED_LINKS, TURN_END, PENDING, copied, &customer] {
            let steps = plan(&c, sql);
            let scans = steps.iter().filter(|s| s.starts_with("SCAN") && *s != "SCAN CONSTANT ROW");
            assert!(!steps.is_empty() && scans.count() == 0, "{sql}: {steps:?}");
        }
        assert_eq!(
            plan(&c, INDEXED_LINKS),
            ["SEARCH audit_customer_index USING COVERING INDEX audit_customer_index_seq (seq>? AND seq<?)"]
        );
        assert_eq!(plan(&c, LINKS_BY_SEQ), ["SEARCH audit_event_customers USING PRIMARY KEY (seq>? AND seq<?)"]);
    }

    /// Turns copy every link exactly once, in order, and the mark ends on the last link's event;
    /// a turn ends after one step when another write waits for the writer (fails when `turn`
    /// stops checking `awaited`).
    #[test]
    fn turns_index_every_link_and_move_the_mark() {
        let (_dir, c) = migrated();
        let customers: Vec<[u8; 16]> = (0u8..7).map(|i| [i; 16]).collect();
        let mut n: usize = 0;
        for seq in 1..=5000i64 {
            // Every seventh event names no customer; some name two.
            if seq % 7 == 0 {
                continue;
            }
            let mut named = vec![customers[(seq % 7) as usize]];
            if seq % 5 == 0 {
                named.push(customers[((seq + 1) % 7) as usize]);
            }
            for id in named {
                c.execute("INSERT INTO audit_event_customers (seq, customer_id) VALUES (?1, ?2)", (seq, id.as_slice()))
                    .unwrap();
                n += 1;
            }
        }
        let pending = |c: &Connection| c.query_row(PENDING, [], |r| r.get::<_, bool>(0)).unwrap();
        let mut turns = 0;
        while pending(&c) {
            // Every third turn another write waits: that turn ends after its first step.
            let awaited = turns % 3 == 1;
            let before: i64 = c.query_row(THROUGH, [], |r| r.get(0)).unwrap();
            let (steps, yielded) = turn(&c, &|| awaited).unwrap();
            assert_eq!(yielded, awaited, "turn {turns}");
            let copied: i64 = c
                .query_row("SELECT count(*) FROM audit_customer_index WHERE seq > ?1", [before], |r| r.get(0))
                .unwrap();
            if awaited {
                assert_eq!(steps, 1, "turn {turns}");
                // A step ends on an event's last link: at most one event's links over.
                assert!(copied > 0 && copied <= LINKS_PER_STEP + 1, "turn {turns}: {copied}");
            } else {
                assert!(copied <= LINKS_PER_TURN + LINKS_PER_TURN / LINKS_PER_STEP, "turn {turns}: {copied}");
            }
            turns += 1;
            let through: i64 = c.query_row(THROUGH, [], |r| r.get(0)).unwrap();
            let indexed: i64 = c
                .query_row("SELECT count(*) FROM audit_customer_index WHERE seq <= ?1", [through], |r| r.get(0))
                .unwrap();
            let written: i64 = c
                .query_row("SELECT count(*) FROM audit_event_customers WHERE seq <= ?1", [through], |r| r.get(0))
                .unwrap();
            assert_eq!(indexed, written, "turn {turns}");
        }
        assert!(turns >= n / LINKS_PER_TURN as usize, "{turns} turns for {n} links");
        // A turn with nothing to copy takes no step and leaves the mark.
        assert_eq!(turn(&c, &|| true).unwrap(), (0, false));
        let through: i64 = c.query_row(THROUGH, [], |r| r.get(0)).unwrap();
        assert_eq!(through, 5000);
        let total: i64 = c.query_row("SELECT count(*) FROM audit_customer_index", [], |r| r.get(0)).unwrap();
        assert_eq!(total, n as i64);
        // The mark only moves forward.
        assert!(c.execute(MOVE_MARK, [10]).is_err());
    }
}
