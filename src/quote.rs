//! Label values quoted for Prometheus: one escaping, valid both in the text
//! exposition format (OpenMetrics) and as a PromQL string literal.

/// `v` in double quotes, its backslashes, double quotes and line feeds escaped.
pub fn label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 2);
    out.push('"');
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backslashes_quotes_and_line_feeds_are_escaped() {
        assert_eq!(label_value("plain"), r#""plain""#);
        assert_eq!(label_value("a\"b\\c\nd"), r#""a\"b\\c\nd""#);
        assert_eq!(label_value(""), r#""""#);
    }
}
