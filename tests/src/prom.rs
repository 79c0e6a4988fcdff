//! A strict parser for the Prometheus text exposition format (0.0.4), for checking `/metrics`.
//!
//! Strict where a scraper would be: every sample belongs to a family declared by `# TYPE` before
//! it (histograms own their `_bucket`/`_sum`/`_count` series), names and label names are valid,
//! label values use only the format's escapes, no series appears twice, and every histogram's
//! buckets are cumulative, end with `le="+Inf"` and agree with its `_count`. Anything else is an
//! error naming the line.

use std::collections::{BTreeMap, HashMap, HashSet};

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed exposition.
#[derive(Debug, Default)]
pub struct Metrics {
    pub samples: Vec<Sample>,
    /// Family name → type (`counter`, `gauge`, `histogram`, `summary`, `untyped`).
    pub types: HashMap<String, String>,
}

impl Metrics {
    /// Parses `text`, or says which line is wrong and why.
    pub fn parse(text: &str) -> Result<Metrics, String> {
        let mut m = Metrics::default();
        let mut seen = HashSet::new();
        for (n, line) in text.lines().enumerate() {
            let err = |msg: &str| format!("line {}: {msg}: {line:?}", n + 1);
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix('#') {
                let mut parts = rest.trim_start().splitn(3, ' ');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some("TYPE"), Some(name), Some(kind)) => {
                        if !valid_name(name) {
                            return Err(err("bad metric name in TYPE"));
                        }
                        if !matches!(
                            kind,
                            "counter" | "gauge" | "histogram" | "summary" | "untyped"
                        ) {
                            return Err(err("unknown type"));
                        }
                        if m.types.insert(name.to_owned(), kind.to_owned()).is_some() {
                            return Err(err("TYPE given twice"));
                        }
                    }
                    (Some("TYPE"), ..) => return Err(err("TYPE needs a name and a type")),
                    (Some("HELP"), Some(name), _) if !valid_name(name) => {
                        return Err(err("bad metric name in HELP"));
                    }
                    _ => {}
                }
                continue;
            }
            let s = parse_sample(line).map_err(|e| err(&e))?;
            let family = family_of(&s.name, &m.types).ok_or_else(|| err("no TYPE before it"))?;
            let kind = &m.types[&family];
            if kind == "histogram" {
                let suffix = &s.name[family.len()..];
                if !matches!(suffix, "_bucket" | "_sum" | "_count") {
                    return Err(err("a histogram's series end in _bucket, _sum or _count"));
                }
                if suffix == "_bucket" && !s.labels.contains_key("le") {
                    return Err(err("a bucket without `le`"));
                }
            } else if s.name != family {
                return Err(err("a sample of another family"));
            }
            if !seen.insert((s.name.clone(), s.labels.clone())) {
                return Err(err("the same series twice"));
            }
            m.samples.push(s);
        }
        m.check_histograms()?;
        Ok(m)
    }

    fn check_histograms(&self) -> Result<(), String> {
        for (family, kind) in &self.types {
            if kind != "histogram" {
                continue;
            }
            // Series of one histogram: its labels without `le`.
            let mut series: BTreeMap<BTreeMap<String, String>, Vec<(f64, f64)>> = BTreeMap::new();
            for s in self
                .samples
                .iter()
                .filter(|s| s.name == format!("{family}_bucket"))
            {
                let mut key = s.labels.clone();
                let le = key.remove("le").unwrap_or_default();
                let le: f64 = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().map_err(|_| format!("{family}: bad le {le:?}"))?
                };
                series.entry(key).or_default().push((le, s.value));
            }
            for (labels, buckets) in series {
                let mut last = (f64::NEG_INFINITY, 0.0);
                for &(le, v) in &buckets {
                    if le <= last.0 || v < last.1 {
                        return Err(format!("{family}{labels:?}: buckets not cumulative"));
                    }
                    last = (le, v);
                }
                if last.0 != f64::INFINITY {
                    return Err(format!("{family}{labels:?}: no +Inf bucket"));
                }
                let count = self
                    .get(&format!("{family}_count"), &pairs(&labels))
                    .ok_or_else(|| format!("{family}{labels:?}: no _count"))?;
                if count != last.1 {
                    return Err(format!(
                        "{family}{labels:?}: _count {count} != +Inf {}",
                        last.1
                    ));
                }
                if self
                    .get(&format!("{family}_sum"), &pairs(&labels))
                    .is_none()
                {
                    return Err(format!("{family}{labels:?}: no _sum"));
                }
            }
        }
        Ok(())
    }

    /// The value of the series `name` with exactly `labels`.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| s.name == name && same_labels(&s.labels, labels))
            .map(|s| s.value)
    }

    /// The sum over every series of `name` whose labels include `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
            })
            .map(|s| s.value)
            .sum()
    }

    /// Every series of `name`.
    pub fn series(&self, name: &str) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.name == name).collect()
    }
}

fn pairs(m: &BTreeMap<String, String>) -> Vec<(&str, &str)> {
    m.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

fn same_labels(have: &BTreeMap<String, String>, want: &[(&str, &str)]) -> bool {
    have.len() == want.len()
        && want
            .iter()
            .all(|(k, v)| have.get(*k).is_some_and(|x| x == v))
}

/// The declared family a sample name belongs to (itself, or a histogram/summary's base).
fn family_of(name: &str, types: &HashMap<String, String>) -> Option<String> {
    if types.contains_key(name) {
        return Some(name.to_owned());
    }
    ["_bucket", "_sum", "_count"]
        .iter()
        .filter_map(|suf| name.strip_suffix(suf))
        .find(|base| {
            types
                .get(*base)
                .is_some_and(|t| t == "histogram" || t == "summary")
        })
        .map(str::to_owned)
}

fn valid_name(s: &str) -> bool {
    let mut b = s.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_' || c == b':')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
}

fn valid_label_name(s: &str) -> bool {
    let mut b = s.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if !valid_name(name) {
        return Err("bad metric name".into());
    }
    let b = line.as_bytes();
    let mut i = name_end;
    let mut labels = BTreeMap::new();
    if b[i] == b'{' {
        i += 1;
        loop {
            if b.get(i) == Some(&b'}') {
                i += 1;
                break;
            }
            let eq = line[i..].find('=').ok_or("label without `=`")? + i;
            let key = &line[i..eq];
            if !valid_label_name(key) {
                return Err(format!("bad label name {key:?}"));
            }
            i = eq + 1;
            if b.get(i) != Some(&b'"') {
                return Err("label value not quoted".into());
            }
            i += 1;
            let mut value = String::new();
            loop {
                let c = line[i..].chars().next().ok_or("unterminated label value")?;
                i += c.len_utf8();
                match c {
                    '"' => break,
                    '\\' => {
                        let e = line[i..].chars().next().ok_or("dangling escape")?;
                        i += e.len_utf8();
                        match e {
                            '\\' => value.push('\\'),
                            '"' => value.push('"'),
                            'n' => value.push('\n'),
                            c => return Err(format!("bad escape \\{c}")),
                        }
                    }
                    c => value.push(c),
                }
            }
            if labels.insert(key.to_owned(), value).is_some() {
                return Err(format!("label {key:?} twice"));
            }
            match b.get(i) {
                Some(b',') => i += 1,
                Some(b'}') => {
                    i += 1;
                    break;
                }
                _ => return Err("expected `,` or `}` after a label".into()),
            }
        }
    }
    let rest = &line[i..];
    let mut fields = rest
        .strip_prefix(' ')
        .ok_or("expected a space before the value")?
        .split(' ');
    let value = fields.next().ok_or("no value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().map_err(|_| format!("bad value {v:?}"))?,
    };
    if let Some(ts) = fields.next()
        && ts.parse::<i64>().is_err()
    {
        return Err(format!("bad timestamp {ts:?}"));
    }
    if fields.next().is_some() {
        return Err("trailing fields".into());
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_checks() {
        let m = Metrics::parse(concat!(
            "# HELP a_total A.\n# TYPE a_total counter\n",
            "a_total{x=\"1\",y=\"q\\\"\\\\\\n\"} 3\n",
            "a_total 4 1700000000000\n",
            "# TYPE h histogram\n",
            "h_bucket{le=\"0.1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.3\nh_count 2\n",
        ))
        .unwrap();
        assert_eq!(m.get("a_total", &[("x", "1"), ("y", "q\"\\\n")]), Some(3.0));
        assert_eq!(m.get("a_total", &[]), Some(4.0));
        assert_eq!(m.sum("a_total", &[]), 7.0);
        assert_eq!(m.get("h_count", &[]), Some(2.0));
    }

    #[test]
    fn refuses_what_a_scraper_would() {
        for bad in [
            "x 1\n",                                          // no TYPE
            "# TYPE x counter\nx{a=1} 1\n",                   // unquoted
            "# TYPE x counter\nx{a=\"1\"} 1\nx{a=\"1\"} 2\n", // duplicate series
            "# TYPE x counter\nx{1a=\"1\"} 1\n",              // bad label name
            "# TYPE x counter\nx 1 2 3\n",                    // trailing
            "# TYPE x counter\nx{a=\"\\t\"} 1\n",             // bad escape
            "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\nh_sum 0\n",
            "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_count 3\nh_sum 0\n",
        ] {
            assert!(Metrics::parse(bad).is_err(), "accepted {bad:?}");
        }
    }
}
