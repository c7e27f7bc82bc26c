//! `[kubernetes] pods`: the one configuration value that is a name from a fixed set.
use std::fmt;

use serde::{Deserialize, Serialize};
use toml::Value;

use super::Field;

/// `[kubernetes] pods`: where pod names come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PodsMode {
    /// The Kubernetes API when in a cluster (`KUBERNETES_SERVICE_HOST` set), else the pod log
    /// directories when they exist, else off.
    Auto,
    Api,
    Logs,
    Off,
}

impl PodsMode {
    pub fn name(self) -> &'static str {
        match self {
            PodsMode::Auto => "auto",
            PodsMode::Api => "api",
            PodsMode::Logs => "logs",
            PodsMode::Off => "off",
        }
    }

    fn parse(s: &str) -> Option<PodsMode> {
        [PodsMode::Auto, PodsMode::Api, PodsMode::Logs, PodsMode::Off]
            .into_iter()
            .find(|m| m.name() == s)
    }
}

impl fmt::Display for PodsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.name())
    }
}

/// One of a fixed set of names; its range is unused (any valid name is in it).
impl Field for PodsMode {
    const EXPECTED: &'static str = r#"one of "auto", "api", "logs", "off""#;
    fn number(v: &Value) -> Option<f64> {
        v.as_str().and_then(PodsMode::parse).map(|_| 0.0)
    }
    fn convert(v: &Value) -> Option<Self> {
        v.as_str().and_then(PodsMode::parse)
    }
    fn as_f64(&self) -> f64 {
        0.0
    }
}
