//! The console's two languages, Simplified Chinese and English: one catalogue per language
//! (`zh-CN.toml`, `en.toml`, embedded), every label a field of [`Labels`] so that templates
//! naming a missing label do not compile, and a catalogue missing one does not load.
//!
//! Owns: the catalogues and the choice of language. Must never: translate data.

use std::sync::OnceLock;

use axum::http::{header, HeaderMap};
use serde::Deserialize;

/// A supported language.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    En,
    ZhCn,
}

impl Lang {
    pub fn tag(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::ZhCn => "zh-CN",
        }
    }

    pub fn parse(tag: &str) -> Option<Lang> {
        let tag = tag.trim().to_ascii_lowercase();
        if tag == "en" || tag.starts_with("en-") {
            Some(Lang::En)
        } else if tag == "zh" || tag.starts_with("zh-") {
            Some(Lang::ZhCn)
        } else {
            None
        }
    }

    /// The `lang` cookie if it names a supported language, else the first supported language
    /// of `Accept-Language` by preference, else Simplified Chinese.
    pub fn choose(headers: &HeaderMap) -> Lang {
        if let Some(lang) = super::cookie(headers, super::LANG_COOKIE).and_then(|v| Lang::parse(&v)) {
            return lang;
        }
        let accept = headers.get(header::ACCEPT_LANGUAGE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let mut ranked: Vec<(f32, Lang)> = accept
            .split(',')
            .filter_map(|part| {
                let mut pieces = part.split(';');
                let lang = Lang::parse(pieces.next()?)?;
                let q =
                    pieces.find_map(|p| p.trim().strip_prefix("q=").and_then(|q| q.parse::<f32>().ok())).unwrap_or(1.0);
                Some((q, lang))
            })
            .collect();
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
        ranked.first().map_or(Lang::ZhCn, |r| r.1)
    }
}

/// Every label of the console, in one language.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Labels {
    pub lang_name: String,
    pub other_lang: String,
    pub other_lang_name: String,
    pub title: String,
    pub nav_overview: String,
    pub nav_audit: String,
    pub nav_verify: String,
    pub nav_sign_out: String,
    pub signed_in_as: String,
    pub sign_in_title: String,
    pub sign_in_dev_notice: String,
    pub sign_in_name: String,
    pub sign_in_submit: String,
    pub sign_in_none: String,
    pub sign_in_provider: String,
    pub sign_in_provider_hint: String,
    pub signed_in_title: String,
    pub signed_in_continue: String,
    pub overview_title: String,
    pub overview_head: String,
    pub overview_events: String,
    pub overview_checkpoint: String,
    pub overview_unsigned: String,
    pub overview_none: String,
    pub audit_title: String,
    pub audit_principal: String,
    pub audit_customer: String,
    pub audit_action: String,
    pub audit_outcome: String,
    pub audit_from: String,
    pub audit_to: String,
    pub audit_search: String,
    pub audit_seq: String,
    pub audit_time: String,
    pub audit_purpose: String,
    pub audit_status: String,
    pub audit_client: String,
    pub audit_none: String,
    pub audit_next: String,
    pub verify_title: String,
    pub verify_explain: String,
    pub verify_run: String,
    pub verify_ok: String,
    pub verify_bad: String,
    pub verify_events: String,
    pub verify_checkpoints: String,
    pub error_title: String,
    pub nav_alerts: String,
    pub alerts_title: String,
    pub alerts_kind: String,
    pub alerts_principal: String,
    pub alerts_region: String,
    pub alerts_raised: String,
    pub alerts_customers: String,
    pub alerts_status: String,
    pub alerts_reason: String,
    pub alerts_clear: String,
    pub alerts_none: String,
    pub alerts_explain: String,
    pub nav_grants: String,
    pub nav_keys: String,
    pub grants_title: String,
    pub grants_new: String,
    pub grants_truncated: String,
    pub grant_principal: String,
    pub grant_role: String,
    pub grant_region: String,
    pub grant_expires: String,
    pub grant_status: String,
    pub grant_granted_by: String,
    pub grant_revoke_link: String,
    pub grant_new_title: String,
    pub grant_new_submit: String,
    pub grant_new_latest: String,
    pub grant_new_no_limit: String,
    pub grant_new_nothing: String,
    pub revoke_title: String,
    pub revoke_suspends: String,
    pub revoke_suspends_none: String,
    pub revoke_confirm: String,
    pub principal_title: String,
    pub principal_chain: String,
    pub principal_none: String,
    pub principal_revoke_tokens: String,
    pub principal_revoke_tokens_hint: String,
    pub keys_title: String,
    pub keys_source: String,
    pub keys_active: String,
    pub keys_version: String,
    pub keys_fingerprint: String,
    pub keys_state: String,
    pub keys_data_keys: String,
    pub keys_rewrap: String,
    pub keys_pending: String,
    pub keys_index: String,
    pub keys_rotate: String,
    pub keys_rotate_confirm: String,
    pub nav_access: String,
    pub audit_export_ndjson: String,
    pub audit_export_csv: String,
    pub audit_export_hint: String,
    pub event_title: String,
    pub event_justification: String,
    pub event_customers: String,
    pub event_fields: String,
    pub event_request: String,
    pub event_regions: String,
    pub event_grant: String,
    pub access_title: String,
    pub access_explain: String,
    pub access_none: String,
    pub overview_open_alerts: String,
    pub overview_reveals: String,
    pub overview_exports: String,
    pub overview_per_hour: String,
    pub overview_per_day: String,
    pub overview_allowed: String,
    pub overview_denied: String,
    pub overview_error: String,
    pub overview_leaders: String,
    pub overview_leaders_hint: String,
    pub overview_distinct: String,
    pub overview_verified: String,
    pub overview_verify_failed: String,
    pub overview_not_verified: String,
    pub alerts_events: String,
}

/// Why the catalogues did not load.
#[derive(Debug, thiserror::Error)]
#[error("console catalogue {lang}: {source}")]
pub struct CatalogueError {
    lang: &'static str,
    source: toml::de::Error,
}

static CATALOGUES: OnceLock<(Labels, Labels)> = OnceLock::new();

/// Parses both catalogues (at start-up: a broken one stops the vault, not a request).
pub fn load() -> Result<(), CatalogueError> {
    if CATALOGUES.get().is_some() {
        return Ok(());
    }
    let en = toml::from_str(include_str!("en.toml")).map_err(|source| CatalogueError { lang: "en", source })?;
    let zh = toml::from_str(include_str!("zh-CN.toml")).map_err(|source| CatalogueError { lang: "zh-CN", source })?;
    let _ = CATALOGUES.set((en, zh));
    Ok(())
}

/// The labels of `lang`; `None` only if [`load`] was never called.
pub fn labels(lang: Lang) -> Option<&'static Labels> {
    let (en, zh) = CATALOGUES.get()?;
    Some(match lang {
        Lang::En => en,
        Lang::ZhCn => zh,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_catalogues_load_with_every_label() {
        load().unwrap();
        assert_eq!(labels(Lang::En).unwrap().other_lang, "zh-CN");
        assert_eq!(labels(Lang::ZhCn).unwrap().other_lang, "en");
    }

    #[test]
    fn the_language_comes_from_the_cookie_then_accept_language() {
        let mut h = HeaderMap::new();
        assert_eq!(Lang::choose(&h), Lang::ZhCn);
        h.insert(header::ACCEPT_LANGUAGE, "fr;q=1, en-GB;q=0.8, zh-CN;q=0.5".parse().unwrap());
        assert_eq!(Lang::choose(&h), Lang::En);
        h.insert(header::COOKIE, "custodia_lang=zh-CN".parse().unwrap());
        assert_eq!(Lang::choose(&h), Lang::ZhCn);
        h.insert(header::COOKIE, "custodia_lang=xx".parse().unwrap());
        assert_eq!(Lang::choose(&h), Lang::En);
    }
}
