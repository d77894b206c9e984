//! Validation and normalisation of the identifiers the vault stores (see
//! `../shared/reference/identifiers.md`).
//!
//! Decisions, documented in `docs/VALIDATION.md`:
//! - full-width digits and letters (U+FF10…) are folded to ASCII; spaces and hyphens between
//!   digits are dropped;
//! - a resident ID's lowercase `x` is normalised to `X`; 15-digit legacy numbers are rejected;
//! - mobile numbers accept `+86`, `0086` and `86` prefixes and are stored as 11 digits whose
//!   prefix must be in the allocated list (`policies/mobile_prefixes.toml`).
//!
//! Every function returns the normalised value or the [`Rule`] it broke. A rule never carries
//! the submitted value.

use chrono::{Datelike, NaiveDate, Utc};

/// A validation rule a value can break. The `code` is part of the API (problem details).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    Required,
    Empty,
    TooLong,
    Format,
    CheckCharacter,
    InvalidDate,
    FutureDate,
    UnallocatedPrefix,
    UnknownRegion,
    ForbiddenCharacter,
    LegacyFormat,
    CityRequired,
    OutOfRange,
    UnknownField,
    NotApplicable,
    UnknownRole,
    NotInFuture,
}

impl Rule {
    pub fn code(self) -> &'static str {
        match self {
            Rule::Required => "required",
            Rule::Empty => "empty",
            Rule::TooLong => "too_long",
            Rule::Format => "format",
            Rule::CheckCharacter => "check_character",
            Rule::InvalidDate => "invalid_date",
            Rule::FutureDate => "future_date",
            Rule::UnallocatedPrefix => "unallocated_prefix",
            Rule::UnknownRegion => "unknown_region",
            Rule::ForbiddenCharacter => "forbidden_character",
            Rule::LegacyFormat => "legacy_format",
            Rule::CityRequired => "city_required",
            Rule::OutOfRange => "out_of_range",
            Rule::UnknownField => "unknown_field",
            Rule::NotApplicable => "not_applicable",
            Rule::UnknownRole => "unknown_role",
            Rule::NotInFuture => "not_in_future",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Rule::Required => "the field is required",
            Rule::Empty => "the value is empty",
            Rule::TooLong => "the value is too long",
            Rule::Format => "the value does not have the required format",
            Rule::CheckCharacter => "the check character does not match",
            Rule::InvalidDate => "the value does not contain a real calendar date",
            Rule::FutureDate => "the date lies in the future",
            Rule::UnallocatedPrefix => "the number prefix is not an allocated mobile range",
            Rule::UnknownRegion => "the region code is not a known GB/T 2260 code",
            Rule::ForbiddenCharacter => "the value contains control, bidirectional-override or zero-width characters",
            Rule::LegacyFormat => "15-digit legacy resident ID numbers are not accepted",
            Rule::CityRequired => "a customer's region must be a city (four-digit code)",
            Rule::OutOfRange => "the value is out of the allowed range",
            Rule::UnknownField => "the field is not in the field catalogue",
            Rule::NotApplicable => "the field does not apply to this kind of customer",
            Rule::UnknownRole => "the role is not declared in policies/roles.toml",
            Rule::NotInFuture => "the time must lie in the future",
        }
    }
}

/// Folds full-width ASCII variants (U+FF01–U+FF5E) and the ideographic space to ASCII.
pub fn fold_width(input: &str) -> String {
    input
        .chars()
        .map(|c| match c {
            '\u{FF01}'..='\u{FF5E}' => char::from_u32(c as u32 - 0xFEE0).unwrap_or(c),
            '\u{3000}' => ' ',
            _ => c,
        })
        .collect()
}

/// Folds width and drops the separators people type inside numbers.
fn compact(input: &str) -> String {
    fold_width(input).chars().filter(|c| !matches!(c, ' ' | '-' | '\t')).collect()
}

/// Characters never accepted in any text field: controls, bidi overrides and isolates,
/// zero-width characters, BOM, line/paragraph separators.
pub fn is_forbidden_char(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{2069}' | '\u{FEFF}' | '\u{2028}' | '\u{2029}' | '\u{061C}')
}

/// A free-text field (names, addresses): trimmed, NFC-normalised, no forbidden characters,
/// between 1 and `max_chars` characters.
pub fn text(input: &str, max_chars: usize) -> Result<String, Rule> {
    use unicode_normalization::UnicodeNormalization;
    if input.chars().any(is_forbidden_char) {
        return Err(Rule::ForbiddenCharacter);
    }
    let value: String = input.trim().nfc().collect();
    if value.is_empty() {
        return Err(Rule::Empty);
    }
    if value.chars().count() > max_chars {
        return Err(Rule::TooLong);
    }
    Ok(value)
}

const RESIDENT_ID_WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
const RESIDENT_ID_CHECK: &[u8; 11] = b"10X98765432";

/// An 18-character resident identity number (GB 11643-1999).
pub fn resident_id(input: &str, known_province: impl Fn(&str) -> bool) -> Result<String, Rule> {
    let value = compact(input).to_ascii_uppercase();
    if value.len() == 15 && value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Rule::LegacyFormat);
    }
    let bytes = value.as_bytes();
    if bytes.len() != 18
        || !bytes[..17].iter().all(u8::is_ascii_digit)
        || !(bytes[17].is_ascii_digit() || bytes[17] == b'X')
    {
        return Err(Rule::Format);
    }
    if !known_province(&value[..2]) {
        return Err(Rule::UnknownRegion);
    }
    let birth = parse_compact_date(&value[6..14]).ok_or(Rule::InvalidDate)?;
    if birth > Utc::now().date_naive() {
        return Err(Rule::FutureDate);
    }
    if birth.year() < 1850 {
        return Err(Rule::InvalidDate);
    }
    if resident_id_check_char(&bytes[..17]) != bytes[17] {
        return Err(Rule::CheckCharacter);
    }
    Ok(value)
}

/// The ISO 7064 MOD 11-2 check character over the first 17 digits.
pub fn resident_id_check_char(first17: &[u8]) -> u8 {
    let sum: u32 = first17.iter().zip(RESIDENT_ID_WEIGHTS).map(|(d, w)| u32::from(d - b'0') * w).sum();
    RESIDENT_ID_CHECK[(sum % 11) as usize]
}

fn parse_compact_date(yyyymmdd: &str) -> Option<NaiveDate> {
    let y = yyyymmdd.get(0..4)?.parse().ok()?;
    let m = yyyymmdd.get(4..6)?.parse().ok()?;
    let d = yyyymmdd.get(6..8)?.parse().ok()?;
    NaiveDate::from_ymd_opt(y, m, d)
}

/// A mainland mobile number, normalised to its 11 digits.
pub fn mobile(input: &str, allocated: &[String]) -> Result<String, Rule> {
    let mut value = compact(input).replace(['(', ')'], "");
    for prefix in ["+86", "0086"] {
        if let Some(rest) = value.strip_prefix(prefix) {
            value = rest.to_owned();
            break;
        }
    }
    if value.len() == 13 && value.starts_with("861") {
        value.drain(..2);
    }
    if value.len() != 11 || !value.bytes().all(|b| b.is_ascii_digit()) || !value.starts_with('1') {
        return Err(Rule::Format);
    }
    if !allocated.iter().any(|p| value.starts_with(p.as_str())) {
        return Err(Rule::UnallocatedPrefix);
    }
    Ok(value)
}

/// A bank card number: 16–19 digits with a valid Luhn check digit.
pub fn bank_card(input: &str) -> Result<String, Rule> {
    let value = compact(input);
    if !(16..=19).contains(&value.len()) || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Rule::Format);
    }
    if !luhn_valid(&value) {
        return Err(Rule::CheckCharacter);
    }
    Ok(value)
}

pub fn luhn_valid(digits: &str) -> bool {
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

const CREDIT_CODE_ALPHABET: &[u8; 31] = b"0123456789ABCDEFGHJKLMNPQRTUWXY";
const CREDIT_CODE_WEIGHTS: [u32; 17] = [1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28];

/// A unified social credit code (GB 32100-2015).
pub fn credit_code(input: &str) -> Result<String, Rule> {
    let value = compact(input).to_ascii_uppercase();
    let bytes = value.as_bytes();
    if bytes.len() != 18 {
        return Err(Rule::Format);
    }
    let mut values = [0u32; 18];
    for (i, b) in bytes.iter().enumerate() {
        let pos = CREDIT_CODE_ALPHABET.iter().position(|a| a == b).ok_or(Rule::Format)?;
        values[i] = pos as u32;
    }
    if credit_code_check_char(&values[..17]) != bytes[17] {
        return Err(Rule::CheckCharacter);
    }
    Ok(value)
}

/// The check character of a credit code, from the alphabet values of its first 17 characters.
pub fn credit_code_check_char(values17: &[u32]) -> u8 {
    let sum: u32 = values17.iter().zip(CREDIT_CODE_WEIGHTS).map(|(v, w)| v * w).sum();
    let c = (31 - sum % 31) % 31;
    CREDIT_CODE_ALPHABET[c as usize]
}

/// An e-mail address: structure only; the domain is lower-cased.
pub fn email(input: &str) -> Result<String, Rule> {
    let value = fold_width(input.trim());
    if value.chars().any(is_forbidden_char) {
        return Err(Rule::ForbiddenCharacter);
    }
    if value.len() > 254 {
        return Err(Rule::TooLong);
    }
    let (local, domain) = value.rsplit_once('@').ok_or(Rule::Format)?;
    let labels_ok =
        domain.split('.').all(|l| !l.is_empty() && l.len() <= 63 && l.chars().all(|c| c.is_alphanumeric() || c == '-'));
    if local.is_empty()
        || local.len() > 64
        || local.contains('@')
        || local.chars().any(char::is_whitespace)
        || !domain.contains('.')
        || !labels_ok
    {
        return Err(Rule::Format);
    }
    Ok(format!("{local}@{}", domain.to_lowercase()))
}

/// A date of birth, `YYYY-MM-DD`: a real date, not in the future, not before 1850.
pub fn birth_date(input: &str) -> Result<String, Rule> {
    let value = fold_width(input.trim());
    let b = value.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return Err(Rule::Format);
    }
    let date = NaiveDate::parse_from_str(&value, "%Y-%m-%d").map_err(|_| Rule::InvalidDate)?;
    if date > Utc::now().date_naive() {
        return Err(Rule::FutureDate);
    }
    if date.year() < 1850 {
        return Err(Rule::InvalidDate);
    }
    Ok(date.format("%Y-%m-%d").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any_province(_: &str) -> bool {
        true
    }

    #[test]
    fn resident_id_reference_examples() {
        assert_eq!(resident_id("11010519491231002X", any_province), Ok("11010519491231002X".into()));
        assert_eq!(resident_id("11010519491231002x", any_province), Ok("11010519491231002X".into()));
        assert_eq!(resident_id("440524188001010014", any_province), Ok("440524188001010014".into()));
        assert_eq!(resident_id("110105194912310021", any_province), Err(Rule::CheckCharacter));
        assert_eq!(resident_id("１１０１０５１９４９１２３１００２Ｘ", any_province), Ok("11010519491231002X".into()));
        assert_eq!(resident_id("110105491231002", any_province), Err(Rule::LegacyFormat));
        assert_eq!(resident_id("110105194902300021", any_province), Err(Rule::InvalidDate));
        assert_eq!(resident_id("1101051949123100", any_province), Err(Rule::Format));
        assert_eq!(resident_id("11010519491231002X", |p| p == "32"), Err(Rule::UnknownRegion));
    }

    #[test]
    fn resident_id_rejects_future_birth() {
        let mut first17 = b"11010520991231002".to_vec();
        let check = resident_id_check_char(&first17);
        first17.push(check);
        let id = String::from_utf8(first17).unwrap();
        assert_eq!(resident_id(&id, any_province), Err(Rule::FutureDate));
    }

    #[test]
    fn mobile_normalisation() {
        let allocated: Vec<String> = ["138", "199", "145"].iter().map(|s| s.to_string()).collect();
        assert_eq!(mobile("13812345678", &allocated), Ok("13812345678".into()));
        assert_eq!(mobile("+86 138-1234-5678", &allocated), Ok("13812345678".into()));
        assert_eq!(mobile("0086 13812345678", &allocated), Ok("13812345678".into()));
        assert_eq!(mobile("8613812345678", &allocated), Ok("13812345678".into()));
        assert_eq!(mobile("１３８１２３４５６７８", &allocated), Ok("13812345678".into()));
        assert_eq!(mobile("14012345678", &allocated), Err(Rule::UnallocatedPrefix));
        assert_eq!(mobile("1381234567", &allocated), Err(Rule::Format));
        assert_eq!(mobile("23812345678", &allocated), Err(Rule::Format));
    }

    #[test]
    fn bank_card_luhn() {
        assert_eq!(bank_card("6222 0212 3456 7890 128"), Ok("6222021234567890128".into()));
        assert_eq!(bank_card("6222021234567890127"), Err(Rule::CheckCharacter));
        assert_eq!(bank_card("4111111111111111"), Ok("4111111111111111".into()));
        assert_eq!(bank_card("4111 1111 1111 1111"), Ok("4111111111111111".into()));
        assert_eq!(bank_card("411111111111"), Err(Rule::Format));
    }

    #[test]
    fn credit_code_check() {
        // 91350100M000100Y43 is a published example with a valid check character.
        assert_eq!(credit_code("91350100M000100Y43"), Ok("91350100M000100Y43".into()));
        assert_eq!(credit_code("91350100m000100y43"), Ok("91350100M000100Y43".into()));
        assert_eq!(credit_code("91350100M000100Y44"), Err(Rule::CheckCharacter));
        assert_eq!(credit_code("91350100M000100I43"), Err(Rule::Format));
    }

    #[test]
    fn email_and_dates() {
        assert_eq!(email("Dan@Example.COM"), Ok("Dan@example.com".into()));
        assert_eq!(email("nodomain@localhost"), Err(Rule::Format));
        assert_eq!(email("a b@x.cn"), Err(Rule::Format));
        assert_eq!(birth_date("1984-02-29"), Ok("1984-02-29".into()));
        assert_eq!(birth_date("1985-02-29"), Err(Rule::InvalidDate));
        assert_eq!(birth_date("2999-01-01"), Err(Rule::FutureDate));
        assert_eq!(birth_date("19840229"), Err(Rule::Format));
    }

    #[test]
    fn text_rejects_unicode_tricks() {
        assert_eq!(text("张三", 10), Ok("张三".into()));
        assert_eq!(text("张\u{202E}三", 10), Err(Rule::ForbiddenCharacter));
        assert_eq!(text("张\u{200B}三", 10), Err(Rule::ForbiddenCharacter));
        assert_eq!(text("a\nINFO forged log line", 100), Err(Rule::ForbiddenCharacter));
        assert_eq!(text("   ", 10), Err(Rule::Empty));
        assert_eq!(text("张三丰", 2), Err(Rule::TooLong));
        // Combining marks are kept and composed where Unicode has a composed form.
        assert_eq!(text("e\u{301}", 10), Ok("\u{e9}".into()));
    }
}
