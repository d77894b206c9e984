//! A grant request as submitted, and its validation: who receives which role at which region
//! node until when. Whether the caller may make it is authorization's business, not this
//! module's.

use chrono::{DateTime, Utc};

use super::customer::{ValidationError, ValidationErrors};
use super::identifiers::Rule;
use super::region::{RegionId, Regions};

/// A grant as submitted.
pub struct GrantDraft {
    pub principal: String,
    pub role: String,
    pub region: String,
    pub expires_at: Option<String>,
}

/// A validated grant request.
#[derive(Clone, Debug)]
pub struct ValidGrant {
    pub principal: String,
    pub role: String,
    pub region: RegionId,
    pub expires_at: DateTime<Utc>,
}

impl GrantDraft {
    /// Validates against the region tree and the declared roles. Delegated grants must expire.
    pub fn validate(
        self,
        regions: &Regions,
        is_role: impl Fn(&str) -> bool,
        valid_subject: impl Fn(&str) -> bool,
        now: DateTime<Utc>,
    ) -> Result<ValidGrant, ValidationErrors> {
        let mut errors = Vec::new();
        let mut fail = |field: &str, rule| errors.push(ValidationError { field: field.into(), rule });
        if !valid_subject(&self.principal) {
            fail("principal", Rule::Format);
        }
        if !is_role(&self.role) {
            fail("role", Rule::UnknownRole);
        }
        let region = regions.parse(&self.region);
        if region.is_none() {
            fail("region", Rule::UnknownRegion);
        }
        let expires_at = match self.expires_at.as_deref().map(DateTime::parse_from_rfc3339) {
            None => {
                fail("expires_at", Rule::Required);
                None
            }
            Some(Err(_)) => {
                fail("expires_at", Rule::Format);
                None
            }
            Some(Ok(t)) if t.with_timezone(&Utc) <= now => {
                fail("expires_at", Rule::NotInFuture);
                None
            }
            Some(Ok(t)) => Some(t.with_timezone(&Utc)),
        };
        match (region, expires_at) {
            (Some(region), Some(expires_at)) if errors.is_empty() => {
                Ok(ValidGrant { principal: self.principal, role: self.role, region, expires_at })
            }
            _ => Err(ValidationErrors(errors)),
        }
    }
}
