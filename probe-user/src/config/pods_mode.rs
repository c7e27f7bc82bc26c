//! `[kubernetes] pods`: the one configuration value that is a name from a fixed set.
use std::fmt;

use serde::{Deserialize, Serialize};

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

    pub(super) fn parse(s: &str) -> Option<PodsMode> {
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
