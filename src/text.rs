//! Free text from outside (ids, names, reasons, operator ids): what may be stored.
//!
//! Every text field of a receipt and a refund ends up in the queue, in log lines, in the audit
//! log and on the wire. A control character (a newline, an escape sequence) or a bidirectional
//! override in such a field could forge a log or audit line, or make an id print as another
//! one, so they are refused at the edge rather than stored and escaped later.

/// Why a text field was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("field `{field}` contains a control or bidirectional-override character (U+{code:04X})")]
    ControlCharacter { field: String, code: u32 },
}

/// Whether `c` may not appear in stored text: C0 controls, DEL, C1 controls, the Unicode line
/// and paragraph separators, and the bidirectional embedding, override and isolate characters
/// (U+202A–U+202E, U+2066–U+2069).
pub fn is_forbidden(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{1f}'
        | '\u{7f}'..='\u{9f}'
        | '\u{2028}' | '\u{2029}'
        | '\u{202a}'..='\u{202e}'
        | '\u{2066}'..='\u{2069}')
}

/// Refuses `value` when it holds a forbidden character, naming the field and the character.
pub fn check(field: &str, value: &str) -> Result<(), TextError> {
    match value.chars().find(|c| is_forbidden(*c)) {
        None => Ok(()),
        Some(c) => Err(TextError::ControlCharacter { field: field.to_string(), code: c as u32 }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn plain_text_passes() {
        for ok in ["emp_42", "Customer returned item", "Café crème – 2 × 3,50 €", "收据-001", ""] {
            assert_eq!(check("reason", ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn controls_and_bidi_overrides_are_refused() {
        for (bad, code) in [
            ("emp_42\nINFO refund approved", 0x0a),
            ("emp\r", 0x0d),
            ("\u{1b}[2J", 0x1b),
            ("tab\there", 0x09),
            ("del\u{7f}", 0x7f),
            ("c1\u{85}", 0x85),
            ("abc\u{202e}fed", 0x202e),
            ("\u{2066}x", 0x2066),
            ("line\u{2028}sep", 0x2028),
        ] {
            let err = check("operator", bad).unwrap_err();
            assert_eq!(err, TextError::ControlCharacter { field: "operator".into(), code });
            assert!(err.to_string().contains("`operator`"), "{err}");
        }
    }

    proptest! {
        #[test]
        fn any_text_with_a_forbidden_char_is_refused(prefix in "\\PC*", suffix in "\\PC*", pick in 0usize..6) {
            let bad = ['\n', '\u{0}', '\u{7f}', '\u{9b}', '\u{202d}', '\u{2069}'][pick];
            let text = format!("{prefix}{bad}{suffix}");
            prop_assert!(check("f", &text).is_err());
        }
    }
}
