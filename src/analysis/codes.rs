//! Status codes and classes that count as errors (`5xx`, `503`), parsed when a spec loads.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A status class (`5xx`) or a code counted one by one (400-431, 500-511).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    Class(u8),
    Code(u16),
}

impl ErrorCode {
    pub fn parse(text: &str) -> Option<ErrorCode> {
        let t = text.trim().to_ascii_lowercase();
        if let Some(c) = t.strip_suffix("xx") {
            let class: u8 = c.parse().ok()?;
            return (1..=5).contains(&class).then_some(ErrorCode::Class(class));
        }
        let code: u16 = t.parse().ok()?;
        crate::metrics::window::detail_index(code).map(|_| ErrorCode::Code(code))
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ErrorCode::Class(c) => write!(f, "{c}xx"),
            ErrorCode::Code(c) => write!(f, "{c}"),
        }
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Numbers (`503`) and strings (`"5xx"`) alike.
        let text = match yaml_serde::Value::deserialize(d)? {
            yaml_serde::Value::Number(n) => n.to_string(),
            yaml_serde::Value::String(s) => s,
            other => format!("{other:?}"),
        };
        ErrorCode::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "`{text}` is not a status class like 5xx or a code in 400-431, 500-511"
            ))
        })
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_and_codes() {
        assert_eq!(ErrorCode::parse("5xx"), Some(ErrorCode::Class(5)));
        assert_eq!(ErrorCode::parse(" 429 "), Some(ErrorCode::Code(429)));
        assert_eq!(ErrorCode::parse("6xx"), None);
        assert_eq!(ErrorCode::parse("599"), None, "not counted one by one");
        let codes: Vec<ErrorCode> = yaml_serde::from_str("[5xx, 429, \"503\"]").unwrap();
        assert_eq!(
            codes,
            [
                ErrorCode::Class(5),
                ErrorCode::Code(429),
                ErrorCode::Code(503)
            ]
        );
        assert_eq!(
            yaml_serde::to_string(&codes).unwrap(),
            "- 5xx\n- '429'\n- '503'\n"
        );
        let bad = yaml_serde::from_str::<Vec<ErrorCode>>("[5xx, 600]").unwrap_err();
        assert!(
            bad.to_string().contains("`600` is not a status class"),
            "{bad}"
        );
    }
}
