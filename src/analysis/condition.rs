//! Conditions on a measured value: `result < 0.01`, joined by `&&` or `||` (`&&` binds tighter).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

#[derive(Debug, Clone, PartialEq)]
struct Comparison {
    op: Op,
    value: f64,
}

/// A parsed condition: any of the `||` groups holds when all of its `&&` comparisons hold.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    text: String,
    any_of: Vec<Vec<Comparison>>,
}

impl Condition {
    pub fn parse(text: &str) -> Result<Condition, String> {
        let mut any_of = Vec::new();
        for group in text.split("||") {
            let mut all_of = Vec::new();
            for part in group.split("&&") {
                all_of.push(
                    parse_comparison(part.trim())
                        .map_err(|e| format!("condition `{text}`: {e}"))?,
                );
            }
            any_of.push(all_of);
        }
        Ok(Condition {
            text: text.trim().to_string(),
            any_of,
        })
    }

    pub fn holds(&self, result: f64) -> bool {
        self.any_of.iter().any(|all| {
            all.iter().all(|c| match c.op {
                Op::Lt => result < c.value,
                Op::Le => result <= c.value,
                Op::Gt => result > c.value,
                Op::Ge => result >= c.value,
                Op::Eq => result == c.value,
                Op::Ne => result != c.value,
            })
        })
    }
}

fn parse_comparison(part: &str) -> Result<Comparison, String> {
    let rest = part
        .strip_prefix("result")
        .ok_or_else(|| format!("`{part}` must start with `result`, e.g. `result < 0.01`"))?
        .trim_start();
    let (op, value) = [
        ("<=", Op::Le),
        (">=", Op::Ge),
        ("==", Op::Eq),
        ("!=", Op::Ne),
        ("<", Op::Lt),
        (">", Op::Gt),
    ]
    .iter()
    .find_map(|(sym, op)| rest.strip_prefix(sym).map(|v| (*op, v.trim())))
    .ok_or_else(|| format!("`{part}` needs one of < <= > >= == !="))?;
    let value = match value {
        "true" => 1.0,
        "false" => 0.0,
        v => v
            .parse::<f64>()
            .map_err(|_| format!("`{v}` is not a number"))?,
    };
    if !value.is_finite() {
        return Err(format!("`{value}` is not a finite number"));
    }
    Ok(Comparison { op, value })
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Condition {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Condition::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Condition {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comparisons_and_groups() {
        let c = Condition::parse("result < 0.01").unwrap();
        assert!(c.holds(0.009) && !c.holds(0.01));
        let c = Condition::parse("result >= 1 && result <= 2 || result == 10").unwrap();
        assert!(c.holds(1.0) && c.holds(2.0) && c.holds(10.0) && !c.holds(3.0));
        assert!(Condition::parse("result == true").unwrap().holds(1.0));
    }

    #[test]
    fn errors_name_the_problem() {
        assert!(
            Condition::parse("value < 1")
                .unwrap_err()
                .contains("must start with `result`")
        );
        assert!(
            Condition::parse("result ~ 1")
                .unwrap_err()
                .contains("needs one of")
        );
        assert!(
            Condition::parse("result < abc")
                .unwrap_err()
                .contains("`abc` is not a number")
        );
    }
}
