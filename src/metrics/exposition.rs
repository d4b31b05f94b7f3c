//! The Prometheus text format: a metric family's HELP and TYPE lines, then its samples with
//! their label values escaped.

use std::fmt::{Display, Write};

/// One metric family being written: create it (which writes HELP and TYPE), then add samples.
pub struct Family<'a> {
    out: &'a mut String,
    name: &'a str,
}

impl<'a> Family<'a> {
    pub fn new(out: &'a mut String, name: &'a str, kind: &str, help: &str) -> Family<'a> {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        Family { out, name }
    }

    /// `name{labels} value`.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: impl Display) {
        self.series("", labels, value);
    }

    /// `name<suffix>{labels} value`: a histogram's `_bucket`, `_sum` and `_count`.
    pub fn series(&mut self, suffix: &str, labels: &[(&str, &str)], value: impl Display) {
        let out = &mut *self.out;
        out.push_str(self.name);
        out.push_str(suffix);
        if !labels.is_empty() {
            out.push('{');
            for (i, (name, value)) in labels.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(name);
                out.push_str("=\"");
                for c in value.chars() {
                    match c {
                        '\\' => out.push_str("\\\\"),
                        '"' => out.push_str("\\\""),
                        '\n' => out.push_str("\\n"),
                        c => out.push(c),
                    }
                }
                out.push('"');
            }
            out.push('}');
        }
        let _ = writeln!(out, " {value}");
    }

    /// A histogram from cumulative (upper bound, count) pairs, the last being +Inf (None),
    /// with its sum.
    pub fn histogram(
        &mut self,
        labels: &[(&str, &str)],
        buckets: impl IntoIterator<Item = (Option<f64>, u64)>,
        sum: f64,
    ) {
        let mut count = 0;
        for (bound, cumulative) in buckets {
            count = cumulative;
            let le = bound.map_or_else(|| "+Inf".to_string(), |b| b.to_string());
            let mut with_le = labels.to_vec();
            with_le.push(("le", &le));
            self.series("_bucket", &with_le, cumulative);
        }
        self.series("_sum", labels, sum);
        self.series("_count", labels, count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped_and_histograms_cumulative() {
        let mut out = String::new();
        let mut f = Family::new(&mut out, "t_seconds", "histogram", "Test.");
        f.histogram(
            &[("route", "a\"b\\c\nd")],
            [(Some(0.5), 2), (None, 3)],
            1.25,
        );
        let mut g = Family::new(&mut out, "t_up", "gauge", "Up.");
        g.sample(&[], 1);
        assert_eq!(
            out,
            "# HELP t_seconds Test.\n# TYPE t_seconds histogram\n\
             t_seconds_bucket{route=\"a\\\"b\\\\c\\nd\",le=\"0.5\"} 2\n\
             t_seconds_bucket{route=\"a\\\"b\\\\c\\nd\",le=\"+Inf\"} 3\n\
             t_seconds_sum{route=\"a\\\"b\\\\c\\nd\"} 1.25\n\
             t_seconds_count{route=\"a\\\"b\\\\c\\nd\"} 3\n\
             # HELP t_up Up.\n# TYPE t_up gauge\nt_up 1\n"
        );
        let parsed = prometheus_parse::Scrape::parse(out.lines().map(|l| Ok(l.to_string())));
        assert!(parsed.is_ok());
    }
}
