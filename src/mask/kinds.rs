//! Masking functions, one per field kind, following `../shared/reference/masking.md`.
//!
//! All of them work on grapheme clusters, never bytes or code points, so a masked value never
//! splits a character (combining marks stay with their base). The number of `*` reveals no more
//! than the convention does: digit masks keep the value's length (as the convention shows),
//! free-text masks use a fixed run of `*`.

use unicode_segmentation::UnicodeSegmentation;

use super::views::DigitMask;
use crate::domain::Regions;

/// Two-character surnames, kept whole.
const COMPOUND_SURNAMES: [&str; 34] = [
    "欧阳", "司马", "诸葛", "上官", "东方", "皇甫", "尉迟", "公孙", "慕容", "长孙", "宇文", "司徒", "夏侯", "轩辕",
    "令狐", "钟离", "闻人", "澹台", "濮阳", "单于", "太叔", "申屠", "赫连", "端木", "百里", "呼延", "南宫", "独孤",
    "司空", "西门", "拓跋", "完颜", "第五", "万俟",
];

const FIXED: &str = "****";

fn is_han(g: &str) -> bool {
    g.chars()
        .next()
        .is_some_and(|c| matches!(c as u32, 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF | 0x20000..=0x3134F))
}

/// Keeps the first `keep_first` and last `keep_last` graphemes, replacing each one between with
/// `*`. When the value is too short to hide anything that way, everything is hidden.
pub fn digits(value: &str, mask: DigitMask) -> String {
    let (first, last) = (mask.keep_first as usize, mask.keep_last as usize);
    // Validated digit-like values are ASCII letters and digits: one byte per grapheme, so the
    // same mask without segmenting (the segmenter was most of a masked read's masking cost).
    if value.bytes().all(|b| b.is_ascii_alphanumeric()) {
        let n = value.len();
        if n <= first + last {
            return "*".repeat(n.max(1));
        }
        let mut out = String::with_capacity(n);
        out.push_str(&value[..first]);
        out.extend(std::iter::repeat_n('*', n - first - last));
        out.push_str(&value[n - last..]);
        return out;
    }
    let g: Vec<&str> = value.graphemes(true).collect();
    if g.len() <= first + last {
        return "*".repeat(g.len().max(1));
    }
    let mut out = String::with_capacity(value.len());
    out.extend(g[..first].iter().copied());
    out.extend(std::iter::repeat_n("*", g.len() - first - last));
    out.extend(g[g.len() - last..].iter().copied());
    out
}

/// Chinese names keep the surname (both characters of a compound surname) and mask each other
/// character: `张*`, `张**`, `欧阳**`. Other names keep their first grapheme and a fixed `***`.
/// A name of one grapheme is fully masked.
pub fn person_name(value: &str) -> String {
    let g: Vec<&str> = value.graphemes(true).collect();
    if g.len() <= 1 {
        return "*".to_owned();
    }
    if g.iter().all(|x| is_han(x) || *x == "·") {
        let two: String = g[..2].concat();
        let keep = if g.len() > 2 && COMPOUND_SURNAMES.contains(&two.as_str()) { 2 } else { 1 };
        let mut out: String = g[..keep].concat();
        out.extend(std::iter::repeat_n("*", g.len() - keep));
        out
    } else {
        format!("{}***", g[0])
    }
}

/// Company names keep their first four graphemes.
pub fn company_name(value: &str) -> String {
    let g: Vec<&str> = value.graphemes(true).collect();
    if g.len() <= 4 {
        return format!("{}{FIXED}", g.first().copied().unwrap_or(""));
    }
    format!("{}{FIXED}", g[..4].concat())
}

/// `d***@126.com`: the local part's first grapheme, a fixed mask, the domain.
pub fn email(value: &str) -> String {
    match value.rsplit_once('@') {
        Some((local, domain)) => {
            let first = local.graphemes(true).next().unwrap_or("");
            format!("{first}***@{domain}")
        }
        None => FIXED.to_owned(),
    }
}

/// `1984-**-**`.
pub fn birth_date(value: &str) -> String {
    match value.get(..4) {
        Some(year) if value.len() == 10 => format!("{year}-**-**"),
        _ => "****-**-**".to_owned(),
    }
}

/// Keeps the province, city and district named at the start of the address (GB/T 2260 names),
/// masking the rest with a fixed run. An address that does not start with a province name is
/// masked whole.
pub fn address(value: &str, regions: &Regions) -> String {
    let Some(province) =
        regions.provinces().filter(|p| value.starts_with(p.name.as_str())).max_by_key(|p| p.name.len())
    else {
        return FIXED.to_owned();
    };
    let mut kept = province.name.len();
    let rest = &value[kept..];
    // A municipality's city is the province itself.
    let city = regions
        .cities_of(&province.code)
        .filter(|c| c.name != province.name && rest.starts_with(c.name.as_str()))
        .max_by_key(|c| c.name.len());
    let cities: Vec<String> = match city {
        Some(c) => {
            kept += c.name.len();
            vec![c.code.clone()]
        }
        None => regions.cities_of(&province.code).filter(|c| c.name == province.name).map(|c| c.code.clone()).collect(),
    };
    let rest = &value[kept..];
    if let Some(area) = cities
        .iter()
        .flat_map(|c| regions.areas_of(c))
        .filter(|a| rest.starts_with(a.name.as_str()))
        .max_by_key(|a| a.name.len())
    {
        kept += area.name.len();
    }
    format!("{}{FIXED}", &value[..kept])
}

#[cfg(test)]
mod tests {
    use super::*;

    const M34: DigitMask = DigitMask { keep_first: 3, keep_last: 4 };

    /// The ASCII shortcut masks exactly as segmenting into graphemes does.
    #[test]
    fn ascii_digits_mask_as_graphemes_do() {
        let by_graphemes = |value: &str, m: DigitMask| {
            let g: Vec<&str> = value.graphemes(true).collect();
            let (first, last) = (m.keep_first as usize, m.keep_last as usize);
            if g.len() <= first + last {
                return "*".repeat(g.len().max(1));
            }
            format!("{}{}{}", g[..first].concat(), "*".repeat(g.len() - first - last), g[g.len() - last..].concat())
        };
        let alphabet = b"0123456789ABCDEFGHJKLMNPQRTUWXYabcxyz";
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        for _ in 0..5000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 24) as usize;
            let value: String =
                (0..len).map(|i| alphabet[((state >> (i % 8 * 8)) as usize + i) % alphabet.len()] as char).collect();
            let m = DigitMask { keep_first: (state >> 40) as u8 % 7, keep_last: (state >> 48) as u8 % 6 };
            assert_eq!(digits(&value, m), by_graphemes(&value, m), "{value:?} {m:?}");
        }
    }

    #[test]
    fn golden_digits() {
        assert_eq!(digits("13812345678", M34), "138****5678");
        assert_eq!(digits("11010519491231002X", DigitMask { keep_first: 6, keep_last: 4 }), "110105********002X");
        assert_eq!(digits("11010519491231002X", M34), "110***********002X");
        assert_eq!(digits("6222021234567890128", DigitMask { keep_first: 6, keep_last: 4 }), "622202*********0128");
        assert_eq!(digits("4111111111111111", DigitMask { keep_first: 6, keep_last: 4 }), "411111******1111");
        assert_eq!(digits("1234567", M34), "*******");
        assert_eq!(digits("", M34), "*");
    }

    #[test]
    fn golden_names() {
        assert_eq!(person_name("张三"), "张*");
        assert_eq!(person_name("张三丰"), "张**");
        assert_eq!(person_name("欧阳娜娜"), "欧阳**");
        assert_eq!(person_name("诸葛亮"), "诸葛*");
        assert_eq!(person_name("司马光"), "司马*");
        // A two-character name starting like a compound surname is surname + given name.
        assert_eq!(person_name("欧阳"), "欧*");
        assert_eq!(person_name("张"), "*");
        assert_eq!(person_name("𠮷野家"), "𠮷**"); // a supplementary-plane character
        assert_eq!(person_name("阿依古丽·买买提"), "阿*******");
        assert_eq!(person_name("John Smith"), "J***");
        assert_eq!(person_name("ＪＯＨＮ"), "Ｊ***"); // full-width
                                                      // Combining marks stay with their base character.
        assert_eq!(person_name("Ẓ\u{30C}\u{301}oë"), "Ẓ\u{30C}\u{301}***");
        assert_eq!(person_name("e\u{301}mile"), "e\u{301}***");
    }

    #[test]
    fn golden_others() {
        assert_eq!(email("dan@126.com"), "d***@126.com");
        assert_eq!(email("张三@例子.中国"), "张***@例子.中国");
        assert_eq!(birth_date("1984-02-29"), "1984-**-**");
        assert_eq!(company_name("深圳市腾讯计算机系统有限公司"), "深圳市腾****");
        assert_eq!(company_name("某司"), "某****");
    }

    #[test]
    fn golden_addresses() {
        let r = Regions::builtin();
        assert_eq!(address("江苏省南京市玄武区中山路1号", r), "江苏省南京市玄武区****");
        assert_eq!(address("北京市朝阳区建国路88号", r), "北京市朝阳区****");
        assert_eq!(address("广东省深圳市南山区科技园", r), "广东省深圳市南山区****");
        assert_eq!(address("江苏省苏州市某路", r), "江苏省苏州市****");
        assert_eq!(address("中山路1号", r), "****");
        assert_eq!(address("江苏省", r), "江苏省****");
    }
}
