//! Whether a destination answers, as status, metrics and the CLI show it.

use serde::{Deserialize, Serialize};

/// A destination's reachability; on the wire it is the lowercase name (`"reachable"`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Connectivity {
    /// No request has been answered or failed yet.
    #[default]
    Unknown,
    /// The last request got an answer (even an error answer).
    Reachable,
    /// The last request got no answer.
    Unreachable,
}

impl Connectivity {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Connectivity::Unknown => "unknown",
            Connectivity::Reachable => "reachable",
            Connectivity::Unreachable => "unreachable",
        }
    }
}

impl std::fmt::Display for Connectivity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_match_display() {
        for c in [Connectivity::Unknown, Connectivity::Reachable, Connectivity::Unreachable] {
            assert_eq!(serde_json::to_value(c).expect("serialises"), c.as_str());
            assert_eq!(serde_json::from_value::<Connectivity>(c.as_str().into()).expect("parses"), c);
        }
    }
}
