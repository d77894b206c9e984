//! The hash chain: `leaf = SHA-256(0x00 ‖ canonical(seq, event))`,
//! `head_n = SHA-256(0x01 ‖ head_{n-1} ‖ leaf_n)`, `head_0` = 32 zero bytes. The canonical
//! encoding is JSON with sorted keys and no whitespace over the stored column texts, so what is
//! verified is exactly what the database holds.

// RustCrypto's SHA-256 picks the CPU's SHA extensions at run time where present (ring's
// assembly used the slower AVX path on the development machine); the chain hashes every event
// twice on writing and again on every verification.
use sha2::{Digest, Sha256};

use super::event::{time_text, AuditEvent};

/// The head before the first event.
pub const GENESIS: [u8; 32] = [0u8; 32];

/// The canonical encoding of an event at `seq`, from its stored texts: a JSON object with the
/// keys in byte order and no whitespace, written directly (no intermediate map: this runs once
/// per event on the write path and once per event in verification).
pub fn canonical(seq: i64, e: &AuditEvent, customer_ids_text: &str, fields_text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(384 + customer_ids_text.len() + fields_text.len());
    let grant = e.grant_id.map(|g| g.to_string());
    // Keys in byte order. The members added with the disclosure gate (`actor_region`, `proxy`,
    // `subject_region`, `undisclosed_ids`) are written only when present, so that events
    // written before them hash as they always did.
    let entries: [(&str, Option<&str>, bool); 19] = [
        ("action", Some(&e.action), true),
        ("actor_region", e.actor_region.as_deref(), false),
        ("client", e.client.as_deref(), true),
        ("customer_ids", Some(customer_ids_text), true),
        ("fields", Some(fields_text), true),
        ("grant_id", grant.as_deref(), true),
        ("justification", e.justification.as_deref(), true),
        ("outcome", Some(e.outcome.as_str()), true),
        ("principal", e.principal.as_deref(), true),
        ("proxy", e.proxy.as_deref(), false),
        ("purpose", e.purpose.as_deref(), true),
        ("query", e.query.as_deref(), true),
        ("request_id", Some(&e.request_id), true),
        ("seq", None, true),
        ("status", None, true),
        ("subject_region", e.subject_region.as_deref(), false),
        ("time", None, true),
        ("undisclosed_ids", e.undisclosed.as_deref(), false),
        ("user_agent", e.user_agent.as_deref(), true),
    ];
    out.push(b'{');
    let mut first = true;
    for (key, value, always) in entries {
        if !always && value.is_none() {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        put_key(&mut out, key);
        match key {
            "seq" => out.extend_from_slice(seq.to_string().as_bytes()),
            "status" => out.extend_from_slice(e.status.to_string().as_bytes()),
            "time" => put_value(&mut out, Some(&time_text(&e.time))),
            _ => put_value(&mut out, value),
        }
    }
    out.push(b'}');
    out
}

fn put_key(out: &mut Vec<u8>, key: &str) {
    put_value(out, Some(key));
    out.push(b':');
}

fn put_value(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        // serde_json's string escaping, the same as the stored JSON texts use.
        Some(v) => {
            if serde_json::to_writer(&mut *out, v).is_err() {
                out.extend_from_slice(b"null");
            }
        }
        None => out.extend_from_slice(b"null"),
    }
}

/// The leaf hash of an encoded event.
pub fn leaf(encoded: &[u8]) -> [u8; 32] {
    let mut ctx = Sha256::new();
    ctx.update([0x00]);
    ctx.update(encoded);
    ctx.finalize().into()
}

/// The chain head after appending `leaf` to `prev`.
pub fn link(prev: &[u8], leaf: &[u8; 32]) -> [u8; 32] {
    let mut ctx = Sha256::new();
    ctx.update([0x01]);
    ctx.update(prev);
    ctx.update(leaf);
    ctx.finalize().into()
}

/// The head after `e` at `seq` following `prev`.
pub fn next(prev: &[u8], seq: i64, e: &AuditEvent, customer_ids_text: &str, fields_text: &str) -> [u8; 32] {
    link(prev, &leaf(&canonical(seq, e, customer_ids_text, fields_text)))
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

    /// The direct writer gives exactly the bytes of a sorted-key JSON object (serde_json's map),
    /// the encoding every stored chain was built with.
    #[test]
    fn canonical_is_sorted_key_json() {
        let mut e = AuditEvent::now("r\"1\u{2028}".into(), "customer.read");
        e.principal = Some("agent-\\7".into());
        e.grant_id = Some(uuid::Uuid::nil());
        e.purpose = Some("customer_service".into());
        e.query = Some("{\"mobile\":\"ab\"}".into());
        e.customer_ids = vec![uuid::Uuid::nil()];
        e.fields = vec![("mobile".into(), "masked".into())];
        e.status = 404;
        let (c, f) = (e.customer_ids_text(), e.fields_text());
        let opt = |v: &Option<String>| v.clone().map_or(serde_json::Value::Null, serde_json::Value::String);
        let mut m = serde_json::Map::new();
        m.insert("seq".into(), (-3i64).into());
        m.insert("time".into(), time_text(&e.time).into());
        m.insert("request_id".into(), e.request_id.clone().into());
        m.insert("principal".into(), opt(&e.principal));
        m.insert("grant_id".into(), opt(&e.grant_id.map(|g| g.to_string())));
        m.insert("action".into(), e.action.clone().into());
        m.insert("customer_ids".into(), c.clone().into());
        m.insert("fields".into(), f.clone().into());
        m.insert("purpose".into(), opt(&e.purpose));
        m.insert("justification".into(), opt(&e.justification));
        m.insert("query".into(), opt(&e.query));
        m.insert("outcome".into(), e.outcome.as_str().into());
        m.insert("status".into(), e.status.into());
        m.insert("client".into(), opt(&e.client));
        m.insert("user_agent".into(), opt(&e.user_agent));
        let expected = serde_json::to_vec(&serde_json::Value::Object(m.clone())).unwrap();
        assert_eq!(String::from_utf8(canonical(-3, &e, &c, &f)).unwrap(), String::from_utf8(expected).unwrap());
        // The gate's members, when present, take their sorted places.
        e.actor_region = Some("32".into());
        e.subject_region = Some("3201".into());
        e.proxy = Some("10.0.0.1".into());
        e.undisclosed = Some("[\"00000000-0000-0000-0000-000000000000\"]".into());
        for (k, v) in [
            ("actor_region", &e.actor_region),
            ("subject_region", &e.subject_region),
            ("proxy", &e.proxy),
            ("undisclosed_ids", &e.undisclosed),
        ] {
            m.insert(k.into(), opt(v));
        }
        let expected = serde_json::to_vec(&serde_json::Value::Object(m)).unwrap();
        assert_eq!(String::from_utf8(canonical(-3, &e, &c, &f)).unwrap(), String::from_utf8(expected).unwrap());
    }
}
