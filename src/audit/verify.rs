//! Verification: recompute the chain from the database and check every checkpoint signature
//! against the pinned public key. The first problem found is reported with the first bad
//! sequence number.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use super::chain::{self, GENESIS};
use super::checkpoint::CheckpointVerifier;
use crate::store::{Store, StoreError};

const PAGE: u32 = 2_000;
/// Pages being fetched while one is checked.
const PAGES_AHEAD: i64 = 6;

/// The outcome of a verification.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct VerifyReport {
    pub ok: bool,
    /// Events checked.
    pub events: i64,
    /// Checkpoints whose signature and head were checked.
    pub checkpoints: usize,
    /// The newest signed sequence number.
    pub last_checkpoint_seq: i64,
    /// Events after the newest checkpoint (chained, not yet signed).
    pub unsigned_events: i64,
    /// The first sequence number found bad.
    pub first_bad_seq: Option<i64>,
    pub problem: Option<String>,
    pub elapsed_ms: u64,
}

/// The first event of `page` whose links in one copy (the rows behind access logs
/// and `?customer=` searches, sorted by sequence number) differ from the customer ids its
/// chained text names. A link to a sequence number the page does not hold counts against the
/// next event (pages are contiguous once the chain check passed).
fn first_bad_link(page: &[super::StoredEvent], links: &[(i64, uuid::Uuid)]) -> Option<i64> {
    let mut links = links.iter().peekable();
    for ev in page {
        let mut linked: Vec<uuid::Uuid> = Vec::new();
        while let Some((seq, id)) = links.peek() {
            if *seq > ev.seq {
                break;
            }
            if *seq < ev.seq {
                return Some(ev.seq);
            }
            linked.push(*id);
            links.next();
        }
        let mut named: Vec<uuid::Uuid> = serde_json::from_str(&ev.customer_ids_text).unwrap_or_default();
        named.sort_unstable();
        named.dedup();
        linked.sort_unstable();
        if named != linked {
            return Some(ev.seq);
        }
    }
    None
}

/// The first event of `page` that any copy of its links gets wrong, each copy checked for the
/// events it claims to hold (up to its `through`).
fn first_bad_link_of_any(
    page: &[super::StoredEvent],
    copies: Vec<crate::store::AuditLinks>,
) -> Option<(i64, &'static str)> {
    copies
        .into_iter()
        .filter_map(|copy| {
            let held = page.partition_point(|ev| ev.seq <= copy.through);
            let links: Vec<(i64, uuid::Uuid)> =
                copy.links.into_iter().filter(|(seq, _)| *seq <= copy.through).collect();
            first_bad_link(&page[..held], &links).map(|seq| (seq, copy.copy))
        })
        .min()
}

/// Verifies the whole audit. The next pages are fetched and decoded on other tasks (and
/// database connections) while this one is hashed, so reading and hashing overlap. Pages are
/// fetched by sequence number ahead of time; that is sound because sequence numbers must be
/// contiguous: the first gap stops verification before a later page is looked at.
pub async fn verify(store: &Arc<dyn Store>, verifier: &CheckpointVerifier) -> Result<VerifyReport, StoreError> {
    let started = Instant::now();
    let checkpoints = store.checkpoints().await?;
    let mut report = VerifyReport {
        ok: true,
        events: 0,
        checkpoints: 0,
        last_checkpoint_seq: 0,
        unsigned_events: 0,
        first_bad_seq: None,
        problem: None,
        elapsed_ms: 0,
    };
    let fail = |report: &mut VerifyReport, seq: i64, problem: String| {
        report.ok = false;
        report.first_bad_seq = Some(seq);
        report.problem = Some(problem);
    };
    let mut cps = checkpoints.iter().peekable();
    let mut head = GENESIS.to_vec();
    let mut expected = 1i64;
    let mut last_good_checkpoint = 0i64;
    let fetch = |after: i64| {
        let store = store.clone();
        tokio::spawn(async move {
            // Leaf hashes depend on one event each: computed here, in parallel with the other
            // pages; only the links are sequential.
            let page = store.audit_events_after(after, PAGE).await?;
            let leaves: Vec<[u8; 32]> = page
                .iter()
                .map(|ev| chain::leaf(&chain::canonical(ev.seq, &ev.event, &ev.customer_ids_text, &ev.fields_text)))
                .collect();
            let bad_link = match (page.first(), page.last()) {
                (Some(first), Some(last)) => {
                    first_bad_link_of_any(&page, store.audit_links(first.seq, last.seq).await?)
                }
                _ => None,
            };
            Ok::<_, StoreError>((page, leaves, bad_link))
        })
    };
    let mut pending: std::collections::VecDeque<_> = (0..PAGES_AHEAD).map(|i| fetch(i * i64::from(PAGE))).collect();
    let mut next_after = PAGES_AHEAD * i64::from(PAGE);
    'pages: loop {
        let Some(next) = pending.pop_front() else { break };
        let (page, leaves, bad_link) = next.await.map_err(|_| StoreError::Corrupt("audit page reader stopped"))??;
        if page.is_empty() {
            break;
        }
        pending.push_back(fetch(next_after));
        next_after += i64::from(PAGE);
        for (ev, leaf) in page.iter().zip(&leaves) {
            if ev.seq != expected {
                fail(
                    &mut report,
                    expected,
                    format!("event {expected} is missing (deleted, or sequence numbers altered)"),
                );
                break 'pages;
            }
            let next = chain::link(&head, leaf);
            if ev.chain_hash.as_slice() != next.as_slice() {
                fail(
                    &mut report,
                    ev.seq,
                    format!("event {} does not match the chain (altered, inserted or reordered)", ev.seq),
                );
                break 'pages;
            }
            if let Some((_, copy)) = bad_link.filter(|(seq, _)| *seq == ev.seq) {
                fail(
                    &mut report,
                    ev.seq,
                    format!("the {copy} of event {} do not match its chained customer ids (pruned or forged)", ev.seq),
                );
                break 'pages;
            }
            head = next.to_vec();
            report.events += 1;
            while let Some(cp) = cps.next_if(|c| c.seq <= ev.seq) {
                if cp.seq < ev.seq {
                    continue; // a checkpoint of a sequence number already passed: its event was missing
                }
                if !verifier.verify(cp) {
                    fail(
                        &mut report,
                        last_good_checkpoint + 1,
                        format!("checkpoint {} has an invalid signature", cp.seq),
                    );
                    break 'pages;
                }
                if cp.chain_hash != head {
                    fail(
                        &mut report,
                        last_good_checkpoint + 1,
                        format!(
                            "checkpoint {} does not match the recomputed chain: events {}..={} were rewritten",
                            cp.seq,
                            last_good_checkpoint + 1,
                            cp.seq
                        ),
                    );
                    break 'pages;
                }
                report.checkpoints += 1;
                last_good_checkpoint = cp.seq;
            }
            expected += 1;
        }
    }
    if report.ok {
        let last_seq = expected - 1;
        if let Some(cp) = cps.next() {
            fail(
                &mut report,
                last_seq + 1,
                format!("checkpoint {} lies beyond the last event {last_seq}: events were truncated", cp.seq),
            );
        } else {
            let stored_head = store.audit_head().await?;
            if stored_head.seq > last_seq {
                fail(
                    &mut report,
                    last_seq + 1,
                    format!("the chain head is at {} but events end at {last_seq}: truncated", stored_head.seq),
                );
            }
        }
    }
    report.last_checkpoint_seq = last_good_checkpoint;
    report.unsigned_events = (report.events - last_good_checkpoint).max(0);
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}
