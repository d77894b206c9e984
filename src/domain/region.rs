//! The operator's organisation tree: group (`CN`) → province (`32`) → city (`3201`).
//!
//! Built from the GB/T 2260 division codes shipped in `policies/regions/` (compiled into the
//! binary). In the municipalities and the province-administered county groups the city
//! row carries a placeholder name; such a city is displayed under its province's name.
//! This module owns region ids and containment; it never decides access.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::LazyLock;

const PROVINCES_CSV: &str = include_str!("../../policies/regions/provinces.csv");
const CITIES_CSV: &str = include_str!("../../policies/regions/cities.csv");
const AREAS_CSV: &str = include_str!("../../policies/regions/areas.csv");

/// City rows whose name is a placeholder rather than a real city name.
const PLACEHOLDER_CITY_NAMES: [&str; 3] = ["市辖区", "县", "省直辖县级行政区划"];

/// The level of a node in the region tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RegionLevel {
    Group,
    Province,
    City,
}

/// A validated region id: `CN`, a two-digit province code or a four-digit city code that
/// exists in the region tree.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RegionId(String);

impl RegionId {
    pub const GROUP: &'static str = "CN";

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The code, as an owned string.
    pub fn into_string(self) -> String {
        self.0
    }

    /// The group root.
    pub fn group() -> RegionId {
        RegionId(Self::GROUP.to_owned())
    }

    pub fn level(&self) -> RegionLevel {
        match self.0.len() {
            2 if self.0 == Self::GROUP => RegionLevel::Group,
            2 => RegionLevel::Province,
            _ => RegionLevel::City,
        }
    }

    /// The province this node lies in (`None` for the group root).
    pub fn province(&self) -> Option<&str> {
        match self.level() {
            RegionLevel::Group => None,
            _ => Some(&self.0[..2]),
        }
    }

    /// Whether `other` lies in the subtree rooted at `self` (a node contains itself).
    pub fn contains(&self, other: &RegionId) -> bool {
        match self.level() {
            RegionLevel::Group => true,
            _ => other.0.starts_with(&self.0) && other.level() != RegionLevel::Group,
        }
    }
}

impl RegionId {
    /// The smallest node containing both (region ids of the tree: `CN`, `32`, `3201`).
    pub fn common_ancestor(&self, other: &RegionId) -> RegionId {
        RegionId(common_ancestor(&self.0, &other.0).to_owned())
    }
}

/// The smallest node containing two region codes: the same code, their shared province, or
/// the group root. Works on the code texts (fixed lengths per level).
pub fn common_ancestor<'a>(a: &'a str, b: &'a str) -> &'a str {
    if a == b {
        a
    } else if a != RegionId::GROUP && b != RegionId::GROUP && a.get(..2).is_some() && a.get(..2) == b.get(..2) {
        a.get(..2).unwrap_or(RegionId::GROUP)
    } else {
        RegionId::GROUP
    }
}

impl fmt::Display for RegionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A province of the tree.
#[derive(Clone, Debug)]
pub struct Province {
    pub code: String,
    pub name: String,
}

/// A city (prefecture-level unit) of the tree.
#[derive(Clone, Debug)]
pub struct City {
    pub code: String,
    pub province: String,
    /// The display name: the city's own, or its province's where the data has a placeholder.
    pub name: String,
}

/// A county-level area, used to recognise the district part of an address.
#[derive(Clone, Debug)]
pub struct Area {
    pub code: String,
    pub city: String,
    pub name: String,
}

/// The region tree.
#[derive(Debug)]
pub struct Regions {
    provinces: BTreeMap<String, Province>,
    cities: BTreeMap<String, City>,
    areas: BTreeMap<String, Area>,
    /// Indexes for the per-request paths (address masking): cities by province, areas by city.
    cities_by_province: BTreeMap<String, Vec<City>>,
    areas_by_city: BTreeMap<String, Vec<Area>>,
}

static BUILTIN: LazyLock<Regions> = LazyLock::new(|| {
    // startup: the embedded CSV files are part of the binary and covered by unit tests.
    Regions::from_csv(PROVINCES_CSV, CITIES_CSV, AREAS_CSV).expect("embedded region data parses")
});

/// An error in region source data.
#[derive(Debug, thiserror::Error)]
#[error("region data: {0}")]
pub struct RegionDataError(String);

impl Regions {
    /// The GB/T 2260 tree compiled into the binary.
    pub fn builtin() -> &'static Regions {
        &BUILTIN
    }

    pub fn from_csv(provinces: &str, cities: &str, areas: &str) -> Result<Self, RegionDataError> {
        let mut p = BTreeMap::new();
        for row in read_rows(provinces, 2)? {
            check_code(&row[0], 2)?;
            p.insert(row[0].clone(), Province { code: row[0].clone(), name: row[1].clone() });
        }
        let mut c = BTreeMap::new();
        for row in read_rows(cities, 3)? {
            check_code(&row[0], 4)?;
            let province =
                p.get(&row[2]).ok_or_else(|| RegionDataError(format!("city {} has unknown province", row[0])))?;
            if !row[0].starts_with(&province.code) {
                return Err(RegionDataError(format!("city {} outside its province", row[0])));
            }
            let name =
                if PLACEHOLDER_CITY_NAMES.contains(&row[1].as_str()) { province.name.clone() } else { row[1].clone() };
            c.insert(row[0].clone(), City { code: row[0].clone(), province: row[2].clone(), name });
        }
        let mut a = BTreeMap::new();
        for row in read_rows(areas, 4)? {
            check_code(&row[0], 6)?;
            a.insert(row[0].clone(), Area { code: row[0].clone(), city: row[2].clone(), name: row[1].clone() });
        }
        let mut cities_by_province: BTreeMap<String, Vec<City>> = BTreeMap::new();
        for city in c.values() {
            cities_by_province.entry(city.province.clone()).or_default().push(city.clone());
        }
        let mut areas_by_city: BTreeMap<String, Vec<Area>> = BTreeMap::new();
        for area in a.values() {
            areas_by_city.entry(area.city.clone()).or_default().push(area.clone());
        }
        Ok(Regions { provinces: p, cities: c, areas: a, cities_by_province, areas_by_city })
    }

    /// Parses a region id of any level; `None` when it is not a node of the tree.
    pub fn parse(&self, id: &str) -> Option<RegionId> {
        let known = match id.len() {
            2 if id == RegionId::GROUP => true,
            2 => self.provinces.contains_key(id),
            4 => self.cities.contains_key(id),
            _ => false,
        };
        known.then(|| RegionId(id.to_owned()))
    }

    /// Parses a region id that must be a city (where customers live).
    pub fn parse_city(&self, id: &str) -> Option<RegionId> {
        self.parse(id).filter(|r| r.level() == RegionLevel::City)
    }

    pub fn province(&self, code: &str) -> Option<&Province> {
        self.provinces.get(code)
    }

    pub fn city(&self, code: &str) -> Option<&City> {
        self.cities.get(code)
    }

    pub fn area(&self, code: &str) -> Option<&Area> {
        self.areas.get(code)
    }

    pub fn provinces(&self) -> impl Iterator<Item = &Province> {
        self.provinces.values()
    }

    pub fn cities(&self) -> impl Iterator<Item = &City> {
        self.cities.values()
    }

    /// The cities of one province.
    pub fn cities_of<'a>(&'a self, province: &'a str) -> impl Iterator<Item = &'a City> + 'a {
        self.cities_by_province.get(province).into_iter().flatten()
    }

    /// The areas (districts, counties) of one city.
    pub fn areas_of<'a>(&'a self, city: &'a str) -> impl Iterator<Item = &'a Area> + 'a {
        self.areas_by_city.get(city).into_iter().flatten()
    }
}

fn check_code(code: &str, len: usize) -> Result<(), RegionDataError> {
    if code.len() == len && code.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(RegionDataError(format!("bad code {code:?}")))
    }
}

fn read_rows(csv_text: &str, columns: usize) -> Result<Vec<Vec<String>>, RegionDataError> {
    let mut reader = csv::ReaderBuilder::new().has_headers(true).from_reader(csv_text.as_bytes());
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| RegionDataError(e.to_string()))?;
        if record.len() < columns {
            return Err(RegionDataError(format!("row with {} columns", record.len())));
        }
        rows.push(record.iter().take(columns).map(str::to_owned).collect());
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_tree_has_all_provinces_and_cities() {
        let r = Regions::builtin();
        assert_eq!(r.provinces().count(), 31);
        assert_eq!(r.cities().count(), 342);
        assert_eq!(r.city("3201").map(|c| c.name.as_str()), Some("南京市"));
        // Municipalities are their own city, displayed under the province's name.
        assert_eq!(r.city("1101").map(|c| c.name.as_str()), Some("北京市"));
    }

    #[test]
    fn parse_and_containment() {
        let r = Regions::builtin();
        let cn = r.parse("CN").unwrap();
        let js = r.parse("32").unwrap();
        let nj = r.parse_city("3201").unwrap();
        let gd_city = r.parse_city("4401").unwrap();
        assert_eq!(nj.level(), RegionLevel::City);
        assert!(cn.contains(&nj) && js.contains(&nj) && nj.contains(&nj));
        assert!(!js.contains(&gd_city) && !nj.contains(&js) && !js.contains(&cn));
        assert!(r.parse("99").is_none());
        assert!(r.parse("3299").is_none());
        assert!(r.parse_city("32").is_none());
        assert!(r.parse("cn").is_none());
        assert!(r.parse("320").is_none());
    }
}
