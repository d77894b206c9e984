//! The hash chain: `leaf = SHA-256(0x00 ‖ canonical(seq, event))`,
//! `head_n = SHA-256(0x01 ‖ head_{n-1} ‖ leaf_n)`, `head_0` = 32 zero bytes. The canonical
//! encoding is JSON with sorted keys and no whitespace over the stored column texts, so what is
//! verified is exactly what the database holds.

use ring::digest::{Context, SHA256};

use super::event::{time_text, AuditEvent};

/// The head before the first event.
pub const GENESIS: [u8; 32] = [0u8; 32];

/// The canonical encoding of an event at `seq`, from its stored texts.
pub fn canonical(seq: i64, e: &AuditEvent, customer_ids_text: &str, fields_text: &str) -> Vec<u8> {
    // serde_json's Map keeps keys sorted (no preserve_order feature): a stable encoding.
    let mut m = serde_json::Map::new();
    let opt = |v: &Option<String>| v.clone().map_or(serde_json::Value::Null, serde_json::Value::String);
    m.insert("seq".into(), seq.into());
    m.insert("time".into(), time_text(&e.time).into());
    m.insert("request_id".into(), e.request_id.clone().into());
    m.insert("principal".into(), opt(&e.principal));
    m.insert("grant_id".into(), opt(&e.grant_id.map(|g| g.to_string())));
    m.insert("action".into(), e.action.clone().into());
    m.insert("customer_ids".into(), customer_ids_text.into());
    m.insert("fields".into(), fields_text.into());
    m.insert("purpose".into(), opt(&e.purpose));
    m.insert("justification".into(), opt(&e.justification));
    m.insert("query".into(), opt(&e.query));
    m.insert("outcome".into(), e.outcome.as_str().into());
    m.insert("status".into(), e.status.into());
    m.insert("client".into(), opt(&e.client));
    m.insert("user_agent".into(), opt(&e.user_agent));
    serde_json::to_vec(&serde_json::Value::Object(m)).unwrap_or_default()
}

/// The leaf hash of an encoded event.
pub fn leaf(encoded: &[u8]) -> [u8; 32] {
    let mut ctx = Context::new(&SHA256);
    ctx.update(&[0x00]);
    ctx.update(encoded);
    to_array(ctx.finish().as_ref())
}

/// The chain head after appending `leaf` to `prev`.
pub fn link(prev: &[u8], leaf: &[u8; 32]) -> [u8; 32] {
    let mut ctx = Context::new(&SHA256);
    ctx.update(&[0x01]);
    ctx.update(prev);
    ctx.update(leaf);
    to_array(ctx.finish().as_ref())
}

/// The head after `e` at `seq` following `prev`.
pub fn next(prev: &[u8], seq: i64, e: &AuditEvent, customer_ids_text: &str, fields_text: &str) -> [u8; 32] {
    link(prev, &leaf(&canonical(seq, e, customer_ids_text, fields_text)))
}

fn to_array(s: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(&s[..32]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_depends_on_everything() {
        let e = AuditEvent::now("r1".into(), "customer.read");
        let (c, f) = (e.customer_ids_text(), e.fields_text());
        let h1 = next(&GENESIS, 1, &e, &c, &f);
        assert_eq!(h1, next(&GENESIS, 1, &e, &c, &f));
        assert_ne!(h1, next(&GENESIS, 2, &e, &c, &f));
        assert_ne!(h1, next(&h1, 1, &e, &c, &f));
        let mut e2 = e.clone();
        e2.status = 404;
        assert_ne!(h1, next(&GENESIS, 1, &e2, &c, &f));
        // Leaf and node hashes are domain-separated.
        assert_ne!(leaf(b"x"), link(&[], &leaf(b"x")));
    }
}
