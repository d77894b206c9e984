//! Synthetic, valid customers for seeding and benchmarks: correct check characters, plausible
//! birth dates matching the ID number, real region and county codes, allocated mobile
//! prefixes, Luhn-valid cards, enterprises with valid credit codes. Deterministic for a seed.
//! Never used for real data.

use std::collections::BTreeMap;

use super::customer::{CustomerKind, FieldValue, ValidCustomer};
use super::identifiers::{credit_code_check_char, resident_id_check_char};
use super::region::Regions;

const SURNAMES: [&str; 24] = [
    "王", "李", "张", "刘", "陈", "杨", "黄", "赵", "吴", "周", "徐", "孙", "马", "朱", "胡", "郭", "何", "林", "罗",
    "高", "欧阳", "司马", "诸葛", "上官",
];
const GIVEN: [&str; 20] = [
    "伟", "芳", "娜", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "艳", "杰", "娟", "涛", "明", "超", "秀英", "华",
    "平",
];
const PREFIXES: [&str; 12] = ["130", "133", "135", "138", "139", "150", "152", "158", "177", "186", "189", "199"];
const STREETS: [&str; 6] = ["中山路", "人民路", "解放路", "建设路", "和平街", "长江路"];
const ALPHABET: &[u8; 31] = b"0123456789ABCDEFGHJKLMNPQRTUWXY";

/// A small, fast, deterministic generator (xorshift64*); not for anything secret.
pub struct Synthetic<'a> {
    state: u64,
    regions: &'a Regions,
    cities: Vec<(String, String, String)>,
    areas: BTreeMap<String, Vec<(String, String)>>,
}

impl<'a> Synthetic<'a> {
    pub fn new(regions: &'a Regions, seed: u64) -> Self {
        let cities: Vec<(String, String, String)> = regions
            .cities()
            .map(|c| {
                let province = regions.province(&c.province).map(|p| p.name.clone()).unwrap_or_default();
                (c.code.clone(), province, c.name.clone())
            })
            .collect();
        let mut areas: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        for (code, _, _) in &cities {
            let list: Vec<(String, String)> =
                regions.areas_of(code).map(|a| (a.code.clone(), a.name.clone())).collect();
            areas.insert(code.clone(), list);
        }
        Synthetic { state: seed.max(1), regions, cities, areas }
    }

    fn next(&mut self) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn pick<'s, T>(&mut self, items: &'s [T]) -> &'s T {
        &items[self.below(items.len() as u64) as usize]
    }

    fn digits(&mut self, n: usize) -> String {
        (0..n).map(|_| char::from(b'0' + self.below(10) as u8)).collect()
    }

    /// One customer (individuals nine times in ten).
    pub fn customer(&mut self) -> ValidCustomer {
        let i = self.below(self.cities.len() as u64) as usize;
        let (city, province, city_name) = self.cities[i].clone();
        let n = self.areas.get(&city).map_or(0, Vec::len) as u64;
        let j = self.below(n) as usize;
        let area = self.areas.get(&city).and_then(|a| a.get(j).cloned());
        let (county, district) = area.unwrap_or_else(|| (format!("{city}01"), String::new()));
        let city_part = if city_name == province { String::new() } else { city_name };
        let address = format!("{province}{city_part}{district}{}{}号", self.pick(&STREETS), 1 + self.below(300));
        let mobile = format!("{}{}", self.pick(&PREFIXES), self.digits(8));
        let mut fields = BTreeMap::new();
        let kind = if self.below(10) == 0 { CustomerKind::Enterprise } else { CustomerKind::Individual };
        let given = if self.below(3) == 0 {
            format!("{}{}", self.pick(&GIVEN), self.pick(&GIVEN))
        } else {
            self.pick(&GIVEN).to_string()
        };
        let name = format!("{}{given}", self.pick(&SURNAMES));
        match kind {
            CustomerKind::Individual => {
                let (y, m, d) = (1940 + self.below(66), 1 + self.below(12), 1 + self.below(28));
                let mut id = format!("{county}{y:04}{m:02}{d:02}{}", self.digits(3));
                let check = resident_id_check_char(&id.as_bytes()[..17]);
                id.push(char::from(check));
                let mut card = format!("622202{}", self.digits(12));
                card.push(luhn_digit(&card));
                fields.insert("resident_id".to_owned(), FieldValue::new(id));
                fields.insert("birth_date".to_owned(), FieldValue::new(format!("{y:04}-{m:02}-{d:02}")));
                fields.insert("bank_card".to_owned(), FieldValue::new(card));
                fields.insert("email".to_owned(), FieldValue::new(format!("u{}@example.cn", self.digits(9))));
            }
            CustomerKind::Enterprise => {
                let mut code = format!("91{county}");
                for _ in 0..9 {
                    code.push(char::from(ALPHABET[self.below(31) as usize]));
                }
                let values: Vec<u32> =
                    code.bytes().map(|b| ALPHABET.iter().position(|a| *a == b).unwrap_or(0) as u32).collect();
                code.push(char::from(credit_code_check_char(&values)));
                fields.insert(
                    "company_name".to_owned(),
                    FieldValue::new(format!("{province}某某{}科技有限公司", self.digits(4))),
                );
                fields.insert("credit_code".to_owned(), FieldValue::new(code));
            }
        }
        fields.insert("name".to_owned(), FieldValue::new(name));
        fields.insert("mobile".to_owned(), FieldValue::new(mobile));
        fields.insert("address".to_owned(), FieldValue::new(address));
        let region = self.regions.parse_city(&city).unwrap_or_else(super::region::RegionId::group);
        ValidCustomer { region, kind, vip_level: self.below(10) as i16, fields }
    }
}

/// The Luhn check digit completing `digits`.
pub fn luhn_digit(digits: &str) -> char {
    for d in 0..10u8 {
        let candidate = format!("{digits}{d}");
        if super::identifiers::luhn_valid(&candidate) {
            return char::from(b'0' + d);
        }
    }
    '0'
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Catalogue, CustomerDraft};

    #[test]
    fn synthetic_customers_pass_validation() {
        let catalogue = Catalogue::builtin().unwrap();
        let regions = Regions::builtin();
        let mut gen = Synthetic::new(regions, 42);
        for _ in 0..2000 {
            let c = gen.customer();
            let draft = CustomerDraft {
                region: c.region.as_str().to_owned(),
                kind: c.kind.as_str().to_owned(),
                vip_level: Some(i64::from(c.vip_level)),
                fields: c.fields.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            };
            let valid = draft.validate(&catalogue, regions);
            assert!(valid.is_ok(), "{:?}", valid.err());
        }
    }
}
